//! Builds every crate under `plugins/` into a Wasm component and embeds them
//! in the `weir` binary as `builtin:<directory name>`.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());

    let mut say = |line: &str| println!("cargo:warning=weir: {line}");
    let toolchain = match weir_xtask::ensure_toolchain(&mut say) {
        Ok(t) => t,
        Err(e) => panic!("{e:#}"),
    };
    let dirs = weir_xtask::plugin_dirs(&workspace.join("plugins")).unwrap();
    let packages: Vec<String> = dirs.iter().map(|d| weir_xtask::package_name(d).unwrap()).collect();
    let target = weir_xtask::target_dir_from_out_dir(&out_dir).join("wasm");
    let built = weir_xtask::build_components(&toolchain, &workspace, &packages, &target, &out_dir.join("plugins"))
        .unwrap_or_else(|e| panic!("{e:#}"));

    let mut code =
        String::from("/// Bundled plugins: (name, component bytes).\npub static BUNDLED: &[(&str, &[u8])] = &[\n");
    for (dir, path) in dirs.iter().zip(&built) {
        let name = dir.file_name().unwrap().to_string_lossy();
        writeln!(code, "    ({name:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("bundled.rs"), code).unwrap();
}

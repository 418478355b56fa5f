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

    // A build only builds: installing the wasm32 toolchain is
    // `scripts/setup`'s (or the user's) job, and a missing one is named.
    let Some(toolchain) = weir_xtask::detect() else { panic!("{}", weir_xtask::MISSING_TOOLCHAIN) };
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
    std::fs::write(out_dir.join("sdk_files.rs"), sdk_files(&workspace, &out_dir)).unwrap();
}

/// The SDK's sources and the WIT package, for `weir plugin new` to vendor
/// into a new project (`weir/sdk/...`, `weir/wit/...`), with the SDK's
/// manifest made standalone (workspace keys written out).
fn sdk_files(workspace: &std::path::Path, out_dir: &std::path::Path) -> String {
    let root = std::fs::read_to_string(workspace.join("Cargo.toml")).unwrap();
    let manifest = std::fs::read_to_string(workspace.join("sdk/Cargo.toml")).unwrap();
    let workspace_value = |key: &str| -> String {
        root.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no `{key}` in the workspace Cargo.toml"))
            .to_string()
    };
    let standalone: String = manifest
        .lines()
        .map(|line| match line.split_once(".workspace = true") {
            Some((key, _)) => format!("{key} = {}", workspace_value(key)),
            None => match line.split_once(" = { workspace = true }") {
                Some((key, _)) => format!("{key} = {}", workspace_value(key)),
                None => line.to_string(),
            },
        })
        .map(|l| l + "\n")
        .collect::<String>();
    let standalone_path = out_dir.join("sdk-Cargo.toml");
    std::fs::write(&standalone_path, standalone).unwrap();
    let mut files = vec![("sdk/Cargo.toml".to_string(), standalone_path)];
    for dir in ["sdk/src", "wit"] {
        let mut entries: Vec<_> = std::fs::read_dir(workspace.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            files.push((format!("{dir}/{name}"), path));
        }
    }
    let mut code = String::from("/// Files vendored into new plugin projects: (path under `weir/`, text).\npub static SDK_FILES: &[(&str, &str)] = &[\n");
    for (name, path) in files {
        writeln!(code, "    ({name:?}, include_str!({:?})),", path.display().to_string()).unwrap();
    }
    code.push_str("];\n");
    code
}

//! Builds the example plugins (`examples/plugins/rust/*`) and the test-only
//! plugins (`tests/plugins/*`) into components for the integration tests.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let sources = [workspace.join("examples/plugins/rust"), manifest.join("plugins")];
    for dir in sources.iter().chain([&workspace.join("sdk"), &workspace.join("wit")]) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let Some(toolchain) = weir_xtask::detect() else { panic!("{}", weir_xtask::MISSING_TOOLCHAIN) };
    let mut packages = Vec::new();
    for dir in &sources {
        for d in weir_xtask::plugin_dirs(dir).unwrap() {
            packages.push(weir_xtask::package_name(&d).unwrap());
        }
    }
    let target = weir_xtask::target_dir_from_out_dir(&out_dir).join("wasm");
    let components = out_dir.join("components");
    weir_xtask::build_components(&toolchain, &workspace, &packages, &target, &components)
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("cargo:rustc-env=WEIR_TEST_COMPONENTS={}", components.display());
    // Where those were compiled: scaffolded projects built by the tests
    // reuse its wasm32 standard library instead of building their own.
    println!("cargo:rustc-env=WEIR_TEST_WASM_TARGET={}", target.display());
    // Python and JavaScript plugins are built by the tests themselves (see
    // `weir_tests::lang`), into a cache under the target directory.
    println!("cargo:rustc-env=WEIR_TARGET_DIR={}", weir_xtask::target_dir_from_out_dir(&out_dir).display());
}

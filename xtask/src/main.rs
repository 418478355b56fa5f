//! `cargo run -p xtask -- <command>`: build tooling for weir.
//!
//! - `toolchain`: find or install a wasm32 toolchain and say which.
//! - `plugins DIR... OUT`: build every plugin crate under each DIR into
//!   components in OUT, saying as each is built (`scripts/setup` runs it
//!   before the first cargo build, whose build scripts then find them built).

use anyhow::{bail, Result};
use std::path::PathBuf;
use weir_xtask::*;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut say = |line: &str| eprintln!("xtask: {line}");
    match args.first().map(String::as_str) {
        Some("toolchain") => {
            let t = ensure_toolchain(&mut say)?;
            println!("{t:?}");
        }
        Some("plugins") if args.len() >= 3 => {
            let t = ensure_toolchain(&mut say)?;
            let (dirs, out) = args[1..].split_at(args.len() - 2);
            let mut packages = Vec::new();
            for dir in dirs {
                for d in plugin_dirs(&PathBuf::from(dir))? {
                    packages.push(package_name(&d)?);
                }
            }
            let target = workspace.join("target/wasm");
            for p in build_components_saying(&t, &workspace, &packages, &target, &PathBuf::from(&out[0]), &mut say)? {
                println!("{}", p.display());
            }
        }
        _ => bail!("usage: xtask toolchain | xtask plugins DIR... OUT"),
    }
    Ok(())
}

//! `cargo run -p xtask -- <command>`: build tooling for weir.
//!
//! - `toolchain`: find or install a wasm32 toolchain and say which.
//! - `plugins DIR OUT`: build every plugin crate under DIR into components in OUT.

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
        Some("plugins") if args.len() == 3 => {
            let t = ensure_toolchain(&mut say)?;
            let packages =
                plugin_dirs(&PathBuf::from(&args[1]))?.iter().map(|d| package_name(d)).collect::<Result<Vec<_>>>()?;
            for p in
                build_components(&t, &workspace, &packages, &workspace.join("target/wasm"), &PathBuf::from(&args[2]))?
            {
                println!("{}", p.display());
            }
        }
        _ => bail!("usage: xtask toolchain | xtask plugins DIR OUT"),
    }
    Ok(())
}

//! Builds Rust plugin crates into WebAssembly components.
//!
//! Used by `host/build.rs` (bundled plugins), `tests/build.rs` (example
//! plugins) and the `xtask` binary. The wasm32 toolchain is detected, not
//! assumed: rustup's `wasm32-unknown-unknown` target where it is installed,
//! otherwise Debian's `rustc-web` with the standard library's source and
//! `-Zbuild-std`. Only `xtask toolchain` (run by `scripts/setup`) installs
//! what is missing; the build scripts detect and name it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Wasm target every plugin is compiled for.
pub const TARGET: &str = "wasm32-unknown-unknown";
/// Cargo profile (in the workspace `Cargo.toml`) used for plugins.
pub const PROFILE: &str = "plugin";

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_STD_SRC: &str = "/usr/lib/rustlib/src/rust/library";
const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "lld-22"];

/// A toolchain able to compile Rust to `wasm32-unknown-unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's toolchain with the target installed.
    Rustup,
    /// Debian's `rustc-web` building the standard library from source.
    DebianBuildStd,
}

fn rustup_has_target() -> bool {
    let out = Command::new("rustc").args(["--print", "target-libdir", "--target", TARGET]).output();
    match out {
        Ok(o) if o.status.success() => {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&dir).join("libstd.rlib").exists()
                || std::fs::read_dir(&dir)
                    .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
                    .unwrap_or(false)
        }
        _ => false,
    }
}

fn debian_ready() -> bool {
    Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_CARGO).exists() && Path::new(DEBIAN_STD_SRC).exists()
}

/// What to do when no wasm32 toolchain is there (a build says it and stops).
pub const MISSING_TOOLCHAIN: &str = "weir's bundled plugins are Rust compiled to wasm32-unknown-unknown, and this \
     machine has no toolchain for it. Install one, then build again:\n  \
     rustup target add wasm32-unknown-unknown\n\
     or, on Debian without rustup:\n  \
     apt-get install rustc-web cargo-web rust-web-src lld-22\n\
     (`scripts/setup` in the source tree does this and installs the rest the tests use)";

/// The toolchain present on this machine, if any.
pub fn detect() -> Option<Toolchain> {
    if rustup_has_target() {
        Some(Toolchain::Rustup)
    } else if debian_ready() {
        Some(Toolchain::DebianBuildStd)
    } else {
        None
    }
}

fn run_quiet(cmd: &mut Command) -> bool {
    cmd.stdin(std::process::Stdio::null()).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Find a toolchain, installing one when none is present. `say` gets one
/// line describing what was installed, if anything was.
pub fn ensure_toolchain(say: &mut dyn FnMut(&str)) -> Result<Toolchain> {
    if let Some(t) = detect() {
        return Ok(t);
    }
    if run_quiet(Command::new("rustup").args(["target", "add", TARGET])) && rustup_has_target() {
        say(&format!("installed the {TARGET} target with rustup"));
        return Ok(Toolchain::Rustup);
    }
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let sudo: &[&str] = if root { &[] } else { &["sudo", "-n"] };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        let mut cmd = Command::new(all[0]);
        cmd.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        run_quiet(&mut cmd)
    };
    if Path::new("/usr/bin/apt-get").exists() {
        let mut install = vec!["install", "-y", "-qq"];
        install.extend_from_slice(DEBIAN_PACKAGES);
        if !apt(&install) {
            apt(&["update", "-qq"]);
            apt(&install);
        }
        if debian_ready() {
            say(&format!(
                "rustup cannot add {TARGET} here, so installed Debian's {} to build plugins with -Zbuild-std",
                DEBIAN_PACKAGES.join(" ")
            ));
            return Ok(Toolchain::DebianBuildStd);
        }
    }
    bail!(
        "no Rust toolchain for {TARGET}: run `rustup target add {TARGET}`, or on Debian `apt-get install {}`",
        DEBIAN_PACKAGES.join(" ")
    )
}

/// Variables the nested cargo may inherit; everything else (the outer
/// build's RUSTC, RUSTFLAGS, CARGO_* of a build script) is dropped.
const KEEP_ENV: &[&str] =
    &["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "TMPDIR", "CARGO_NET_OFFLINE", "CARGO_NET_RETRY"];

/// Compile the given packages of the workspace at `workspace` into core Wasm
/// modules under `target_dir`, then turn each into a component written to
/// `out_dir/<package>.wasm`. Returns the component paths in order.
pub fn build_components(
    toolchain: &Toolchain,
    workspace: &Path,
    packages: &[String],
    target_dir: &Path,
    out_dir: &Path,
) -> Result<Vec<PathBuf>> {
    build_components_saying(toolchain, workspace, packages, target_dir, out_dir, &mut |_| {})
}

/// [`build_components`], telling `say` as each plugin is built and how long
/// it took (a first build compiles each for minutes in all).
pub fn build_components_saying(
    toolchain: &Toolchain,
    workspace: &Path,
    packages: &[String],
    target_dir: &Path,
    out_dir: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)?;
    let mut built = Vec::new();
    let started = std::time::Instant::now();
    // One cargo run per package: the SDK's world features must not unify
    // across plugins, or every plugin would claim every world.
    for package in packages {
        let mut cmd = match toolchain {
            Toolchain::Rustup => Command::new("cargo"),
            Toolchain::DebianBuildStd => Command::new(DEBIAN_CARGO),
        };
        cmd.env_clear();
        for key in KEEP_ENV {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        if *toolchain == Toolchain::Rustup {
            if let Ok(v) = std::env::var("RUSTUP_TOOLCHAIN") {
                cmd.env("RUSTUP_TOOLCHAIN", v);
            }
        } else {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("/usr/bin:{path}")).env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
        }
        cmd.current_dir(workspace)
            .args(["build", "--quiet", "--profile", PROFILE, "--target", TARGET, "-p", package])
            .arg("--target-dir")
            .arg(target_dir);
        if *toolchain == Toolchain::DebianBuildStd {
            cmd.arg("-Zbuild-std=std,panic_abort");
        }
        let one = std::time::Instant::now();
        let out = cmd.stdin(std::process::Stdio::null()).output().context("running cargo for wasm32")?;
        if !out.status.success() {
            bail!("building plugin {package} for {TARGET} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let core = target_dir.join(TARGET).join(PROFILE).join(format!("{}.wasm", package.replace('-', "_")));
        let module = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
        let component = componentize(&module).with_context(|| format!("componentizing {package}"))?;
        let dest = out_dir.join(format!("{package}.wasm"));
        write_if_changed(&dest, &component)?;
        built.push(dest);
        say(&format!("plugin {}/{}: {package} ({:.1} s)", built.len(), packages.len(), one.elapsed().as_secs_f64()));
    }
    say(&format!("{} plugins built in {:.0} s", built.len(), started.elapsed().as_secs_f64()));
    Ok(built)
}

/// Turn a core module built with wit-bindgen into a component.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default().module(module)?.validate(true).encode()
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Crate directories under `dir` (each a plugin), sorted by name.
pub fn plugin_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The `name` of the package whose manifest is `dir/Cargo.toml`.
pub fn package_name(dir: &Path) -> Result<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml"))?;
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("name")
                .map(|r| r.trim_start())
                .and_then(|r| r.strip_prefix('='))
                .map(|r| r.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("no package name in {}", dir.join("Cargo.toml").display()))
}

/// The target directory of the build running a build script, from its `OUT_DIR`.
pub fn target_dir_from_out_dir(out_dir: &Path) -> PathBuf {
    // OUT_DIR = <target>/<profile>/build/<package>-<hash>/out
    out_dir.ancestors().nth(4).unwrap_or(out_dir).to_path_buf()
}

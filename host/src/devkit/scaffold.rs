//! `weir plugin new` and `weir plugin build`: plugin projects in Rust,
//! Python and JavaScript from templates (`host/templates/`), each with a
//! test and the WIT package (and for Rust the SDK's source) vendored into
//! `weir/`, and their build into a component: the wasm32 toolchain the
//! bundled plugins use for Rust, componentize-py for Python and
//! componentize-js for JavaScript, found or installed into the project.

use crate::plugin::World;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

/// Languages `weir plugin new` has templates for.
pub const LANGUAGES: &[&str] = &["rust", "python", "js"];

/// The componentize-py version Python projects build with.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// The `@bytecodealliance/componentize-js` version JavaScript projects pin.
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// The `@bytecodealliance/preview2-shim` version they pin by override (the
/// one componentize-js 0.23.0 was released with).
pub const PREVIEW2_SHIM: &str = "0.25.0";

/// The limits plugins with an embedded interpreter (Python, JavaScript)
/// need, as TOML keys of `[plugins.NAME]` and of a cases file.
const INTERPRETER_LIMITS: &str = "memory_limit = \"128MiB\"   # the interpreter's heap\n\
     timeout = \"1s\"           # a fresh instance's first call is slow\n";

/// The SDK feature (and export macro suffix) of a world.
fn feature(world: World) -> &'static str {
    world.name()
}

/// The plugin source of `world` in `lang`, with its placeholders.
fn source(lang: &str, world: World) -> &'static str {
    match (lang, world) {
        ("rust", World::Balancer) => include_str!("../../templates/rust/balancer.rs"),
        ("rust", World::Router) => include_str!("../../templates/rust/router.rs"),
        ("rust", World::AccessFilter) => include_str!("../../templates/rust/access-filter.rs"),
        ("rust", World::HealthChecker) => include_str!("../../templates/rust/health-checker.rs"),
        ("rust", World::DiscoveryAdapter) => include_str!("../../templates/rust/discovery-adapter.rs"),
        ("python", World::Balancer) => include_str!("../../templates/python/balancer.py"),
        ("python", World::Router) => include_str!("../../templates/python/router.py"),
        ("python", World::AccessFilter) => include_str!("../../templates/python/access-filter.py"),
        ("python", World::HealthChecker) => include_str!("../../templates/python/health-checker.py"),
        ("python", World::DiscoveryAdapter) => include_str!("../../templates/python/discovery-adapter.py"),
        (_, World::Balancer) => include_str!("../../templates/js/balancer.js"),
        (_, World::Router) => include_str!("../../templates/js/router.js"),
        (_, World::AccessFilter) => include_str!("../../templates/js/access-filter.js"),
        (_, World::HealthChecker) => include_str!("../../templates/js/health-checker.js"),
        (_, World::DiscoveryAdapter) => include_str!("../../templates/js/discovery-adapter.js"),
    }
}

/// The native unit tests of `world`'s template in `lang` (Python: unittest,
/// run by `python3 -m unittest` or pytest; JavaScript: node's test runner).
fn unit_tests(lang: &str, world: World) -> &'static str {
    match (lang, world) {
        ("python", World::Balancer) => include_str!("../../templates/python/tests/balancer.py"),
        ("python", World::Router) => include_str!("../../templates/python/tests/router.py"),
        ("python", World::AccessFilter) => include_str!("../../templates/python/tests/access-filter.py"),
        ("python", World::HealthChecker) => include_str!("../../templates/python/tests/health-checker.py"),
        ("python", World::DiscoveryAdapter) => include_str!("../../templates/python/tests/discovery-adapter.py"),
        (_, World::Balancer) => include_str!("../../templates/js/tests/balancer.test.js"),
        (_, World::Router) => include_str!("../../templates/js/tests/router.test.js"),
        (_, World::AccessFilter) => include_str!("../../templates/js/tests/access-filter.test.js"),
        (_, World::HealthChecker) => include_str!("../../templates/js/tests/health-checker.test.js"),
        (_, World::DiscoveryAdapter) => include_str!("../../templates/js/tests/discovery-adapter.test.js"),
    }
}

/// The `weir plugin test` cases of a world's template.
fn cases(world: World) -> &'static str {
    match world {
        World::Balancer => include_str!("../../templates/cases/balancer.toml"),
        World::Router => include_str!("../../templates/cases/router.toml"),
        World::AccessFilter => include_str!("../../templates/cases/access-filter.toml"),
        World::HealthChecker => include_str!("../../templates/cases/health-checker.toml"),
        World::DiscoveryAdapter => include_str!("../../templates/cases/discovery-adapter.toml"),
    }
}

/// The instance config the template reads, as TOML.
fn example_config(world: World) -> &'static str {
    match world {
        World::Balancer => "{ offset = 0 }",
        World::Router => "{ prefix = \"/api/\", pool = \"api\" }",
        World::AccessFilter => "{ header = \"x-blocked\" }",
        World::HealthChecker => "{ timeout_ms = 500 }",
        World::DiscoveryAdapter => "{ addresses = [\"127.0.0.1:8080\"] }",
    }
}

/// `skip-one` -> `SkipOne`: the Rust type a template implements.
fn type_name(name: &str) -> String {
    let type_name: String = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    if type_name.is_empty() || type_name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Plugin{type_name}")
    } else {
        type_name
    }
}

fn rust_files(name: &str, world: World) -> Vec<(PathBuf, String)> {
    let header = format!("//! weir {} plugin `{name}`, made by `weir plugin new`.\n\n", world.name());
    let lib = header + &source("rust", world).replace("TYPE", &type_name(name));
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-sdk = {{ path = "weir/sdk", features = ["{feature}"] }}
serde = {{ version = "1", features = ["derive"] }}

# `weir plugin build` compiles with this profile.
[profile.plugin]
inherits = "release"
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A project of its own, not a member of an enclosing workspace.
[workspace]
"#,
        feature = feature(world)
    );
    let mut files = vec![
        (PathBuf::from("Cargo.toml"), cargo),
        (PathBuf::from("src/lib.rs"), lib),
        (PathBuf::from(".gitignore"), "/target\n".to_string()),
    ];
    for (path, text) in SDK_FILES {
        files.push((Path::new("weir").join(path), text.to_string()));
    }
    files
}

fn python_files(name: &str, world: World) -> Vec<(PathBuf, String)> {
    let pyproject = format!(
        r#"[project]
name = "{name}"
version = "0.1.0"
description = "weir {world} plugin"
requires-python = ">=3.10"

# What `weir plugin build` reads: the world the component implements, the
# module that implements it, and the componentize-py it installs into .venv
# when none is on PATH.
[tool.weir]
world = "{world}"
module = "app"
componentize-py = "{COMPONENTIZE_PY}"

# The typed bindings `weir plugin build` writes (componentize-py's), for
# type checkers and the unit tests (`python3 -m unittest`, or pytest).
[tool.pyright]
extraPaths = ["target/weir/py"]

[tool.mypy]
mypy_path = "target/weir/py"

[tool.pytest.ini_options]
pythonpath = [".", "target/weir/py"]
"#,
        world = world.name()
    );
    let mut files = vec![
        (PathBuf::from("pyproject.toml"), pyproject),
        (PathBuf::from("app.py"), source("python", world).replace("NAME", name)),
        (PathBuf::from("test_app.py"), unit_tests("python", world).to_string()),
        (PathBuf::from("settings.py"), include_str!("../../templates/python/settings.py").to_string()),
        (PathBuf::from(".gitignore"), "/target\n/.venv\n__pycache__/\n".to_string()),
    ];
    files.extend(wit_files());
    files
}

fn js_files(name: &str, world: World) -> Vec<(PathBuf, String)> {
    let package = format!(
        r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "description": "weir {world} plugin",
  "main": "{name}.js",
  "weir": {{ "world": "{world}" }},
  "scripts": {{
    "build": "weir plugin build",
    "test": "node --import ./weir/testing/register.js --test"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "{COMPONENTIZE_JS}"
  }},
  "overrides": {{
    "@bytecodealliance/preview2-shim": "{PREVIEW2_SHIM}"
  }}
}}
"#,
        world = world.name()
    );
    let script = source("js", world)
        .replace("// SETTINGS\n", include_str!("../../templates/js/_settings.js"))
        .replace("NAME", name);
    // Editors find the declarations `weir plugin build` writes with jco.
    let interfaces = ["types", "host", "io", "pool", "http"];
    let paths: Vec<String> = interfaces
        .iter()
        .map(|i| {
            format!(
                "      \"weir:plugin/{i}@{v}\": [\"./target/weir/types/interfaces/weir-plugin-{i}.d.ts\"]",
                v = crate::plugin::PACKAGE_VERSION
            )
        })
        .collect();
    let jsconfig = format!(
        "{{\n  \"compilerOptions\": {{\n    \"checkJs\": true,\n    \"module\": \"nodenext\",\n    \"paths\": {{\n{}\n    }}\n  }},\n  \"exclude\": [\"node_modules\", \"target\"]\n}}\n",
        paths.join(",\n")
    );
    let mut files = vec![
        (PathBuf::from("package.json"), package),
        (PathBuf::from(format!("{name}.js")), script),
        (PathBuf::from(format!("{name}.test.js")), unit_tests("js", world).replace("NAME", name)),
        (PathBuf::from("jsconfig.json"), jsconfig),
        (PathBuf::from("weir/testing/register.js"), include_str!("../../templates/js/testing/register.js").to_string()),
        (PathBuf::from("weir/testing/hooks.js"), include_str!("../../templates/js/testing/hooks.js").to_string()),
        (PathBuf::from(".gitignore"), "/target\n/node_modules\n".to_string()),
    ];
    files.extend(wit_files());
    files
}

/// The WIT package alone (`weir/wit/...`), for projects without the Rust SDK.
fn wit_files() -> impl Iterator<Item = (PathBuf, String)> {
    SDK_FILES
        .iter()
        .filter(|(path, _)| path.starts_with("wit/"))
        .map(|(path, text)| (Path::new("weir").join(path), text.to_string()))
}

/// The project's README: how to build, test and load it.
fn readme(name: &str, world: World, lang: &str) -> String {
    let config = example_config(world);
    let wasm = format!("target/weir/{name}.wasm");
    let test = format!("weir plugin test {wasm} --cases cases.toml   # the component on synthetic cases\n");
    let (intro, unit, limits) = match lang {
        "rust" => (
            "Rust, with weir-sdk (vendored in `weir/sdk` with the WIT package; serde and wit-bindgen come from crates.io or cargo's cache).",
            "cargo test                       # the plugin's logic, natively\n",
            "",
        ),
        "python" => (
            "Python, built into a component by componentize-py. `weir plugin build` uses \
             `.venv/bin/componentize-py`, else `componentize-py` on `PATH`, else installs \
             the version in `pyproject.toml` into `.venv` (needs `python3 -m venv`). \
             `weir/wit` holds the WIT package the bindings come from; the build also writes \
             them, typed, to `target/weir/py` for type checkers and for `test_app.py`, the \
             plugin's unit tests run natively with the host's answers stubbed.",
            "",
            INTERPRETER_LIMITS,
        ),
        _ => (
            "JavaScript, built into a component by componentize-js. `weir plugin build` uses \
             `node_modules/.bin/componentize-js`, else `componentize-js` on `PATH`, else runs \
             `npm install --no-save` first. `weir/wit` holds the WIT package the bindings come from; \
             the build also writes TypeScript declarations of them to `target/weir/types` (with jco, \
             which comes with componentize-js; `jsconfig.json` maps the imports to them). \
             `npm test` runs the unit tests natively under node's test runner, the `weir:plugin` \
             imports stubbed (`weir/testing`).",
            "",
            INTERPRETER_LIMITS,
        ),
    };
    // The native unit tests run after a build (which writes the bindings).
    let after = match lang {
        "python" => "python3 -m unittest              # the plugin's logic, natively (after a build)\n",
        "js" => "npm test                         # the plugin's logic, natively, under node's test runner\n",
        _ => "",
    };
    format!(
        r#"# {name}

A weir {world} plugin in {intro}

```sh
{unit}weir plugin build                # -> {wasm}
{after}{test}weir plugin check {wasm} --config '{config}'
```

Use it in weir's config:

```toml
[plugins.{name}]
source = "{name}/{wasm}"
config = {config}
{limits}```

and swap a new build into a running weir with
`weir plugin push {name} {wasm}` (admin API enabled).
"#,
        world = world.name()
    )
}

/// Create a plugin project for `world` in `lang` in `dir/name`; the files written.
pub fn new_project(dir: &Path, name: &str, world: World, lang: &str) -> Result<Vec<PathBuf>> {
    if !LANGUAGES.contains(&lang) {
        bail!("--lang {lang}: templates exist for {}", LANGUAGES.join(", "));
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("`{name}`: a plugin name is letters, digits, `-` and `_`");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} exists already", root.display());
    }
    let mut files = match lang {
        "rust" => rust_files(name, world),
        "python" => python_files(name, world),
        _ => js_files(name, world),
    };
    files.push((PathBuf::from("README.md"), readme(name, world, lang)));
    let mut cases = cases(world).replace("NAME", name);
    if lang != "rust" {
        // After the leading comment, before the first table.
        let at = cases.lines().take_while(|l| l.starts_with('#')).map(|l| l.len() + 1).sum();
        cases.insert_str(at, INTERPRETER_LIMITS);
    }
    files.push((PathBuf::from("cases.toml"), cases));
    let mut written = Vec::new();
    for (path, text) in files {
        let full = root.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&full, text).with_context(|| format!("writing {}", full.display()))?;
        written.push(full);
    }
    Ok(written)
}

/// A plugin project `weir plugin build` knows, by its manifest.
enum Project {
    /// `Cargo.toml`: built with the wasm32 toolchain the bundled plugins use.
    Rust,
    /// `pyproject.toml` with `[tool.weir]`: built with componentize-py.
    Python { name: String, world: String, module: String, version: String },
    /// `package.json` with `"weir"`: built with componentize-js.
    Js { name: String, world: String, main: String },
}

impl Project {
    fn detect(dir: &Path) -> Result<Self> {
        if dir.join("Cargo.toml").exists() {
            return Ok(Project::Rust);
        }
        let pyproject = dir.join("pyproject.toml");
        if pyproject.exists() {
            let text = std::fs::read_to_string(&pyproject)?;
            let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{}", pyproject.display()))?;
            let key = |table: Option<&toml::Value>, key: &str| -> Result<String> {
                table
                    .and_then(|t| t.get(key))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .with_context(|| format!("{}: no `{key}` string", pyproject.display()))
            };
            let weir = doc.get("tool").and_then(|t| t.get("weir"));
            if weir.is_none() {
                bail!("{}: no [tool.weir] table (world, module): not a weir plugin project", pyproject.display());
            }
            return Ok(Project::Python {
                name: key(doc.get("project"), "name")?,
                world: key(weir, "world")?,
                module: key(weir, "module").unwrap_or_else(|_| "app".into()),
                version: key(weir, "componentize-py").unwrap_or_else(|_| COMPONENTIZE_PY.into()),
            });
        }
        let package = dir.join("package.json");
        if package.exists() {
            let text = std::fs::read_to_string(&package)?;
            let doc: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}", package.display()))?;
            let key = |value: &serde_json::Value, key: &str| -> Result<String> {
                value
                    .get(key)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .with_context(|| format!("{}: no `{key}` string", package.display()))
            };
            let Some(weir) = doc.get("weir") else {
                bail!("{}: no \"weir\" entry (world): not a weir plugin project", package.display());
            };
            return Ok(Project::Js { name: key(&doc, "name")?, world: key(weir, "world")?, main: key(&doc, "main")? });
        }
        bail!(
            "{} has no Cargo.toml, pyproject.toml or package.json: run `weir plugin build` in a plugin project",
            dir.display()
        )
    }
}

/// Build the plugin project at `dir` into `dir/target/weir/<name>.wasm`.
/// Rust compiles in `$CARGO_TARGET_DIR` when set, as cargo does.
pub fn build_project(dir: &Path) -> Result<PathBuf> {
    let dir = dir.canonicalize().with_context(|| format!("no project at {}", dir.display()))?;
    let out = dir.join("target").join("weir");
    match Project::detect(&dir)? {
        Project::Rust => {
            let package = weir_xtask::package_name(&dir)?;
            let mut say = |line: &str| eprintln!("weir: {line}");
            let toolchain = weir_xtask::ensure_toolchain(&mut say)?;
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or(dir.join("target"), PathBuf::from);
            eprintln!("weir: building {package} for wasm32 with cargo (a first build compiles its dependencies)");
            let built = weir_xtask::build_components_saying(&toolchain, &dir, &[package], &target, &out, &mut say)?;
            built.into_iter().next().context("the build produced no component")
        }
        Project::Python { name, world, module, version } => {
            let tool = python_tool(&dir, &version)?;
            std::fs::create_dir_all(&out)?;
            let wasm = out.join(format!("{name}.wasm"));
            let inputs = build_inputs(&dir, &[&world, &module, &tool_version(&tool)])?;
            // The typed bindings, for type checkers and native unit tests.
            let bindings = out.join("py");
            let fresh = unchanged(&wasm, &inputs);
            if !fresh || !bindings.exists() {
                let _ = std::fs::remove_dir_all(&bindings);
                let mut c = Command::new(&tool);
                c.arg("-d").arg(dir.join("weir/wit")).args(["-w", &world, "bindings"]).arg(&bindings);
                c.current_dir(&out);
                run(c, "componentize-py bindings (typed, into target/weir/py)")?;
            }
            if fresh {
                return Ok(wasm);
            }
            let mut c = Command::new(&tool);
            c.arg("-d").arg(dir.join("weir/wit")).args(["-w", &world, "componentize", "-p"]);
            c.arg(&dir).arg(&module).arg("-o").arg(&wasm);
            // componentize-py writes scratch files into the working directory.
            c.current_dir(&out);
            run(c, "componentize-py")?;
            remember(&wasm, &inputs)?;
            Ok(wasm)
        }
        Project::Js { name, world, main } => {
            let tool = js_tool(&dir)?;
            std::fs::create_dir_all(&out)?;
            let wasm = out.join(format!("{name}.wasm"));
            let inputs = build_inputs(&dir, &[&world, &main, &tool_version(&tool)])?;
            let fresh = unchanged(&wasm, &inputs);
            if !fresh || !out.join("types").exists() {
                js_types(&tool, &dir, &world, &out.join("types"))?;
            }
            if fresh {
                return Ok(wasm);
            }
            let mut c = Command::new(&tool);
            c.arg("--wit").arg(dir.join("weir/wit")).args(["--world-name", &world]);
            // weir provides no wasi:http; the rest of WASI p2 is linked with nothing granted.
            c.args(["--disable", "http", "--disable", "fetch-event", "--out"]).arg(&wasm);
            c.arg(dir.join(&main)).current_dir(&dir);
            run(c, "componentize-js")?;
            remember(&wasm, &inputs)?;
            Ok(wasm)
        }
    }
}

/// The digest of what a Python or JavaScript build reads: every file of the
/// project but what builds and tools make (`target/`, `.venv/`,
/// `node_modules/`, caches), the vendored WIT, and `extra` (the world, the
/// entry point, the tool's version). componentize-py and componentize-js
/// do not give the same bytes twice for the same source (their runtime's
/// heap is snapshotted with its randomness), so an unchanged project keeps
/// its component instead: same source, same file, same hash, and weir's
/// compile cache still holds its machine code.
fn build_inputs(dir: &Path, extra: &[&str]) -> Result<String> {
    use sha2::{Digest, Sha256};
    fn walk(dir: &Path, root: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let skipped = ["target", ".venv", "node_modules", "__pycache__", ".git", ".pytest_cache"];
            if skipped.contains(&name.as_ref()) || name.ends_with(".pyc") {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, files)?;
            } else {
                files.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut digest = Sha256::new();
    for file in &files {
        digest.update(file.to_string_lossy().as_bytes());
        digest.update([0]);
        digest.update(std::fs::read(dir.join(file))?);
        digest.update([0]);
    }
    for e in extra {
        digest.update(e.as_bytes());
        digest.update([0]);
    }
    Ok(hex::encode(digest.finalize()))
}

/// The first line a build tool prints for `--version`.
fn tool_version(tool: &Path) -> String {
    let out = Command::new(tool).arg("--version").stdin(Stdio::null()).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string()).unwrap_or_default()
}

/// Whether `wasm` was built from `inputs` (and says so).
fn unchanged(wasm: &Path, inputs: &str) -> bool {
    let stamp = wasm.with_extension("inputs");
    let same = wasm.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == inputs);
    if same {
        eprintln!("weir: sources unchanged since the last build: keeping {} (same hash)", wasm.display());
    }
    same
}

fn remember(wasm: &Path, inputs: &str) -> Result<()> {
    std::fs::write(wasm.with_extension("inputs"), format!("{inputs}\n"))
        .with_context(|| format!("writing {}", wasm.with_extension("inputs").display()))
}

/// A build tool: `local` (inside the project) when it exists, else `name`
/// when it runs from `PATH`, else `local` after `install` put it there.
fn find_or_install(local: PathBuf, name: &str, install: impl FnOnce() -> Result<()>) -> Result<PathBuf> {
    if local.exists() {
        return Ok(local);
    }
    let on_path = Command::new(name).arg("--version").stdin(Stdio::null()).output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return Ok(PathBuf::from(name));
    }
    install()?;
    Ok(local)
}

/// componentize-py: the project's `.venv`, else `PATH`, else installed into
/// the project's `.venv` with pip.
fn python_tool(dir: &Path, version: &str) -> Result<PathBuf> {
    find_or_install(dir.join(".venv/bin/componentize-py"), "componentize-py", || {
        eprintln!("weir: componentize-py not found; installing componentize-py {version} into .venv");
        let mut c = Command::new("python3");
        c.args(["-m", "venv", ".venv"]).current_dir(dir);
        run(c, "python3 -m venv (Debian: apt install python3-venv)")?;
        let mut c = Command::new(dir.join(".venv/bin/pip"));
        c.args(["install", "--quiet", &format!("componentize-py=={version}")]).current_dir(dir);
        run(c, "pip install componentize-py")
    })
}

/// componentize-js: the project's `node_modules`, else `PATH`, else
/// installed with `npm install --no-save` from `package.json`.
fn js_tool(dir: &Path) -> Result<PathBuf> {
    find_or_install(dir.join("node_modules/.bin/componentize-js"), "componentize-js", || {
        eprintln!("weir: componentize-js not found; running npm install");
        let mut c = Command::new("npm");
        c.args(["install", "--no-save", "--no-audit", "--no-fund"]).current_dir(dir);
        run(c, "npm install (Debian: apt install npm)")
    })
}

/// TypeScript declarations of the world's bindings into `types`, with the
/// jco that comes with componentize-js (beside it, else on `PATH`); a
/// build without jco says so and goes on.
fn js_types(componentize: &Path, dir: &Path, world: &str, types: &Path) -> Result<()> {
    let beside = componentize.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| p.join("jco"));
    let jco = beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("jco"));
    if !Command::new(&jco).arg("--version").stdin(Stdio::null()).output().is_ok_and(|o| o.status.success()) {
        eprintln!("weir: no jco beside componentize-js or on PATH: no TypeScript declarations written");
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(types);
    let mut c = Command::new(jco);
    c.arg("types").arg(dir.join("weir/wit")).args(["--world-name", world, "-o"]).arg(types).current_dir(dir);
    run(c, "jco types (TypeScript declarations, into target/weir/types)")
}

/// Run a toolchain step with no stdin, saying what runs and how long it
/// took; its output is shown only when it fails.
fn run(mut cmd: Command, what: &str) -> Result<()> {
    eprintln!("weir: running {what}");
    let started = std::time::Instant::now();
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{what}: cannot start {cmd:?}"))?;
    eprintln!("weir: {what} took {:.1} s", started.elapsed().as_secs_f64());
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

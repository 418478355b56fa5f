//! `weir plugin new` and `weir plugin build`: a plugin project that builds
//! on its own, offline, from what the `weir` binary carries (the SDK's
//! source and the WIT package, vendored into `weir/`), and the build of such
//! a project into a component with the same toolchain detection the bundled
//! plugins use.

use super::World;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

/// Languages `weir plugin new` has templates for.
pub const LANGUAGES: &[&str] = &["rust"];

/// The SDK feature (and export macro suffix) of a world.
fn feature(world: World) -> &'static str {
    world.name()
}

fn template(world: World, name: &str) -> (String, String) {
    let type_name: String = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    let type_name = if type_name.is_empty() || type_name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Plugin{type_name}")
    } else {
        type_name
    };
    let (body, config) = match world {
        World::Balancer => (
            r#"use weir_sdk::balancer::*;

/// The instance config (`config = { ... }` in weir's TOML).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Skip this many backends on every pick (a toy knob to show config).
    #[serde(default)]
    offset: u32,
}

struct TYPE {
    offset: u32,
}

/// The decision, kept free of host calls so it is unit-tested natively.
pub fn choose(sequence: u64, offset: u32, eligible: u32) -> u32 {
    ((sequence + offset as u64) % eligible as u64) as u32
}

impl Balancer for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        Ok(Self { offset: s.offset })
    }

    fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        Ok(Choice::EligibleIndex(choose(ctx.sequence, self.offset, n)))
    }
}

weir_sdk::export_balancer!(TYPE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_go_round_the_eligible_backends() {
        let picks: Vec<u32> = (0..6).map(|seq| choose(seq, 1, 3)).collect();
        assert_eq!(picks, vec![1, 2, 0, 1, 2, 0]);
    }
}
"#,
            "{ offset = 0 }",
        ),
        World::Router => (
            r#"use weir_sdk::router::*;

/// The instance config: requests whose path starts with `prefix` go to `pool`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    prefix: String,
    pool: String,
}

struct TYPE(Settings);

/// The decision, kept free of host calls so it is unit-tested natively.
pub fn pool_for<'a>(path: &str, prefix: &str, pool: &'a str) -> Option<&'a str> {
    path.starts_with(prefix).then_some(pool)
}

impl Router for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(config.parse()?))
    }

    fn route_request(&mut self, _conn: &Connection, req: &Request) -> Result<Decision, Error> {
        Ok(match pool_for(&req.path(), &self.0.prefix, &self.0.pool) {
            Some(pool) => forward(pool),
            None => Decision::NoMatch,
        })
    }
}

weir_sdk::export_router!(TYPE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_picks_the_pool() {
        assert_eq!(pool_for("/api/users", "/api/", "api"), Some("api"));
        assert_eq!(pool_for("/", "/api/", "api"), None);
    }
}
"#,
            "{ prefix = \"/api/\", pool = \"api\" }",
        ),
        World::AccessFilter => (
            r#"use weir_sdk::access::*;

/// The instance config: requests carrying this header are denied.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    header: String,
}

struct TYPE(Settings);

/// The decision, kept free of host calls so it is unit-tested natively.
pub fn allowed(value: Option<&str>) -> bool {
    value.is_none()
}

impl AccessFilter for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(config.parse()?))
    }

    fn check_request(&mut self, _conn: &Connection, req: &Request) -> Result<Verdict, Error> {
        if allowed(req.header(&self.0.header).as_deref()) {
            Ok(Verdict::Allow)
        } else {
            Ok(deny(format!("{} present", self.0.header), Some(403)))
        }
    }
}

weir_sdk::export_access_filter!(TYPE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_denies() {
        assert!(allowed(None));
        assert!(!allowed(Some("1")));
    }
}
"#,
            "{ header = \"x-blocked\" }",
        ),
        World::HealthChecker => (
            r#"use weir_sdk::health::*;
use std::time::Duration;

/// The instance config.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Connect timeout in milliseconds (0: as long as the call may run).
    #[serde(default)]
    timeout_ms: u32,
}

struct TYPE {
    timeout: Duration,
}

impl HealthChecker for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        Ok(Self { timeout: Duration::from_millis(s.timeout_ms as u64) })
    }

    fn check(&mut self, target: &Backend) -> Result<Health, Error> {
        match io::tcp_probe(&target.address, &[], 0, self.timeout) {
            Ok(_) => Ok(Health::Healthy),
            Err(e) => unhealthy_from(e),
        }
    }
}

weir_sdk::export_health_checker!(TYPE);
"#,
            "{ timeout_ms = 500 }",
        ),
        World::DiscoveryAdapter => (
            r#"use weir_sdk::discovery::*;

/// The instance config: a fixed list, a stand-in for a real source.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    addresses: Vec<String>,
}

struct TYPE(Settings);

impl Discovery for TYPE {
    fn init(config: Config) -> Result<Self, Error> {
        Ok(Self(config.parse()?))
    }

    fn discover(&mut self) -> Result<Vec<Discovered>, Error> {
        Ok(self
            .0
            .addresses
            .iter()
            .map(|a| Discovered { address: a.clone(), weight: 1, priority: 0, tags: Vec::new() })
            .collect())
    }
}

weir_sdk::export_discovery!(TYPE);
"#,
            "{ addresses = [\"127.0.0.1:8080\"] }",
        ),
    };
    let header = format!("//! weir {} plugin `{name}`, made by `weir plugin new`.\n\n", world.name());
    (header + &body.replace("TYPE", &type_name), config.to_string())
}

/// Create a Rust plugin project for `world` in `dir/name`; the files written.
pub fn new_project(dir: &Path, name: &str, world: World, lang: &str) -> Result<Vec<PathBuf>> {
    if lang != "rust" {
        bail!("--lang {lang}: templates exist for {}", LANGUAGES.join(", "));
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("`{name}`: a plugin name is letters, digits, `-` and `_`");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} exists already", root.display());
    }
    let (lib, config) = template(world, name);
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
    let readme = format!(
        r#"# {name}

A weir {world} plugin.

```sh
cargo test                       # the plugin's logic, natively
weir plugin build                # -> target/weir/{name}.wasm
weir plugin check target/weir/{name}.wasm --config '{config}'
```

Use it in weir's config:

```toml
[plugins.{name}]
source = "{name}/target/weir/{name}.wasm"
config = {config}
```

`weir/` holds the weir SDK and WIT package this project was made with.
"#,
        world = world.name()
    );
    let mut files = vec![
        (PathBuf::from("Cargo.toml"), cargo),
        (PathBuf::from("src/lib.rs"), lib),
        (PathBuf::from("README.md"), readme),
        (PathBuf::from(".gitignore"), "/target\n".to_string()),
    ];
    for (path, text) in SDK_FILES {
        files.push((Path::new("weir").join(path), text.to_string()));
    }
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

/// Build the Rust plugin project at `dir` into `dir/target/weir/<name>.wasm`
/// (compiling in `$CARGO_TARGET_DIR` when set, as cargo does).
pub fn build_project(dir: &Path) -> Result<PathBuf> {
    let dir = dir.canonicalize().with_context(|| format!("no project at {}", dir.display()))?;
    if !dir.join("Cargo.toml").exists() {
        bail!("{} has no Cargo.toml: run `weir plugin build` in a plugin project", dir.display());
    }
    let package = weir_xtask::package_name(&dir)?;
    let mut say = |line: &str| eprintln!("weir: {line}");
    let toolchain = weir_xtask::ensure_toolchain(&mut say)?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(dir.join("target"), PathBuf::from);
    let out = dir.join("target").join("weir");
    let built = weir_xtask::build_components(&toolchain, &dir, &[package], &target, &out)?;
    built.into_iter().next().context("the build produced no component")
}

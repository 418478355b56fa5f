//! The plugin runtime: one wasmtime [`Engine`] for the process, components
//! compiled once (and cached on disk), instances reused per worker, and
//! limits on every call.

pub mod bindings;
mod bundled;
pub mod grants;
mod instance;
pub mod io;
mod output;
pub mod state;

pub use bundled::{bundled, BUNDLED};
pub use grants::Grants;
pub use instance::{
    client_hash, CallError, CallErrorKind, Discovered, GenerationInfo, HeaderEdit, Limits, PluginInstance, PluginStats,
    Rollout, RolloutInfo, RouteDecision, Verdict,
};
pub use state::{HttpPick, MemberView, MetricKind, SharedStore, MAX_PLUGIN_METRICS};

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::Engine;

use state::PluginState;

/// The package every world lives in.
pub const PACKAGE: &str = "weir:plugin";
/// The package version this host implements.
pub const PACKAGE_VERSION: &str = "0.2.0";

/// How often the epoch advances: the resolution of call deadlines (a call
/// is stopped between its timeout and one tick later). Each tick wakes a
/// thread; at 1 ms the wake-ups cost a loaded one-CPU proxy about a fifth
/// of its CPU time (they preempt the worker), at 10 ms a fiftieth of that.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Compiled components not used for this long leave the cache (each weir
/// upgrade or plugin change leaves its predecessors' entries behind).
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Remove the cache entries in `dir` not used for `max_age` (a use touches
/// an entry), and the leftovers of interrupted writes. Returns how many
/// files went.
pub fn prune_cache(dir: &Path, max_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // `<key>.cwasm`, or `<key>.tmp<pid>` while (or after a failed) write.
        let limit = if name.ends_with(".cwasm") {
            max_age
        } else if name.contains(".tmp") {
            max_age.min(Duration::from_secs(3600))
        } else {
            continue;
        };
        let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if age.is_some_and(|a| a > limit) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The phase a plugin implements, by the world it targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    /// `balancer`: exports `balance`.
    Balancer,
    /// `access-filter`: exports `access`.
    AccessFilter,
    /// `router`: exports `route`.
    Router,
    /// `health-checker`: exports `healthcheck`.
    HealthChecker,
    /// `discovery-adapter`: exports `discovery`.
    DiscoveryAdapter,
}

impl World {
    /// Every world, in phase order.
    pub const ALL: [World; 5] =
        [World::AccessFilter, World::Router, World::Balancer, World::HealthChecker, World::DiscoveryAdapter];

    /// The world's name in `wit/`.
    pub fn name(self) -> &'static str {
        match self {
            World::Balancer => "balancer",
            World::AccessFilter => "access-filter",
            World::Router => "router",
            World::HealthChecker => "health-checker",
            World::DiscoveryAdapter => "discovery-adapter",
        }
    }

    /// The interface the world exports.
    pub fn export(self) -> &'static str {
        match self {
            World::Balancer => "balance",
            World::AccessFilter => "access",
            World::Router => "route",
            World::HealthChecker => "healthcheck",
            World::DiscoveryAdapter => "discovery",
        }
    }

    fn export_name(self) -> String {
        format!("{PACKAGE}/{}@{PACKAGE_VERSION}", self.export())
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file could not be read.
    #[error("cannot read plugin file {path}: {reason}")]
    Read {
        /// The path tried.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// `builtin:<name>` names no bundled plugin.
    #[error("no bundled plugin `{0}` (see `weir plugins`)")]
    UnknownBuiltin(String),
    /// Not a Wasm component at all, or one wasmtime rejects.
    #[error("not a loadable Wasm component: {0}")]
    Compile(String),
    /// The component exports a different world than the phase needs.
    #[error("exports {found}, but a {expected} plugin must export {PACKAGE}/{export}@{PACKAGE_VERSION}", export = expected.export())]
    WrongWorld {
        /// The world the phase needs.
        expected: World,
        /// What the component exports instead.
        found: String,
    },
    /// The component imports something weir does not provide.
    #[error("cannot be linked: {0}")]
    Link(String),
    /// The plugin's `init` refused its config, or trapped.
    #[error("init failed: {0}")]
    Init(String),
}

/// What a plugin instance is: everything but the component bytes.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Instance name (config key, or `builtin:<name>` when used directly).
    pub name: String,
    /// Where the component came from.
    pub source: String,
    /// The phase it serves.
    pub world: World,
    /// Its config as JSON, handed to `init`.
    pub config_json: String,
    /// Per-call limits.
    pub limits: Limits,
    /// What callers do when a call fails.
    pub fallback: crate::config::Fallback,
    /// What its `io` imports may reach.
    pub grants: Grants,
}

/// The process-wide plugin runtime.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    shared: Arc<SharedStore>,
    cache_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
    compiles: CompileStats,
}

/// How components were turned into machine code: compiled, or read back
/// from the on-disk cache (metrics).
#[derive(Debug, Default)]
pub struct CompileStats {
    /// Time of each compile (cache misses).
    pub compile_time: crate::histogram::Histogram,
    /// Components read back from the cache.
    pub cache_hits: std::sync::atomic::AtomicU64,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// A runtime caching compiled components in `cache_dir` (none: no cache).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Self>> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        use bindings::balancer::weir::plugin as p;
        p::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(|e| anyhow::anyhow!("{e}"))?;
        p::pool::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(|e| anyhow::anyhow!("{e}"))?;
        bindings::access::weir::plugin::http::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        bindings::health::weir::plugin::io::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e}"))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new().name("weir-epoch".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                e.increment_epoch();
            }
        })?;
        if let Some(dir) = &cache_dir {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!("plugin cache {} unusable, compiling every time: {e}", dir.display());
            }
            let dir = dir.clone();
            let _ = std::thread::Builder::new().name("weir-cache-prune".into()).spawn(move || {
                let n = prune_cache(&dir, CACHE_MAX_AGE);
                if n > 0 {
                    tracing::info!("plugin cache {}: removed {n} entries unused for 30 days", dir.display());
                }
            });
        }
        Ok(Arc::new(Self {
            engine,
            linker,
            shared: Arc::default(),
            cache_dir,
            ticker_stop,
            compiles: CompileStats::default(),
        }))
    }

    /// The default cache directory: `$WEIR_CACHE_DIR`, else `<user cache>/weir/components`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        std::env::var_os("WEIR_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("weir").join("components")))
    }

    /// The host-owned shared store.
    pub fn shared(&self) -> &Arc<SharedStore> {
        &self.shared
    }

    /// How components were compiled or read from the cache so far.
    pub fn compiles(&self) -> &CompileStats {
        &self.compiles
    }

    /// The bytes of a plugin source: `builtin:<name>` or a file path
    /// (relative paths resolved against `base`).
    pub fn read_source(source: &str, base: &Path) -> Result<Vec<u8>, LoadError> {
        if let Some(name) = source.strip_prefix("builtin:") {
            return bundled(name).map(<[u8]>::to_vec).ok_or_else(|| LoadError::UnknownBuiltin(name.into()));
        }
        let path = base.join(source);
        std::fs::read(&path).map_err(|e| LoadError::Read { path: path.display().to_string(), reason: e.to_string() })
    }

    /// Compile a component, through the on-disk cache when there is one.
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        if !wasmparser_is_component(bytes) {
            return Err(LoadError::Compile(if bytes.starts_with(b"\0asm") {
                "a core Wasm module, not a component (run it through `wasm-tools component new`)".into()
            } else {
                "not WebAssembly (no \\0asm header)".into()
            }));
        }
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut compat);
        let mut digest = Sha256::new();
        digest.update(bytes);
        digest.update(compat.finish().to_le_bytes());
        let key = hex::encode(&digest.finalize()[..16]);
        let cached = self.cache_dir.as_ref().map(|d| d.join(format!("{key}.cwasm")));
        if let Some(path) = cached.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (part of the key), in
            // a directory weir owns.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => {
                    // Used: kept by the pruning for another CACHE_MAX_AGE.
                    let _ = std::fs::File::options()
                        .append(true)
                        .open(path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    self.compiles.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => tracing::warn!("ignoring bad cache entry {}: {e}", path.display()),
            }
        }
        // A large component (an interpreter inside) takes seconds: say so,
        // and that the next load of the same bytes is quick.
        let size_kib = bytes.len() / 1024;
        match &cached {
            Some(path) => tracing::info!(
                "compiling a {size_kib} KiB component to machine code (first time; cached as {})",
                path.display()
            ),
            None => tracing::info!("compiling a {size_kib} KiB component to machine code (no cache directory)"),
        }
        let started = std::time::Instant::now();
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let took = started.elapsed();
        self.compiles.compile_time.observe(took);
        tracing::info!("compiled the {size_kib} KiB component in {:.2} s", took.as_secs_f64());
        if let Some(path) = cached {
            if let Ok(data) = component.serialize() {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, data).and_then(|_| std::fs::rename(&tmp, &path)).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        Ok(component)
    }

    /// The names of the interfaces a component exports.
    pub fn exports(&self, component: &Component) -> Vec<String> {
        component.component_type().exports(&self.engine).map(|(name, _)| name.to_string()).collect()
    }

    /// The names of the interfaces a component imports.
    pub fn imports(&self, component: &Component) -> Vec<String> {
        component.component_type().imports(&self.engine).map(|(name, _)| name.to_string()).collect()
    }

    /// The worlds whose export a component provides.
    pub fn worlds(&self, component: &Component) -> Vec<World> {
        let exports = self.exports(component);
        World::ALL.into_iter().filter(|w| exports.contains(&w.export_name())).collect()
    }

    /// Whether weir provides every import of a component; the error names
    /// the first one it does not.
    pub fn link_check(&self, component: &Component) -> Result<(), LoadError> {
        self.linker.instantiate_pre(component).map(|_| ()).map_err(|e| LoadError::Link(format!("{e:#}")))
    }

    /// Load a plugin instance: compile, check the world, link, instantiate
    /// and `init` with its config, so that a bad plugin fails here and not
    /// on the first connection.
    pub fn load(self: &Arc<Self>, spec: PluginSpec, bytes: &[u8]) -> Result<Arc<PluginInstance>, LoadError> {
        let (pre, hash) = self.prepare(spec.world, bytes)?;
        PluginInstance::new(self.clone(), spec, pre, hash)
    }

    /// Compile, check the world and link: everything but instantiating.
    /// Returns the linked component and its short content hash.
    pub(crate) fn prepare(
        &self,
        world: World,
        bytes: &[u8],
    ) -> Result<(wasmtime::component::InstancePre<PluginState>, String), LoadError> {
        let component = self.compile(bytes)?;
        if !self.worlds(&component).contains(&world) {
            let found = self.exports(&component);
            let found = if found.is_empty() { "nothing".to_string() } else { found.join(", ") };
            return Err(LoadError::WrongWorld { expected: world, found });
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        Ok((pre, component_hash(bytes)))
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The digest of a plugin spec and its component's short hash: equal for
/// an instance a reload may keep.
pub fn origin_of(spec: &PluginSpec, component_hash: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(format!("{spec:?}").as_bytes());
    digest.update(component_hash.as_bytes());
    hex::encode(&digest.finalize()[..16])
}

/// The short content hash weir gives a component.
pub fn component_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

fn wasmparser_is_component(bytes: &[u8]) -> bool {
    // Magic `\0asm`, then a version/layer word whose layer half is 1 for components.
    bytes.len() >= 8 && &bytes[..4] == b"\0asm" && bytes[6..8] == [1, 0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn aged(path: &Path, age: Duration) {
        std::fs::write(path, b"x").unwrap();
        let f = std::fs::File::options().append(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn pruning_removes_unused_entries_and_stale_partial_writes_only() {
        let dir = scratch("prune");
        let day = Duration::from_secs(24 * 3600);
        aged(&dir.join("old.cwasm"), 40 * day);
        aged(&dir.join("recent.cwasm"), 2 * day);
        aged(&dir.join("old.tmp123"), Duration::from_secs(2 * 3600));
        aged(&dir.join("writing.tmp456"), Duration::from_secs(60));
        aged(&dir.join("notes.txt"), 400 * day);
        assert_eq!(prune_cache(&dir, CACHE_MAX_AGE), 2);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "recent.cwasm", "writing.tmp456"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cache_hit_marks_the_entry_used() {
        let dir = scratch("touch");
        let runtime = Runtime::new(Some(dir.clone())).unwrap();
        let bytes = bundled("round-robin").unwrap();
        runtime.compile(bytes).unwrap();
        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .unwrap();
        // Within the age limit, so a pruning running beside the test keeps it.
        let f = std::fs::File::options().append(true).open(&entry).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(20 * 24 * 3600)).unwrap();
        runtime.compile(bytes).unwrap();
        let age = std::fs::metadata(&entry).unwrap().modified().unwrap().elapsed().unwrap_or_default();
        assert!(age < Duration::from_secs(3600), "touched on use, now {age:?} old");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

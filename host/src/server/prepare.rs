//! A config made ready to serve: every plugin instance loaded, every pool
//! built, every certificate read, before any socket changes.

use super::Snapshot;
use crate::config::{ConfigError, Fallback, InitialHealth, Loaded};
use crate::l7::{self, HttpPool};
use crate::plugin::{Grants, Limits, LoadError, PluginInstance, PluginSpec, Runtime, World};
use crate::tls::{BackendTls, ServerTls};
use crate::upstream::{BackendSpec, Pool, PoolSettings};
use std::collections::BTreeMap;
use std::sync::Arc;
use toml::Spanned;

/// Everything a config describes, loaded but not yet bound to sockets.
pub struct Prepared {
    /// Plugin instances by name (named ones and `builtin:` references).
    pub plugins: BTreeMap<String, Arc<PluginInstance>>,
    /// Pools by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// Certificates of the listeners that terminate TLS, by listener.
    pub(super) listener_tls: BTreeMap<String, Arc<ServerTls>>,
    pub(super) loaded: Loaded,
}

fn default_fallback(world: World) -> Fallback {
    match world {
        // An access filter that breaks must not open the door.
        World::AccessFilter => Fallback::FailClosed,
        _ => Fallback::FailOpen,
    }
}

impl Prepared {
    /// Load every plugin and build every pool of a checked config.
    pub fn load(loaded: Loaded, runtime: &Arc<Runtime>) -> Result<Self, ConfigError> {
        Self::load_over(loaded, runtime, None)
    }

    /// [`Prepared::load`] for a reload over `previous`: plugin instances
    /// whose spec and component are unchanged are kept (with their state
    /// and any swapped generation), and pools keep the counters and health
    /// of backends that stay (and, with discovery, the discovered list).
    pub fn load_over(loaded: Loaded, runtime: &Arc<Runtime>, previous: Option<&Snapshot>) -> Result<Self, ConfigError> {
        let uses = plugin_uses(&loaded)?;
        let plugins = load_plugins(&loaded, runtime, previous, &uses)?;
        let listener_tls = load_listener_tls(&loaded)?;
        let mut pools = BTreeMap::new();
        for (name, p) in &loaded.config.pools {
            let old = previous.and_then(|prev| prev.pools.get(name));
            let specs = match (old, &p.discovery) {
                // With discovery, the list found last carries over until
                // the next discovery answers.
                (Some(old), Some(_)) => old.members().backends.iter().map(|b| b.spec()).collect(),
                _ => p.backends.get_ref().iter().map(|b| BackendSpec::from(b.get_ref().table())).collect(),
            };
            let balancer = match p.balancer.get_ref().as_str() {
                crate::config::NATIVE_ROUND_ROBIN => crate::upstream::Balancer::NativeRoundRobin,
                name => crate::upstream::Balancer::Plugin(plugins[name].clone()),
            };
            let settings = pool_settings(p, pool_tls(&loaded, name, p)?);
            let pool = Pool::new(name, specs, balancer, settings, old.map(|o| &**o));
            pools.insert(name.clone(), pool);
        }
        Ok(Self { plugins, pools, listener_tls, loaded })
    }
}

/// Which phase each plugin instance the config refers to serves (and
/// where it is first named); one instance serves one phase.
fn plugin_uses(loaded: &Loaded) -> Result<BTreeMap<String, (World, Spanned<String>)>, ConfigError> {
    let (src, cfg) = (&loaded.source, &loaded.config);
    let mut uses: BTreeMap<String, (World, Spanned<String>)> = BTreeMap::new();
    let mut note = |r: &Spanned<String>, world: World, key: String| -> Result<(), ConfigError> {
        match uses.get(r.get_ref()) {
            Some((w, _)) if *w != world => {
                Err(src.error(r, format!("{key}: plugin instance `{}` is already used as a {w} plugin", r.get_ref())))
            }
            Some(_) => Ok(()),
            None => {
                uses.insert(r.get_ref().clone(), (world, r.clone()));
                Ok(())
            }
        }
    };
    for (name, pool) in &cfg.pools {
        if pool.balancer.get_ref() != crate::config::NATIVE_ROUND_ROBIN {
            note(&pool.balancer, World::Balancer, format!("pools.{name}.balancer"))?;
        }
        if let Some(h) = &pool.health {
            note(&h.plugin, World::HealthChecker, format!("pools.{name}.health.plugin"))?;
        }
        if let Some(d) = &pool.discovery {
            note(&d.plugin, World::DiscoveryAdapter, format!("pools.{name}.discovery.plugin"))?;
        }
    }
    for (name, l) in &cfg.listeners {
        for a in &l.access {
            note(a, World::AccessFilter, format!("listeners.{name}.access"))?;
        }
        if let Some(r) = &l.router {
            note(r, World::Router, format!("listeners.{name}.router"))?;
        }
    }
    Ok(uses)
}

/// Every plugin instance: the `[plugins.NAME]` tables, then the
/// `builtin:` plugins named directly (default config and limits). An
/// instance of `previous` whose spec and component are unchanged is kept.
fn load_plugins(
    loaded: &Loaded,
    runtime: &Arc<Runtime>,
    previous: Option<&Snapshot>,
    uses: &BTreeMap<String, (World, Spanned<String>)>,
) -> Result<BTreeMap<String, Arc<PluginInstance>>, ConfigError> {
    let load_plugin = |spec: PluginSpec, bytes: &[u8]| -> Result<Arc<PluginInstance>, LoadError> {
        let origin = crate::plugin::origin_of(&spec, &crate::plugin::component_hash(bytes));
        match previous.and_then(|p| p.plugins.get(&spec.name)) {
            Some(old) if old.origin() == origin => Ok(old.clone()),
            _ => runtime.load(spec, bytes),
        }
    };
    let src = &loaded.source;
    let mut plugins = BTreeMap::new();
    for (name, p) in &loaded.config.plugins {
        let key = format!("plugins.{name}");
        let at = |e: LoadError| src.error(&p.source, format!("{key}: {}: {e}", p.source.get_ref()));
        let bytes = Runtime::read_source(p.source.get_ref(), loaded.base_dir()).map_err(at)?;
        let world = match uses.get(name) {
            Some((w, _)) => *w,
            None => {
                let component = runtime.compile(&bytes).map_err(at)?;
                *runtime.worlds(&component).first().ok_or_else(|| {
                    at(LoadError::WrongWorld {
                        expected: World::Balancer,
                        found: runtime.exports(&component).join(", "),
                    })
                })?
            }
        };
        let mut config = p.config.as_ref().map(|c| c.get_ref().clone()).unwrap_or_default();
        if let Some(c) = &p.config {
            crate::config::resolve_table(&mut config, loaded.base_dir())
                .map_err(|e| src.error(c, format!("{key}.config.{e}")))?;
        }
        let spec = PluginSpec {
            name: name.clone(),
            source: p.source.get_ref().clone(),
            world,
            config_json: serde_json::to_string(&config).expect("TOML tables are JSON-representable"),
            limits: Limits { timeout: p.timeout.0, memory: p.memory_limit.0 as usize, init_timeout: p.init_timeout.0 },
            fallback: p.fallback.unwrap_or(default_fallback(world)),
            grants: Grants::from_config(&p.grants, loaded.base_dir()),
        };
        let instance = load_plugin(spec, &bytes).map_err(|e| match (&e, &p.config) {
            (LoadError::Init(_), Some(c)) => src.error(c, format!("{key}.config: {e}")),
            _ => at(e),
        })?;
        plugins.insert(name.clone(), instance);
    }
    for (name, (world, at)) in uses {
        if plugins.contains_key(name) {
            continue;
        }
        let fail = |e: LoadError| src.error(at, format!("{name}: {e}"));
        let bytes = Runtime::read_source(name, loaded.base_dir()).map_err(fail)?;
        let spec = PluginSpec {
            name: name.clone(),
            source: name.clone(),
            world: *world,
            config_json: "{}".into(),
            limits: Limits::default(),
            fallback: default_fallback(*world),
            grants: Grants::default(),
        };
        plugins.insert(name.clone(), load_plugin(spec, &bytes).map_err(fail)?);
    }
    Ok(plugins)
}

/// The certificates of every listener that terminates TLS (files, or
/// what ACME obtained), by listener.
fn load_listener_tls(loaded: &Loaded) -> Result<BTreeMap<String, Arc<ServerTls>>, ConfigError> {
    let (src, cfg) = (&loaded.source, &loaded.config);
    let mut listener_tls = BTreeMap::new();
    for (name, l) in &cfg.listeners {
        let Some(spec) = l.tls.as_ref().filter(|t| !t.get_ref().passthrough) else { continue };
        let t = spec.get_ref();
        let acme = match (&cfg.acme, t.acme.is_empty()) {
            (Some(a), false) => {
                let settings = crate::acme::Settings::from_config(a, loaded.base_dir());
                Some(crate::acme::certificate_files(&settings.storage, &t.acme))
            }
            _ => None,
        };
        let tls =
            ServerTls::load(t, loaded.base_dir(), l.protocol.is_http(), acme).map_err(|e| match e.certificate {
                Some((i, which)) => {
                    let files = &t.certificates[i];
                    let at = if which == "cert" { &files.cert } else { &files.key };
                    src.error(at, format!("listeners.{name}.tls.certificates[{i}].{which}: {}", e.message))
                }
                None => match &t.client_ca {
                    Some(ca) => src.error(ca, format!("listeners.{name}.tls.client_ca: {}", e.message)),
                    None => src.error(spec, format!("listeners.{name}.tls: {}", e.message)),
                },
            })?;
        listener_tls.insert(name.clone(), Arc::new(tls));
    }
    Ok(listener_tls)
}

/// A pool's TLS to its backends, when it has a `[pools.NAME.tls]` table.
fn pool_tls(loaded: &Loaded, name: &str, p: &crate::config::PoolTable) -> Result<Option<Arc<BackendTls>>, ConfigError> {
    let Some(spec) = &p.tls else { return Ok(None) };
    let t = spec.get_ref();
    let tls = BackendTls::load(t, loaded.base_dir(), &[]).map_err(|(key, message)| {
        let at = match key {
            "ca" => t.ca.as_ref(),
            "cert" => t.cert.as_ref(),
            "key" => t.key.as_ref(),
            _ => None,
        };
        let text = format!("pools.{name}.tls.{key}: {message}");
        match at {
            Some(at) => loaded.source.error(at, text),
            None => loaded.source.error(spec, text),
        }
    })?;
    Ok(Some(Arc::new(tls)))
}

/// The runtime settings of a `[pools.NAME]` table.
fn pool_settings(p: &crate::config::PoolTable, tls: Option<Arc<BackendTls>>) -> PoolSettings {
    PoolSettings {
        connect_timeout: p.connect_timeout.0,
        max_tries: p.max_tries,
        max_fails: p.max_fails,
        fail_timeout: p.fail_timeout.0,
        response_timeout: p.response_timeout.0,
        hash_key: p.hash_key.as_ref().and_then(|k| crate::config::HashKey::parse(k.get_ref())),
        retry_on: p.retry_on.clone(),
        retry_budget: p.retry_budget,
        panic: p.panic,
        fail_on: p.fail_on.clone(),
        active_checks: p.health.is_some(),
        initial_up: p.health.as_ref().is_none_or(|h| h.initial == InitialHealth::Up),
        tls,
        send_proxy: p.send_proxy.as_ref().map(|v| *v.get_ref()),
    }
}

impl Prepared {
    /// The config text this was prepared from, with its origin.
    pub fn source(&self) -> &crate::config::Source {
        &self.loaded.source
    }

    /// Every pool with an HTTP client of its own (not those that send
    /// PROXY headers: a router naming one gets "unknown pool").
    pub(super) fn http_pools(&self) -> BTreeMap<String, HttpPool> {
        let cfg = &self.loaded.config;
        self.pools
            .iter()
            .filter(|(name, _)| cfg.pools[*name].send_proxy.is_none())
            .map(|(name, pool)| {
                let p = &cfg.pools[name];
                let tls = pool.settings.tls.as_deref();
                let upstream = l7::Upstream::new(l7::UpstreamSettings {
                    http2: p.http2,
                    keepalive: p.keepalive,
                    keepalive_timeout: p.keepalive_timeout.0,
                    connect_timeout: p.connect_timeout.0,
                    tls,
                });
                (name.clone(), HttpPool { pool: pool.clone(), upstream })
            })
            .collect()
    }
}

//! Builds the running proxy from a config: loads every plugin instance,
//! builds pools, binds listeners and runs them until shutdown.

use crate::admin;
use crate::config::Protocol;
use crate::config::{ConfigError, Fallback, InitialHealth, Loaded};
use crate::discovery::{self, DiscoverySettings};
use crate::health::{self, CheckSettings};
use crate::l4::{self, TcpService};
use crate::l7::{self, HttpPool, HttpService, HttpSettings};
use crate::plugin::{Grants, Limits, LoadError, PluginInstance, PluginSpec, Runtime, World};
use crate::upstream::{BackendSpec, Pool, PoolSettings};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toml::Spanned;

/// Everything a config describes, loaded but not yet bound to sockets.
pub struct Prepared {
    /// Plugin instances by name (named ones and `builtin:` references).
    pub plugins: BTreeMap<String, Arc<PluginInstance>>,
    /// Pools by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    loaded: Loaded,
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
        let src = &loaded.source;
        let cfg = &loaded.config;
        // Which phase each referenced plugin instance serves.
        let mut uses: BTreeMap<String, (World, Spanned<String>)> = BTreeMap::new();
        let mut note =
            |r: &Spanned<String>, world: World, key: String| -> Result<(), ConfigError> {
                match uses.get(r.get_ref()) {
                    Some((w, _)) if *w != world => Err(src
                        .error(r, format!("{key}: plugin instance `{}` is already used as a {w} plugin", r.get_ref()))),
                    Some(_) => Ok(()),
                    None => {
                        uses.insert(r.get_ref().clone(), (world, r.clone()));
                        Ok(())
                    }
                }
            };
        for (name, pool) in &cfg.pools {
            note(&pool.balancer, World::Balancer, format!("pools.{name}.balancer"))?;
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

        let mut plugins = BTreeMap::new();
        for (name, p) in &cfg.plugins {
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
            let config = p.config.as_ref().map(|c| c.get_ref().clone()).unwrap_or_default();
            let json = serde_json::to_string(&config).expect("TOML tables are JSON-representable");
            let limits = Limits { timeout: p.timeout.0, memory: p.memory_limit.0 as usize };
            let fallback = p.fallback.unwrap_or(default_fallback(world));
            let at_config = |e: LoadError| match &p.config {
                Some(c) => src.error(c, format!("{key}.config: {e}")),
                None => at(e),
            };
            let g = &p.grants;
            let grants = Grants {
                http: g.http.clone(),
                tcp: g.tcp.clone(),
                udp: g.udp.clone(),
                dns: g.dns.as_ref().and_then(|d| d.get_ref().parse().ok()),
                files: g.files.iter().map(|f| loaded.base_dir().join(f)).collect(),
                exec: g.exec.iter().map(Into::into).collect(),
            };
            let spec = PluginSpec {
                name: name.clone(),
                source: p.source.get_ref().clone(),
                world,
                config_json: json,
                limits,
                fallback,
                grants,
            };
            let instance = runtime.load(spec, &bytes).map_err(|e| {
                if matches!(e, LoadError::Init(_)) {
                    at_config(e)
                } else {
                    at(e)
                }
            })?;
            plugins.insert(name.clone(), instance);
        }
        for (name, (world, at)) in &uses {
            if plugins.contains_key(name) {
                continue;
            }
            // `builtin:<name>` used directly: default config and limits.
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
            let instance = runtime.load(spec, &bytes).map_err(fail)?;
            plugins.insert(name.clone(), instance);
        }

        let mut pools = BTreeMap::new();
        for (name, p) in &cfg.pools {
            let specs = p
                .backends
                .get_ref()
                .iter()
                .map(|b| {
                    let t = b.get_ref().table();
                    BackendSpec { address: t.address, weight: t.weight, priority: t.priority, tags: t.tags }
                })
                .collect();
            let balancer = plugins[p.balancer.get_ref()].clone();
            let settings = PoolSettings {
                connect_timeout: p.connect_timeout.0,
                max_tries: p.max_tries,
                max_fails: p.max_fails,
                fail_timeout: p.fail_timeout.0,
                response_timeout: p.response_timeout.0,
                hash_key: p.hash_key.as_ref().and_then(|k| crate::upstream::HashKey::parse(k.get_ref())),
                retry_on: p.retry_on.clone(),
                retry_budget: p.retry_budget,
                panic: p.panic,
                fail_on: p.fail_on.clone(),
            };
            let pool = Pool::new(name, specs, balancer, settings);
            pools.insert(name.clone(), Arc::new(pool));
        }
        Ok(Self { plugins, pools, loaded })
    }
}

impl Prepared {
    /// Every pool with an HTTP client of its own.
    fn http_pools(&self) -> BTreeMap<String, HttpPool> {
        let cfg = &self.loaded.config;
        self.pools
            .iter()
            .map(|(name, pool)| {
                let p = &cfg.pools[name];
                let client = l7::upstream_client(p.http2, p.keepalive, p.keepalive_timeout.0, p.connect_timeout.0);
                (name.clone(), HttpPool { pool: pool.clone(), client, http2: p.http2 })
            })
            .collect()
    }
}

/// A running weir.
pub struct Server {
    prepared: Prepared,
    listeners: BTreeMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    stop: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
    _runtime: Arc<Runtime>,
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    tokio::net::TcpListener::from_std(socket.into())
}

impl Server {
    /// Load plugins, build pools, bind every listener and start serving.
    pub async fn start(loaded: Loaded, runtime: Arc<Runtime>) -> anyhow::Result<Self> {
        let grace = loaded.config.runtime.shutdown_grace.0;
        let prepared = Prepared::load(loaded, &runtime)?;
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let cfg = &prepared.loaded.config;
        for (name, pool) in &prepared.pools {
            pool.track_throughput();
            let p = &cfg.pools[name];
            if let Some(d) = &p.discovery {
                let plugin = prepared.plugins[d.plugin.get_ref()].clone();
                let s = DiscoverySettings { interval: d.interval.0, timeout: d.timeout.0, failpolicy: d.failpolicy };
                // Discover once before the listeners open, so the first
                // clients find the discovered backends.
                discovery::discover_once(pool, &plugin, s).await;
                discovery::spawn(pool.clone(), plugin, s, stop.clone());
            }
            if let Some(h) = &p.health {
                let checker = prepared.plugins[h.plugin.get_ref()].clone();
                pool.enable_active_checks(h.initial == InitialHealth::Up);
                let s = CheckSettings { interval: h.interval.0, timeout: h.timeout.0, rise: h.rise, fall: h.fall };
                health::spawn(pool.clone(), checker, s, stop.clone());
            }
        }
        let mut listeners = BTreeMap::new();
        let mut http_pools = None;
        for (name, l) in &cfg.listeners {
            let addr: SocketAddr = l.bind.get_ref().parse()?;
            let listener = bind(addr, l.backlog).map_err(|e| {
                prepared.loaded.source.error(&l.bind, format!("listeners.{name}.bind: cannot bind {addr}: {e}"))
            })?;
            let local = listener.local_addr()?;
            let access = l.access.iter().map(|a| prepared.plugins[a.get_ref()].clone()).collect();
            match l.protocol {
                Protocol::Tcp => {
                    let service = Arc::new(TcpService {
                        name: name.as_str().into(),
                        listener_id: runtime.shared().listener_id(name),
                        local,
                        pool: prepared.pools[l.pool.get_ref()].clone(),
                        access,
                        idle_timeout: l.idle_timeout.0,
                    });
                    tokio::spawn(l4::serve(listener, service, stop.clone(), tracker.clone()));
                }
                Protocol::Http => {
                    let pools = http_pools.get_or_insert_with(|| Arc::new(prepared.http_pools()));
                    let service = Arc::new(HttpService {
                        name: name.as_str().into(),
                        listener_id: runtime.shared().listener_id(name),
                        local,
                        default_pool: pools[l.pool.get_ref()].clone(),
                        pools: pools.clone(),
                        access,
                        router: l.router.as_ref().map(|r| prepared.plugins[r.get_ref()].clone()),
                        settings: HttpSettings {
                            header_timeout: l.header_timeout.0,
                            max_header_size: l.max_header_size.0 as usize,
                            x_forwarded: l.x_forwarded,
                            forwarded: l.forwarded,
                            via: l.via,
                        },
                    });
                    tokio::spawn(l7::serve(listener, service, stop.clone(), tracker.clone()));
                }
            }
            tracing::info!(listener = %name, %local, protocol = ?l.protocol, pool = %l.pool.get_ref(), "listening");
            listeners.insert(name.clone(), local);
        }
        let admin = match &cfg.admin {
            Some(a) => {
                let addr: SocketAddr = a.bind.get_ref().parse()?;
                let listener = bind(addr, 128).map_err(|e| {
                    prepared.loaded.source.error(&a.bind, format!("admin.bind: cannot bind {addr}: {e}"))
                })?;
                let local = listener.local_addr()?;
                let control = Arc::new(admin::Control {
                    plugins: prepared.plugins.clone(),
                    pools: prepared.pools.clone(),
                    listeners: cfg
                        .listeners
                        .iter()
                        .map(|(name, l)| {
                            let info = admin::ListenerInfo {
                                address: listeners[name],
                                protocol: match l.protocol {
                                    Protocol::Tcp => "tcp",
                                    Protocol::Http => "http",
                                },
                                pool: l.pool.get_ref().clone(),
                            };
                            (name.clone(), info)
                        })
                        .collect(),
                    config_text: prepared.loaded.source.text.clone(),
                    started: std::time::Instant::now(),
                    token: a.token.clone(),
                    metrics: crate::metrics::registry(prepared.plugins.clone(), prepared.pools.clone()),
                });
                tokio::spawn(admin::serve(listener, control, stop.clone()));
                tracing::info!(%local, "admin API listening");
                Some(local)
            }
            None => None,
        };
        Ok(Self { prepared, listeners, admin, stop, tracker, grace, _runtime: runtime })
    }

    /// The bound address of a listener.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.get(name).copied()
    }

    /// The bound address of the admin API, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// A plugin instance by name.
    pub fn plugin(&self, name: &str) -> Option<&Arc<PluginInstance>> {
        self.prepared.plugins.get(name)
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.prepared.pools.get(name)
    }

    /// Connections being proxied now.
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }

    /// Stop accepting, then let in-flight connections finish for up to the
    /// configured grace period. Returns how many were cut off.
    pub async fn shutdown(self) -> usize {
        self.stop.cancel();
        self.tracker.close();
        let open = self.tracker.len();
        if open > 0 {
            tracing::info!(open, grace = ?self.grace, "draining connections");
        }
        match tokio::time::timeout(self.grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.tracker.len();
                tracing::warn!(left, "grace period over; closing remaining connections");
                left
            }
        }
    }
}

/// Register for SIGINT and SIGTERM now (so none is missed while starting up);
/// the returned future resolves when one arrives.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

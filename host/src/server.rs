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
use crate::tls::{BackendTls, ServerTls};
use crate::udp::{self, UdpService};
use crate::upstream::{BackendSpec, Pool, PoolSettings};
use arc_swap::ArcSwap;
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
    /// Certificates of the listeners that terminate TLS, by listener.
    listener_tls: BTreeMap<String, Arc<ServerTls>>,
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
        Self::load_over(loaded, runtime, None)
    }

    /// [`Prepared::load`] for a reload over `previous`: plugin instances
    /// whose spec and component are unchanged are kept (with their state
    /// and any swapped generation), and pools keep the counters and health
    /// of backends that stay (and, with discovery, the discovered list).
    pub fn load_over(loaded: Loaded, runtime: &Arc<Runtime>, previous: Option<&Snapshot>) -> Result<Self, ConfigError> {
        let load_plugin = |spec: PluginSpec, bytes: &[u8]| -> Result<Arc<PluginInstance>, LoadError> {
            let origin = crate::plugin::origin_of(&spec, &crate::plugin::component_hash(bytes));
            match previous.and_then(|p| p.plugins.get(&spec.name)) {
                Some(old) if old.origin() == origin => Ok(old.clone()),
                _ => runtime.load(spec, bytes),
            }
        };
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
            if pool.balancer.get_ref() != crate::upstream::NATIVE_ROUND_ROBIN {
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
            let limits =
                Limits { timeout: p.timeout.0, memory: p.memory_limit.0 as usize, init_timeout: p.init_timeout.0 };
            let fallback = p.fallback.unwrap_or(default_fallback(world));
            let at_config = |e: LoadError| match &p.config {
                Some(c) => src.error(c, format!("{key}.config: {e}")),
                None => at(e),
            };
            let grants = Grants::from_config(&p.grants, loaded.base_dir());
            let spec = PluginSpec {
                name: name.clone(),
                source: p.source.get_ref().clone(),
                world,
                config_json: json,
                limits,
                fallback,
                grants,
            };
            let instance = load_plugin(spec, &bytes).map_err(|e| {
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
            let instance = load_plugin(spec, &bytes).map_err(fail)?;
            plugins.insert(name.clone(), instance);
        }

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

        let mut pools = BTreeMap::new();
        for (name, p) in &cfg.pools {
            let old = previous.and_then(|prev| prev.pools.get(name));
            let tls = match &p.tls {
                Some(spec) => {
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
                            Some(at) => src.error(at, text),
                            None => src.error(spec, text),
                        }
                    })?;
                    Some(Arc::new(tls))
                }
                None => None,
            };
            let specs = p.backends.get_ref().iter().map(|b| BackendSpec::from(b.get_ref().table())).collect();
            let balancer = match p.balancer.get_ref().as_str() {
                crate::upstream::NATIVE_ROUND_ROBIN => crate::upstream::Balancer::NativeRoundRobin,
                name => crate::upstream::Balancer::Plugin(plugins[name].clone()),
            };
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
                active_checks: p.health.is_some(),
                initial_up: p.health.as_ref().is_none_or(|h| h.initial == InitialHealth::Up),
                tls,
                send_proxy: p.send_proxy.as_ref().map(|v| *v.get_ref()),
            };
            // With discovery, the list found last carries over until the
            // next discovery answers.
            let specs = match (old, &p.discovery) {
                (Some(old), Some(_)) => old
                    .members()
                    .backends
                    .iter()
                    .map(|b| BackendSpec {
                        address: b.address.clone(),
                        weight: b.weight,
                        priority: b.priority,
                        tags: b.tags.clone(),
                    })
                    .collect(),
                _ => specs,
            };
            let pool = Pool::new(name, specs, balancer, settings, old.map(|o| &**o));
            pools.insert(name.clone(), Arc::new(pool));
        }
        Ok(Self { plugins, pools, listener_tls, loaded })
    }
}

impl Prepared {
    /// Every pool with an HTTP client of its own (not those that send
    /// PROXY headers: a router naming one gets "unknown pool").
    fn http_pools(&self) -> BTreeMap<String, HttpPool> {
        let cfg = &self.loaded.config;
        self.pools
            .iter()
            .filter(|(name, _)| cfg.pools[*name].send_proxy.is_none())
            .map(|(name, pool)| {
                let p = &cfg.pools[name];
                let tls = pool.settings.tls.as_deref();
                let client = l7::upstream_client(p.http2, p.keepalive, p.keepalive_timeout.0, p.connect_timeout.0, tls);
                let scheme = if tls.is_some() { "https" } else { "http" };
                (name.clone(), HttpPool { pool: pool.clone(), client, http2: p.http2, scheme })
            })
            .collect()
    }
}

/// What runs now, as the admin API, metrics and tests read it.
pub struct Snapshot {
    /// Plugin instances by name.
    pub plugins: BTreeMap<String, Arc<PluginInstance>>,
    /// Pools by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// Listeners by name.
    pub listeners: BTreeMap<String, admin::ListenerInfo>,
    /// The config text in force and where it came from.
    pub source: crate::config::Source,
    /// The file SIGHUP and `weir reload` re-read: the one weir started
    /// with (a config given as text has none).
    pub file: Option<std::path::PathBuf>,
}

enum Service {
    Tcp(Arc<TcpService>),
    Http(Arc<HttpService>),
    Udp(Arc<UdpService>),
}

/// A listener's socket, bound before anything changes.
enum Bound {
    /// A listening TCP socket (TCP and HTTP listeners).
    Tcp(tokio::net::TcpListener),
    /// A UDP socket.
    Udp(tokio::net::UdpSocket),
}

impl Bound {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Tcp(s) => s.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
    }
}

/// Bind the socket a listener's protocol needs.
fn bind_listener(addr: SocketAddr, l: &crate::config::Listener) -> std::io::Result<Bound> {
    match l.protocol {
        Protocol::Udp => udp::bind(addr).map(Bound::Udp),
        _ => bind(addr, l.backlog).map(Bound::Tcp),
    }
}

struct RunningListener {
    bind: String,
    protocol: Protocol,
    addr: SocketAddr,
    service: Service,
    stop: CancellationToken,
}

/// The mutable part of a running server, changed only by a reload.
struct Running {
    listeners: BTreeMap<String, RunningListener>,
    /// Stops the health, discovery and throughput loops of the current pools.
    background: CancellationToken,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReloadSummary {
    /// Listeners opened.
    pub listeners_added: Vec<String>,
    /// Listeners closed (their connections drain).
    pub listeners_removed: Vec<String>,
    /// Plugin instances loaded anew (the others were kept as they were).
    pub plugins_loaded: Vec<String>,
    /// Pools in the new config.
    pub pools: Vec<String>,
}

/// The shared core of a running weir.
pub struct ServerCore {
    runtime: Arc<Runtime>,
    /// HTTP-01 answers of pending ACME orders, served by HTTP listeners.
    challenges: Arc<crate::acme::Challenges>,
    snapshot: ArcSwap<Snapshot>,
    running: tokio::sync::Mutex<Running>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

/// A running weir.
pub struct Server {
    core: Arc<ServerCore>,
    admin: Option<SocketAddr>,
    grace: Duration,
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Bind, retrying for a moment: a listener closed by the same reload may
/// still be releasing the address.
async fn bind_soon(addr: SocketAddr, l: &crate::config::Listener) -> std::io::Result<Bound> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        match bind_listener(addr, l) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => return other,
        }
    }
}

impl ServerCore {
    /// Start the background loops (throughput, discovery, health) of every
    /// pool; the first discovery of each pool runs before this returns.
    async fn start_background(&self, prepared: &Prepared, stop: &CancellationToken) {
        let cfg = &prepared.loaded.config;
        if let Some(acme) = &cfg.acme {
            let settings = crate::acme::Settings::from_config(acme, prepared.loaded.base_dir());
            for l in cfg.listeners.values() {
                if let Some(t) = l.tls.as_ref().filter(|t| !t.get_ref().acme.is_empty()) {
                    let names = t.get_ref().acme.clone();
                    crate::acme::spawn(settings.clone(), names, self.challenges.clone(), stop.clone());
                }
            }
        }
        for (name, pool) in &prepared.pools {
            pool.track_throughput();
            let p = &cfg.pools[name];
            if let Some(d) = &p.discovery {
                let plugin = prepared.plugins[d.plugin.get_ref()].clone();
                let s = DiscoverySettings { interval: d.interval.0, timeout: d.timeout.0, failpolicy: d.failpolicy };
                discovery::discover_once(pool, &plugin, s).await;
                discovery::spawn(pool.clone(), plugin, s, stop.clone());
            }
            if let Some(h) = &p.health {
                let checker = prepared.plugins[h.plugin.get_ref()].clone();
                let s = CheckSettings { interval: h.interval.0, timeout: h.timeout.0, rise: h.rise, fall: h.fall };
                health::spawn(pool.clone(), checker, s, stop.clone());
            }
        }
    }

    /// The certificates of a terminating listener, watched for changes for
    /// as long as its routes hold them.
    fn listener_tls(prepared: &Prepared, name: &str, l: &crate::config::Listener) -> Option<Arc<ServerTls>> {
        let tls = prepared.listener_tls.get(name)?.clone();
        let interval = l.tls.as_ref().map_or(Duration::from_secs(2), |t| t.get_ref().watch_interval.0);
        tls.watch(name.into(), interval);
        Some(tls)
    }

    fn tcp_routes(prepared: &Prepared, name: &str, l: &crate::config::Listener) -> l4::TcpRoutes {
        let tls = match (&l.tls, Self::listener_tls(prepared, name, l)) {
            (_, Some(tls)) => l4::TlsMode::Terminate(tls),
            (Some(t), None) => l4::TlsMode::Passthrough(t.get_ref().handshake_timeout.0),
            (None, None) => l4::TlsMode::None,
        };
        l4::TcpRoutes {
            pool: prepared.pools[l.pool.get_ref()].clone(),
            pools: Arc::new(prepared.pools.clone()),
            access: l.access.iter().map(|a| prepared.plugins[a.get_ref()].clone()).collect(),
            router: l.router.as_ref().map(|r| prepared.plugins[r.get_ref()].clone()),
            tls,
            idle_timeout: l.idle_timeout.0,
            access_log: l.access_log.fields(),
            proxy_accept: crate::proxy_protocol::ProxyAccept::for_listener(l),
        }
    }

    fn udp_routes(prepared: &Prepared, l: &crate::config::Listener) -> udp::UdpRoutes {
        let count = |v: &Option<Spanned<u64>>| v.as_ref().map(|v| *v.get_ref());
        udp::UdpRoutes {
            pool: prepared.pools[l.pool.get_ref()].clone(),
            access: l.access.iter().map(|a| prepared.plugins[a.get_ref()].clone()).collect(),
            settings: udp::UdpSettings {
                idle_timeout: l
                    .udp_idle_timeout
                    .as_ref()
                    .map_or(crate::config::DEFAULT_UDP_IDLE_TIMEOUT, |t| t.get_ref().0),
                max_requests: count(&l.udp_max_requests).unwrap_or(0),
                max_responses: count(&l.udp_max_responses).unwrap_or(0),
                max_sessions: count(&l.udp_max_sessions).unwrap_or(crate::config::DEFAULT_UDP_MAX_SESSIONS),
            },
            access_log: l.access_log.fields(),
        }
    }

    fn http_routes(
        prepared: &Prepared,
        pools: &Arc<BTreeMap<String, HttpPool>>,
        name: &str,
        l: &crate::config::Listener,
    ) -> l7::HttpRoutes {
        l7::HttpRoutes {
            default_pool: pools[l.pool.get_ref()].clone(),
            pools: pools.clone(),
            access: l.access.iter().map(|a| prepared.plugins[a.get_ref()].clone()).collect(),
            router: l.router.as_ref().map(|r| prepared.plugins[r.get_ref()].clone()),
            access_log: l.access_log.fields(),
            proxy_accept: crate::proxy_protocol::ProxyAccept::for_listener(l),
            settings: HttpSettings {
                header_timeout: l.header_timeout.0,
                max_header_size: l.max_header_size.0 as usize,
                x_forwarded: l.x_forwarded,
                forwarded: l.forwarded,
                via: l.via,
                https: l.protocol == Protocol::Https,
            },
            tls: Self::listener_tls(prepared, name, l),
        }
    }

    /// Open a listener on an already bound socket.
    fn open(
        &self,
        prepared: &Prepared,
        http_pools: &Arc<BTreeMap<String, HttpPool>>,
        name: &str,
        l: &crate::config::Listener,
        socket: Bound,
    ) -> std::io::Result<RunningListener> {
        let local = socket.local_addr()?;
        let stop = self.stop.child_token();
        let listener_id = self.runtime.shared().listener_id(name);
        let service = match (l.protocol, socket) {
            (Protocol::Udp, Bound::Udp(socket)) => {
                let service = Arc::new(UdpService {
                    name: name.into(),
                    listener_id,
                    local,
                    routes: ArcSwap::from_pointee(Self::udp_routes(prepared, l)),
                    stats: Arc::default(),
                });
                tokio::spawn(udp::serve(socket, service.clone(), stop.clone(), self.tracker.clone()));
                Service::Udp(service)
            }
            (_, Bound::Udp(_)) | (Protocol::Udp, _) => {
                return Err(std::io::Error::other(format!("listener {name}: socket does not match its protocol")))
            }
            (Protocol::Tcp | Protocol::Tls, Bound::Tcp(socket)) => {
                let service = Arc::new(TcpService {
                    name: name.into(),
                    listener_id,
                    local,
                    routes: ArcSwap::from_pointee(Self::tcp_routes(prepared, name, l)),
                    stats: Arc::default(),
                });
                tokio::spawn(l4::serve(socket, service.clone(), stop.clone(), self.tracker.clone()));
                Service::Tcp(service)
            }
            (Protocol::Http | Protocol::Https, Bound::Tcp(socket)) => {
                let service = Arc::new(HttpService {
                    challenges: self.challenges.clone(),
                    name: name.into(),
                    listener_id,
                    local,
                    routes: ArcSwap::from_pointee(Self::http_routes(prepared, http_pools, name, l)),
                    stats: Arc::default(),
                });
                tokio::spawn(l7::serve(socket, service.clone(), stop.clone(), self.tracker.clone()));
                Service::Http(service)
            }
        };
        tracing::info!(listener = %name, %local, protocol = ?l.protocol, pool = %l.pool.get_ref(), "listening");
        Ok(RunningListener { bind: l.bind.get_ref().clone(), protocol: l.protocol, addr: local, service, stop })
    }

    fn snapshot_of(
        prepared: &Prepared,
        listeners: &BTreeMap<String, RunningListener>,
        file: Option<std::path::PathBuf>,
    ) -> Snapshot {
        let cfg = &prepared.loaded.config;
        Snapshot {
            plugins: prepared.plugins.clone(),
            pools: prepared.pools.clone(),
            listeners: listeners
                .iter()
                .map(|(name, l)| {
                    let info = admin::ListenerInfo {
                        address: l.addr,
                        protocol: l.protocol.name(),
                        pool: cfg.listeners[name].pool.get_ref().clone(),
                        stats: match &l.service {
                            Service::Tcp(s) => s.stats.clone(),
                            Service::Http(s) => s.stats.clone(),
                            Service::Udp(s) => s.stats.clone(),
                        },
                    };
                    (name.clone(), info)
                })
                .collect(),
            source: prepared.loaded.source.clone(),
            file,
        }
    }

    /// The plugin runtime (shared store, compile cache).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Apply a new config: parse and check it, load every plugin and bind
    /// every new listener first; only then swap routes, open and close
    /// listeners and restart the background loops. An error changes
    /// nothing and says where the config is wrong.
    pub async fn reload(&self, source: crate::config::Source) -> Result<ReloadSummary, String> {
        let mut running = self.running.lock().await;
        let loaded = Loaded::parse(source).map_err(|e| e.to_string())?;
        let previous = self.snapshot.load_full();
        let runtime = self.runtime.clone();
        let prev = previous.clone();
        let prepared = tokio::task::spawn_blocking(move || Prepared::load_over(loaded, &runtime, Some(&prev)))
            .await
            .map_err(|e| format!("reload task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let cfg = &prepared.loaded.config;
        // A listener is kept when its name, protocol and address stay (the
        // address as written, or the one port 0 picked, written out).
        let kept = |name: &str, l: &crate::config::Listener| {
            running.listeners.get(name).is_some_and(|r| {
                r.protocol == l.protocol
                    && (r.bind == *l.bind.get_ref() || l.bind.get_ref().parse::<SocketAddr>().ok() == Some(r.addr))
            })
        };
        // Listeners closing whose address a new listener takes must close
        // first; everything else new is bound before anything changes.
        let closing: Vec<String> =
            running.listeners.keys().filter(|n| cfg.listeners.get(*n).is_none_or(|l| !kept(n, l))).cloned().collect();
        let mut sockets = BTreeMap::new();
        for (name, l) in &cfg.listeners {
            if kept(name, l) {
                continue;
            }
            let addr: SocketAddr = l.bind.get_ref().parse().map_err(|e| format!("listeners.{name}.bind: {e}"))?;
            let udp = |p: Protocol| p == Protocol::Udp;
            let frees = closing.iter().any(|c| {
                let r = &running.listeners[c];
                addr.port() != 0 && r.addr == addr && udp(r.protocol) == udp(l.protocol)
            });
            if !frees {
                let socket = bind_listener(addr, l).map_err(|e| {
                    prepared
                        .loaded
                        .source
                        .error(&l.bind, format!("listeners.{name}.bind: cannot bind {addr}: {e}"))
                        .to_string()
                })?;
                sockets.insert(name.clone(), socket);
            }
        }

        // Commit.
        let mut summary = ReloadSummary {
            plugins_loaded: prepared
                .plugins
                .iter()
                .filter(|(n, p)| previous.plugins.get(*n).is_none_or(|old| !Arc::ptr_eq(old, p)))
                .map(|(n, _)| n.clone())
                .collect(),
            pools: prepared.pools.keys().cloned().collect(),
            ..Default::default()
        };
        for name in &closing {
            if let Some(l) = running.listeners.remove(name) {
                l.stop.cancel();
                summary.listeners_removed.push(name.clone());
            }
        }
        let background = self.stop.child_token();
        self.start_background(&prepared, &background).await;
        running.background.cancel();
        running.background = background;
        let http_pools = Arc::new(prepared.http_pools());
        for (name, l) in &cfg.listeners {
            if let Some(r) = running.listeners.get(name) {
                match &r.service {
                    Service::Tcp(s) => s.routes.store(Arc::new(Self::tcp_routes(&prepared, name, l))),
                    Service::Http(s) => s.routes.store(Arc::new(Self::http_routes(&prepared, &http_pools, name, l))),
                    Service::Udp(s) => s.routes.store(Arc::new(Self::udp_routes(&prepared, l))),
                }
                continue;
            }
            let socket = match sockets.remove(name) {
                Some(s) => s,
                None => {
                    let addr: SocketAddr =
                        l.bind.get_ref().parse().map_err(|e| format!("listeners.{name}.bind: {e}"))?;
                    bind_soon(addr, l).await.map_err(|e| format!("listeners.{name}.bind: cannot bind {addr}: {e}"))?
                }
            };
            let opened = self.open(&prepared, &http_pools, name, l, socket).map_err(|e| e.to_string())?;
            running.listeners.insert(name.clone(), opened);
            summary.listeners_added.push(name.clone());
        }
        let file = previous.file.clone();
        self.snapshot.store(Arc::new(Self::snapshot_of(&prepared, &running.listeners, file)));
        tracing::info!(?summary, "config reloaded");
        Ok(summary)
    }

    /// Reload from the file the config came from (SIGHUP).
    pub async fn reload_file(&self) -> Result<ReloadSummary, String> {
        let Some(file) = self.snapshot.load().file.clone() else {
            return Err("weir was started from a config text, not a file: send the new config instead".into());
        };
        let source = crate::config::Source::read(&file).map_err(|e| e.to_string())?;
        self.reload(source).await
    }

    /// Edit the config in force as a TOML document and apply the result
    /// like a reload (the admin API's listener and weight changes). The
    /// file is not written: `GET /config` shows the text in force, and the
    /// next reload from the file replaces it.
    pub async fn edit(
        &self,
        change: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), String>,
    ) -> Result<ReloadSummary, String> {
        let current = self.snapshot.load_full();
        let mut doc: toml_edit::DocumentMut =
            current.source.text.parse().map_err(|e| format!("config in force: {e}"))?;
        change(&mut doc)?;
        let origin = format!("{} (edited through the admin API)", current.source.origin);
        self.reload(crate::config::Source { origin, text: doc.to_string() }).await
    }
}

impl Server {
    /// Load plugins, build pools, bind every listener and start serving.
    pub async fn start(loaded: Loaded, runtime: Arc<Runtime>) -> anyhow::Result<Self> {
        let grace = loaded.config.runtime.shutdown_grace.0;
        let watch = loaded.config.runtime.watch_config;
        let admin_config = loaded.config.admin.clone();
        let prepared = Prepared::load(loaded, &runtime)?;
        let stop = CancellationToken::new();
        let core = ServerCore {
            runtime,
            challenges: Arc::default(),
            snapshot: ArcSwap::from_pointee(Snapshot {
                plugins: BTreeMap::new(),
                pools: BTreeMap::new(),
                listeners: BTreeMap::new(),
                source: prepared.loaded.source.clone(),
                file: None,
            }),
            running: tokio::sync::Mutex::new(Running { listeners: BTreeMap::new(), background: stop.child_token() }),
            stop: stop.clone(),
            tracker: TaskTracker::new(),
        };
        {
            let mut running = core.running.lock().await;
            let background = running.background.clone();
            core.start_background(&prepared, &background).await;
            let http_pools = Arc::new(prepared.http_pools());
            for (name, l) in &prepared.loaded.config.listeners {
                let addr: SocketAddr = l.bind.get_ref().parse()?;
                let socket = bind_listener(addr, l).map_err(|e| {
                    prepared.loaded.source.error(&l.bind, format!("listeners.{name}.bind: cannot bind {addr}: {e}"))
                })?;
                let opened = core.open(&prepared, &http_pools, name, l, socket)?;
                running.listeners.insert(name.clone(), opened);
            }
            let file = std::fs::canonicalize(&prepared.loaded.source.origin).ok().filter(|f| f.is_file());
            core.snapshot.store(Arc::new(ServerCore::snapshot_of(&prepared, &running.listeners, file)));
        }
        let core = Arc::new(core);
        let admin = match &admin_config {
            Some(a) => {
                let addr: SocketAddr = a.bind.get_ref().parse()?;
                let listener = bind(addr, 128).map_err(|e| {
                    prepared.loaded.source.error(&a.bind, format!("admin.bind: cannot bind {addr}: {e}"))
                })?;
                let local = listener.local_addr()?;
                let control = Arc::new(admin::Control {
                    core: core.clone(),
                    started: std::time::Instant::now(),
                    token: a.token.clone(),
                    metrics: crate::metrics::registry(core.clone()),
                });
                tokio::spawn(admin::serve(listener, control, stop.clone()));
                tracing::info!(%local, "admin API listening");
                Some(local)
            }
            None => None,
        };
        if watch {
            // Compare with the text loaded, not with the file's state now,
            // which may already have changed.
            let loaded_text = core.snapshot().source.text.clone();
            tokio::spawn(watch_config(Arc::downgrade(&core), loaded_text, stop.clone()));
        }
        Ok(Self { core, admin, grace })
    }

    /// The shared core (reload, snapshot).
    pub fn core(&self) -> &Arc<ServerCore> {
        &self.core
    }

    /// Apply a new config text (see [`ServerCore::reload`]).
    pub async fn reload(&self, source: crate::config::Source) -> Result<ReloadSummary, String> {
        self.core.reload(source).await
    }

    /// The bound address of a listener.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.core.snapshot().listeners.get(name).map(|l| l.address)
    }

    /// The bound address of the admin API, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// A plugin instance by name.
    pub fn plugin(&self, name: &str) -> Option<Arc<PluginInstance>> {
        self.core.snapshot().plugins.get(name).cloned()
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.core.snapshot().pools.get(name).cloned()
    }

    /// Connections being proxied now.
    pub fn connections(&self) -> usize {
        self.core.tracker.len()
    }

    /// Stop accepting, then let in-flight connections finish for up to the
    /// configured grace period. Returns how many were cut off.
    pub async fn shutdown(self) -> usize {
        self.core.stop.cancel();
        self.core.tracker.close();
        let open = self.core.tracker.len();
        if open > 0 {
            tracing::info!(open, grace = ?self.grace, "draining connections");
        }
        match tokio::time::timeout(self.grace, self.core.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.core.tracker.len();
                tracing::warn!(left, "grace period over; closing remaining connections");
                left
            }
        }
    }
}

/// Reload whenever the config file's text differs from the text last
/// loaded from it (checked every second), for as long as the server runs.
/// Edits made through the admin API do not count as changes of the file.
async fn watch_config(core: std::sync::Weak<ServerCore>, mut last: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(core) = core.upgrade() else { return };
        let Some(file) = core.snapshot().file.clone() else {
            tracing::warn!("watch_config: the config did not come from a file; not watching");
            return;
        };
        let Ok(now) = tokio::fs::read_to_string(&file).await else { continue };
        if now != last {
            last = now;
            match core.reload_file().await {
                Ok(summary) => tracing::info!(?summary, "config file changed: reloaded"),
                Err(e) => tracing::error!("config file changed: not applied, the old one stays: {e}"),
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

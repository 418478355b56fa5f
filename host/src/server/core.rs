//! The shared core of a running weir: its listeners and the services behind
//! them, the background loops of its pools, reloads applied whole or not at
//! all, and the [`Snapshot`] of what runs.

use super::{Prepared, ReloadSummary, Snapshot};
use crate::config::{Loaded, Protocol};
use crate::discovery::{self, DiscoverySettings};
use crate::handover::{Inherited, Passed, Role};
use crate::health::{self, CheckSettings};
use crate::l4::{self, TcpService};
use crate::l7::{self, HttpPool, HttpService, HttpSettings};
use crate::listener::{Cap, ConnectionCaps};
use crate::overload::{Limits, Overload};
use crate::plugin::Runtime;
use crate::tls::ServerTls;
use crate::udp::{self, UdpService};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toml::Spanned;

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

    /// A second descriptor of the same socket, for a successor process.
    fn dup(&self) -> std::io::Result<OwnedFd> {
        let socket = match self {
            Bound::Tcp(s) => socket2::SockRef::from(s).try_clone()?,
            Bound::Udp(s) => socket2::SockRef::from(s).try_clone()?,
        };
        Ok(socket.into())
    }

    /// A socket a previous weir process passed (see `handover`), for a
    /// listener of this protocol; a TCP socket takes this listener's
    /// backlog.
    fn adopt(fd: OwnedFd, l: &crate::config::Listener) -> std::io::Result<Bound> {
        let socket = socket2::Socket::from(fd);
        socket.set_nonblocking(true)?;
        let udp = l.protocol == Protocol::Udp;
        let kind = socket.r#type()?;
        if kind != if udp { socket2::Type::DGRAM } else { socket2::Type::STREAM } {
            return Err(std::io::Error::other("the passed socket is not of this listener's kind"));
        }
        if udp {
            return Ok(Bound::Udp(tokio::net::UdpSocket::from_std(socket.into())?));
        }
        socket.listen(l.backlog.min(i32::MAX as u32) as i32)?;
        Ok(Bound::Tcp(tokio::net::TcpListener::from_std(socket.into())?))
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
    /// A second descriptor of the listening socket, to pass to a successor
    /// process; closed when the listener closes or the server stops.
    socket: Option<OwnedFd>,
}

/// The mutable part of a running server, changed only by a reload.
struct Running {
    listeners: BTreeMap<String, RunningListener>,
    /// Stops the health, discovery and throughput loops of the current pools.
    background: CancellationToken,
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
    /// `runtime.max_connections`, shared by every TCP-family listener.
    process_cap: Arc<Cap>,
    /// The admin API's socket (its `bind` and a second descriptor), passed
    /// to a successor with the listeners'.
    admin_socket: parking_lot::Mutex<Option<(String, OwnedFd)>>,
    /// Set once a successor process took over: this one drains. HTTP/1
    /// connections then close after their next response (`connection:
    /// close`) instead of at once, so a client never sees a kept-alive
    /// connection close under a request it just sent.
    retiring: Arc<AtomicBool>,
    /// Cancelled when a successor asks this process to stop.
    retire: CancellationToken,
    /// Load shedding (`runtime.shed_*`), shared by every listener.
    overload: Arc<Overload>,
    /// How config reloads went (metrics).
    reloads: ReloadStats,
    /// Pools whose first round of health checks has not finished since
    /// the start (`GET /ready` waits for them).
    unchecked: Arc<parking_lot::Mutex<std::collections::BTreeSet<String>>>,
}

/// Config reloads counted, for the metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads applied.
    pub applied: AtomicU64,
    /// Reloads refused (the config in force stayed).
    pub refused: AtomicU64,
    /// When the config in force was applied (start or reload), Unix seconds.
    pub applied_at: AtomicU64,
    /// Whether the last reload was applied (true before any).
    pub last_applied: AtomicBool,
}

impl ReloadStats {
    fn record(&self, applied: bool) {
        if applied {
            self.applied.fetch_add(1, Ordering::Relaxed);
            self.applied_at.store(crate::clock::unix_secs(), Ordering::Relaxed);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.last_applied.store(applied, Ordering::Relaxed);
    }
}

pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Stamp loop `i`'s tick every `overload::TICK` while loop lag is watched.
async fn tick(overload: Arc<Overload>, i: usize, stop: CancellationToken) {
    let mut every = tokio::time::interval(crate::overload::TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while overload.limits().loop_lag.is_some() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => overload.tick(i),
        }
    }
}

/// Sample the resident memory and the plugins' call time for load shedding
/// every `overload::SAMPLE`, for as long as the server runs.
async fn monitor(core: std::sync::Weak<ServerCore>, stop: CancellationToken) {
    let mut every = tokio::time::interval(crate::overload::SAMPLE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let Some(core) = core.upgrade() else { return };
        let snapshot = core.snapshot();
        let (calls, secs) = snapshot.plugins.values().fold((0, 0.0), |(n, s), p| {
            let time = &p.stats().call_time;
            (n + time.count(), s + time.sum_secs())
        });
        core.overload.sample(crate::overload::resident_bytes(), calls, secs);
    }
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
    /// Bind every listener of `prepared`, start serving them and the pools'
    /// background loops (health checks, discovery, ACME).
    /// Listeners whose socket is in `inherited` (passed by a previous
    /// process) open on it instead of binding.
    pub async fn start(
        prepared: &Prepared,
        runtime: Arc<Runtime>,
        inherited: &mut Inherited,
    ) -> anyhow::Result<Arc<Self>> {
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
            stop,
            tracker: TaskTracker::new(),
            process_cap: Arc::default(),
            admin_socket: Default::default(),
            retiring: Arc::default(),
            retire: CancellationToken::new(),
            overload: Arc::new(Overload::new(crate::workers::count())),
            reloads: ReloadStats::default(),
            unchecked: Arc::default(),
        };
        core.reloads.applied_at.store(crate::clock::unix_secs(), Ordering::Relaxed);
        core.reloads.last_applied.store(true, Ordering::Relaxed);
        core.process_cap.set(Self::process_max(prepared));
        core.set_overload(prepared);
        Self::access_sink(prepared)?.install();
        {
            let mut running = core.running.lock().await;
            let background = running.background.clone();
            core.unchecked.lock().extend(
                prepared.loaded.config.pools.iter().filter(|(_, p)| p.health.is_some()).map(|(n, _)| n.clone()),
            );
            core.start_background(prepared, &background).await;
            let http_pools = Arc::new(prepared.http_pools());
            for (name, l) in &prepared.loaded.config.listeners {
                let addr: SocketAddr = l.bind.get_ref().parse()?;
                let socket = match inherited.listener(name, l.bind.get_ref(), l.protocol == Protocol::Udp) {
                    Some(fd) => Bound::adopt(fd, l),
                    None => bind_listener(addr, l),
                }
                .map_err(|e| {
                    prepared.loaded.source.error(&l.bind, format!("listeners.{name}.bind: cannot bind {addr}: {e}"))
                })?;
                let opened = core.open(prepared, &http_pools, name, l, socket)?;
                running.listeners.insert(name.clone(), opened);
            }
            let file = std::fs::canonicalize(&prepared.loaded.source.origin).ok().filter(|f| f.is_file());
            core.snapshot.store(Arc::new(ServerCore::snapshot_of(prepared, &running.listeners, file)));
        }
        let core = Arc::new(core);
        tokio::spawn(monitor(Arc::downgrade(&core), core.stop.child_token()));
        Ok(core)
    }

    /// Cancelled when the server stops.
    pub fn stopped(&self) -> CancellationToken {
        self.stop.child_token()
    }

    /// Keep a second descriptor of the admin API's socket (bound on `bind`
    /// as the config wrote it), to pass to a successor.
    pub fn keep_admin_socket(&self, bind: &str, socket: &tokio::net::TcpListener) -> std::io::Result<()> {
        let dup = socket2::SockRef::from(socket).try_clone()?;
        *self.admin_socket.lock() = Some((bind.to_string(), dup.into()));
        Ok(())
    }

    /// A descriptor of every listening socket (listeners and admin API), for
    /// a successor process (see `handover`).
    pub async fn handover_sockets(&self) -> std::io::Result<Vec<(Passed, OwnedFd)>> {
        let running = self.running.lock().await;
        let mut sockets = Vec::new();
        for (name, l) in &running.listeners {
            let Some(socket) = &l.socket else { continue };
            let passed = Passed {
                role: Role::Listener,
                name: name.clone(),
                bind: l.bind.clone(),
                udp: l.protocol == Protocol::Udp,
            };
            sockets.push((passed, socket.try_clone()?));
        }
        if let Some((bind, socket)) = &*self.admin_socket.lock() {
            let passed = Passed { role: Role::Admin, name: String::new(), bind: bind.clone(), udp: false };
            sockets.push((passed, socket.try_clone()?));
        }
        Ok(sockets)
    }

    /// A successor serves the listening sockets now: drain, letting HTTP/1
    /// clients finish their next request, and stop (whoever waits on
    /// [`Self::retired`] runs the shutdown).
    pub fn retire(&self) {
        self.retiring.store(true, Ordering::Relaxed);
        self.retire.cancel();
    }

    /// The server's load shedding.
    pub fn overload(&self) -> &Arc<Overload> {
        &self.overload
    }

    /// How config reloads went.
    pub fn reloads(&self) -> &ReloadStats {
        &self.reloads
    }

    /// Whether this process should get new traffic (`GET /ready`): every
    /// listener is bound (it is, once the core exists), discovery answered
    /// (before the listeners opened), each pool's first round of health
    /// checks is done, and it is not draining. The error says what it
    /// waits for.
    pub fn readiness(&self) -> Result<String, String> {
        if self.is_retiring() || self.stop.is_cancelled() {
            return Err("draining: a successor or a shutdown took over".into());
        }
        let unchecked = self.unchecked.lock();
        if !unchecked.is_empty() {
            let pools: Vec<&str> = unchecked.iter().map(String::as_str).collect();
            return Err(format!("waiting for the first health-check round of pools {}", pools.join(", ")));
        }
        Ok(format!("ready: {} listeners", self.snapshot().listeners.len()))
    }

    /// Apply `runtime.shed_*`, starting the loops' tickers when loop lag is
    /// watched from now on.
    fn set_overload(&self, prepared: &Prepared) {
        let r = &prepared.loaded.config.runtime;
        let limits = Limits {
            loop_lag: r.shed_loop_lag.as_ref().map(|d| d.get_ref().0),
            plugin_time: r.shed_plugin_time.as_ref().map(|d| d.get_ref().0),
            memory: r.shed_memory.as_ref().map(|m| m.get_ref().0),
        };
        if self.overload.set(limits) {
            let stop = self.stop.child_token();
            let overload = self.overload.clone();
            crate::workers::spawn_on_each(move |i| tick(overload.clone(), i, stop.clone()));
        }
    }

    /// Whether [`Self::retire`] was called.
    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Relaxed)
    }

    /// Resolves once [`Self::retire`] was called.
    pub fn retired(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.retire.clone().cancelled_owned()
    }

    /// Connections (and UDP sessions) being proxied now.
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }

    /// Stop accepting, then let in-flight connections finish for up to
    /// `grace`. Returns how many were cut off.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.stop.cancel();
        // The listening sockets close now (a successor keeps its own
        // descriptors of them).
        for l in self.running.lock().await.listeners.values_mut() {
            l.socket = None;
        }
        self.admin_socket.lock().take();
        self.tracker.close();
        let open = self.tracker.len();
        if open > 0 {
            tracing::info!(open, ?grace, "draining connections");
        }
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.tracker.len();
                tracing::warn!(left, "grace period over; closing remaining connections");
                left
            }
        }
    }

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
                let first_round: Option<Box<dyn FnOnce() + Send>> = self.unchecked.lock().contains(name).then(|| {
                    let (unchecked, name) = (self.unchecked.clone(), name.clone());
                    Box::new(move || {
                        unchecked.lock().remove(&name);
                    }) as Box<dyn FnOnce() + Send>
                });
                health::spawn(pool.clone(), checker, s, stop.clone(), first_round);
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

    /// The listener's PROXY protocol policy, when it accepts headers.
    fn proxy_accept(l: &crate::config::Listener) -> Option<Arc<crate::proxy_protocol::ProxyAccept>> {
        let networks = l.proxy_protocol_from.iter().map(|n| n.get_ref().as_str());
        (*l.proxy_protocol.get_ref()).then(|| crate::proxy_protocol::ProxyAccept::new(networks, l.header_timeout.0))
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
            proxy_accept: Self::proxy_accept(l),
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
            proxy_accept: Self::proxy_accept(l),
            settings: HttpSettings {
                header_timeout: l.header_timeout.0,
                max_header_size: l.max_header_size.0 as usize,
                x_forwarded: l.x_forwarded,
                forwarded: l.forwarded,
                via: l.via,
                https: l.protocol == Protocol::Https,
                max_concurrent_streams: *l.max_concurrent_streams.get_ref(),
                idle_timeout: l.idle_timeout.0,
            },
            tls: Self::listener_tls(prepared, name, l),
        }
    }

    /// Where the access log goes (`[access_log]`), its file opened.
    fn access_sink(prepared: &Prepared) -> Result<Arc<crate::access_log::Sink>, crate::config::ConfigError> {
        let (loaded, table) = (&prepared.loaded, &prepared.loaded.config.access_log);
        let file = table.file.as_ref();
        crate::access_log::Sink::new(file.map(|f| f.get_ref().as_str()), table.format, loaded.base_dir()).map_err(|e| {
            let file = file.expect("only a file fails to open");
            loaded.source.error(file, format!("access_log.file: cannot open `{}` for appending: {e}", file.get_ref()))
        })
    }

    /// A new listener's connection caps.
    fn caps(&self, l: &crate::config::Listener, refusal: &'static [u8]) -> Arc<ConnectionCaps> {
        let shed = if refusal.is_empty() { b"" as &[u8] } else { l7::OVERLOADED };
        let caps = ConnectionCaps::new(self.process_cap.clone(), self.overload.clone(), refusal, shed);
        Self::set_caps(&caps, l);
        caps
    }

    fn set_caps(caps: &ConnectionCaps, l: &crate::config::Listener) {
        let cap = |v: &Option<Spanned<u64>>| v.as_ref().map(|v| *v.get_ref());
        caps.set(cap(&l.max_connections), cap(&l.max_connections_per_client));
    }

    fn process_max(prepared: &Prepared) -> Option<u64> {
        prepared.loaded.config.runtime.max_connections.as_ref().map(|m| *m.get_ref())
    }

    /// Connections open now on TCP, TLS and HTTP listeners.
    pub fn open_connections(&self) -> usize {
        self.process_cap.open()
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
        let dup = socket.dup()?;
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
                    caps: self.caps(l, b""),
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
                    caps: self.caps(l, if l.protocol == Protocol::Http { l7::TOO_MANY_CONNECTIONS } else { b"" }),
                    tracker: self.tracker.clone(),
                    retiring: self.retiring.clone(),
                });
                tokio::spawn(l7::serve(socket, service.clone(), stop.clone(), self.tracker.clone()));
                Service::Http(service)
            }
        };
        tracing::info!(listener = %name, %local, protocol = ?l.protocol, pool = %l.pool.get_ref(), "listening");
        Ok(RunningListener {
            bind: l.bind.get_ref().clone(),
            protocol: l.protocol,
            addr: local,
            service,
            stop,
            socket: Some(dup),
        })
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
                    let info = super::ListenerInfo {
                        address: l.addr,
                        protocol: l.protocol.name(),
                        pool: cfg.listeners[name].pool.get_ref().clone(),
                        stats: match &l.service {
                            Service::Tcp(s) => s.stats.clone(),
                            Service::Http(s) => s.stats.clone(),
                            Service::Udp(s) => s.stats.clone(),
                        },
                        caps: match &l.service {
                            Service::Tcp(s) => Some(s.caps.clone()),
                            Service::Http(s) => Some(s.caps.clone()),
                            Service::Udp(_) => None,
                        },
                        tls: prepared.listener_tls.get(name).cloned(),
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
    /// nothing, says where the config is wrong, and is logged with where
    /// the config came from (SIGHUP, the admin API, the file watch).
    pub async fn reload(&self, source: crate::config::Source) -> Result<ReloadSummary, String> {
        let origin = source.origin.clone();
        let result = self.apply(source).await;
        self.reloads.record(result.is_ok());
        if let Err(e) = &result {
            tracing::error!("{origin}: config not applied, the old one stays: {e}");
        }
        result
    }

    async fn apply(&self, source: crate::config::Source) -> Result<ReloadSummary, String> {
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

        let access_sink = Self::access_sink(&prepared).map_err(|e| e.to_string())?;

        // Commit.
        access_sink.install();
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
        self.process_cap.set(Self::process_max(&prepared));
        self.set_overload(&prepared);
        let background = self.stop.child_token();
        // A pool that lost its checks (or is gone) is waited for no more.
        self.unchecked.lock().retain(|n| cfg.pools.get(n).is_some_and(|p| p.health.is_some()));
        self.start_background(&prepared, &background).await;
        running.background.cancel();
        running.background = background;
        let http_pools = Arc::new(prepared.http_pools());
        for (name, l) in &cfg.listeners {
            if let Some(r) = running.listeners.get(name) {
                match &r.service {
                    Service::Tcp(s) => {
                        s.routes.store(Arc::new(Self::tcp_routes(&prepared, name, l)));
                        Self::set_caps(&s.caps, l);
                    }
                    Service::Http(s) => {
                        s.routes.store(Arc::new(Self::http_routes(&prepared, &http_pools, name, l)));
                        Self::set_caps(&s.caps, l);
                    }
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
        match crate::config::Source::read(&file) {
            Ok(source) => self.reload(source).await,
            Err(e) => {
                self.reloads.record(false);
                tracing::error!("{}: config not applied, the old one stays: {e}", file.display());
                Err(e.to_string())
            }
        }
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

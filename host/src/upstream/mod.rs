//! Pools and backends with the live numbers the host keeps for them.

use crate::plugin::bindings::types;
use crate::plugin::PluginInstance;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Live counters of one backend, kept by the host.
#[derive(Debug, Default)]
pub struct BackendStats {
    active: AtomicU32,
    total: AtomicU64,
    /// Bytes received from the backend.
    rx: AtomicU64,
    /// Bytes sent to the backend.
    tx: AtomicU64,
    /// Connect failures.
    failures: AtomicU64,
    latency_us: AtomicU32,
    bytes_per_sec: AtomicU64,
    /// HTTP responses by status class: 1xx .. 5xx.
    responses: [AtomicU64; 5],
}

impl BackendStats {
    /// Connections (or requests) open now.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    /// Connections (or requests) ever sent.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    /// Bytes received from the backend.
    pub fn rx(&self) -> u64 {
        self.rx.load(Ordering::Relaxed)
    }
    /// Bytes sent to the backend.
    pub fn tx(&self) -> u64 {
        self.tx.load(Ordering::Relaxed)
    }
    /// Failed connection attempts.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Recent connect latency, microseconds (EWMA).
    pub fn latency_us(&self) -> u32 {
        self.latency_us.load(Ordering::Relaxed)
    }
    /// Recent rx+tx bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec.load(Ordering::Relaxed)
    }
    /// Count bytes received from the backend.
    pub fn add_rx(&self, n: u64) {
        self.rx.fetch_add(n, Ordering::Relaxed);
    }
    /// Count bytes sent to the backend.
    pub fn add_tx(&self, n: u64) {
        self.tx.fetch_add(n, Ordering::Relaxed);
    }
    /// Record a failed connection attempt.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
    /// Record a latency sample (connect on L4, response head on L7) as a
    /// peak-EWMA: a slower sample is taken at once, faster ones decay the
    /// value by 1/8, so a backend that turns slow is noticed immediately.
    pub fn record_latency(&self, d: Duration) {
        let sample = d.as_micros().min(u32::MAX as u128) as u32;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if sample >= old { sample } else { old - old / 8 + sample / 8 };
        self.latency_us.store(new, Ordering::Relaxed);
    }

    /// Fold the bytes moved since the last call, `elapsed` ago, into the
    /// bytes-per-second average (EWMA with weight 1/2 per tick).
    pub fn tick_throughput(&self, last_total: &mut u64, elapsed: Duration) {
        let total = self.rx() + self.tx();
        let rate = ((total - *last_total) as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
        *last_total = total;
        let old = self.bytes_per_sec.load(Ordering::Relaxed);
        self.bytes_per_sec.store(old / 2 + rate / 2, Ordering::Relaxed);
    }
    /// Record an HTTP response status.
    pub fn record_status(&self, status: u16) {
        if let Some(c) = self.responses.get((status / 100).wrapping_sub(1) as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// HTTP responses with status `class`xx (1 to 5).
    pub fn responses(&self, class: u16) -> u64 {
        self.responses.get((class as usize).wrapping_sub(1)).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    /// Mark a connection as open; the guard closes it.
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

/// Decrements a backend's active count when dropped.
pub struct ActiveGuard(Arc<BackendStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One backend of a pool.
#[derive(Debug)]
pub struct Backend {
    /// Position in the pool.
    pub slot: u32,
    /// `host:port`.
    pub address: String,
    /// Relative weight.
    pub weight: u32,
    /// Priority group (lower preferred).
    pub priority: u32,
    /// Labels.
    pub tags: Vec<String>,
    /// Live counters.
    pub stats: Arc<BackendStats>,
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
}

impl Backend {
    /// Whether the backend may receive new work.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Static backend data for building a pool.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// `host:port`.
    pub address: String,
    /// Relative weight.
    pub weight: u32,
    /// Priority group.
    pub priority: u32,
    /// Labels.
    pub tags: Vec<String>,
}

/// How a pool connects to its backends and reacts to failures.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Backend connect timeout.
    pub connect_timeout: Duration,
    /// Backends tried per connection, each a different one.
    pub max_tries: u32,
    /// Consecutive failed connects that take a backend out of rotation (0: never).
    pub max_fails: u32,
    /// How long such a backend stays out before it is tried again.
    pub fail_timeout: Duration,
    /// HTTP: time a backend has to send its response head.
    pub response_timeout: Duration,
    /// HTTP: the balancer's hash key when the route gives none.
    pub hash_key: Option<HashKey>,
    /// HTTP: statuses after which an idempotent, bodiless request is retried.
    pub retry_on: Vec<u16>,
    /// HTTP: retries allowed as a share of requests.
    pub retry_budget: f64,
    /// When no backend is healthy, use them all rather than none (Envoy's panic mode).
    pub panic: bool,
}

/// Retries a pool may still make: `budget × requests + 10` in all, so that a
/// failing pool is not hammered with retries on top of its traffic.
#[derive(Debug, Default)]
pub struct RetryBudget {
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// Count a request.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Take a retry if the budget allows one.
    pub fn try_retry(&self, budget: f64) -> bool {
        let allowed = (self.requests.load(Ordering::Relaxed) as f64 * budget) as u64 + 10;
        self.retries.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| (r < allowed).then_some(r + 1)).is_ok()
    }

    /// Retries made so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

/// Where an HTTP request's hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// The request path.
    Path,
    /// A header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
}

impl HashKey {
    /// Parse `client-ip`, `path`, `header:NAME` or `cookie:NAME`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once(':') {
            None if s == "client-ip" => Some(Self::ClientIp),
            None if s == "path" => Some(Self::Path),
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes()).ok().map(Self::Header),
            Some(("cookie", name)) if !name.trim().is_empty() => Some(Self::Cookie(name.trim().to_string())),
            _ => None,
        }
    }

    /// The key of a request, if it has one.
    pub fn extract(&self, head: &http::request::Parts, peer: std::net::SocketAddr) -> Option<String> {
        match self {
            Self::ClientIp => Some(peer.ip().to_string()),
            Self::Path => Some(head.uri.path().to_string()),
            Self::Header(name) => head.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned),
            Self::Cookie(name) => head
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_owned()),
        }
    }
}

/// A named set of backends with one balancer.
pub struct Pool {
    /// Process-unique id, handed to balancers.
    pub id: u32,
    /// Name from the config.
    pub name: String,
    /// Version of the backend list; balancers get `set-backends` when it changes.
    pub version: u64,
    /// The backends, indexed by slot.
    pub backends: Vec<Arc<Backend>>,
    /// The backend list as balancers receive it.
    pub wit_backends: Vec<types::Backend>,
    /// The balancer plugin.
    pub balancer: Arc<PluginInstance>,
    /// Connection and failure settings.
    pub settings: PoolSettings,
    /// HTTP retry accounting.
    pub retries: RetryBudget,
    healthy: ArcSwap<Vec<u32>>,
    fallback_next: AtomicUsize,
    picks: AtomicU64,
}

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

impl Pool {
    /// A pool with every backend healthy.
    pub fn new(name: &str, specs: Vec<BackendSpec>, balancer: Arc<PluginInstance>, settings: PoolSettings) -> Self {
        let backends: Vec<Arc<Backend>> = specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                Arc::new(Backend {
                    slot: i as u32,
                    address: s.address,
                    weight: s.weight,
                    priority: s.priority,
                    tags: s.tags,
                    stats: Arc::default(),
                    healthy: AtomicBool::new(true),
                    consecutive_failures: AtomicU32::new(0),
                })
            })
            .collect();
        let wit_backends = backends
            .iter()
            .map(|b| types::Backend {
                slot: b.slot,
                address: b.address.clone(),
                weight: b.weight,
                priority: b.priority,
                tags: b.tags.clone(),
            })
            .collect();
        let healthy = (0..backends.len() as u32).collect();
        Self {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            version: 1,
            backends,
            wit_backends,
            balancer,
            settings,
            retries: RetryBudget::default(),
            healthy: ArcSwap::from_pointee(healthy),
            fallback_next: AtomicUsize::new(0),
            picks: AtomicU64::new(0),
        }
    }

    /// Mark a backend healthy or not; returns whether that changed anything.
    pub fn set_healthy(&self, slot: u32, healthy: bool) -> bool {
        let Some(b) = self.backends.get(slot as usize) else {
            return false;
        };
        if b.healthy.swap(healthy, Ordering::Relaxed) == healthy {
            return false;
        }
        let list: Vec<u32> = self.backends.iter().filter(|b| b.is_healthy()).map(|b| b.slot).collect();
        self.healthy.store(Arc::new(list));
        true
    }

    /// Slots eligible for a new attempt: healthy and not in `tried`.
    /// Without exclusions this is the shared healthy list, not a copy.
    pub fn eligible(&self, tried: &[u32]) -> Arc<Vec<u32>> {
        let mut healthy = self.healthy.load_full();
        if healthy.is_empty() && self.settings.panic {
            healthy = Arc::new((0..self.backends.len() as u32).collect());
        }
        if tried.is_empty() {
            return healthy;
        }
        Arc::new(healthy.iter().copied().filter(|s| !tried.contains(s)).collect())
    }

    /// Keep every backend's bytes-per-second current, once a second, for as
    /// long as the pool lives.
    pub fn track_throughput(self: &Arc<Self>) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut totals: Vec<u64> = Vec::new();
            let mut last = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                totals.resize(pool.backends.len(), 0);
                let now = tokio::time::Instant::now();
                for (b, total) in pool.backends.iter().zip(totals.iter_mut()) {
                    b.stats.tick_throughput(total, now - last);
                }
                last = now;
            }
        });
    }

    /// The pool's pick sequence: 0, 1, 2, ... across every thread.
    pub fn next_pick(&self) -> u64 {
        self.picks.fetch_add(1, Ordering::Relaxed)
    }

    /// A connect to `slot` succeeded.
    pub fn report_success(&self, slot: u32) {
        self.backends[slot as usize].consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A connect to `slot` failed. After `max_fails` in a row the backend
    /// leaves rotation for `fail_timeout`, then is tried again (nginx's
    /// `max_fails`/`fail_timeout`).
    pub fn report_failure(self: &Arc<Self>, slot: u32) {
        let backend = &self.backends[slot as usize];
        backend.stats.record_failure();
        let max = self.settings.max_fails;
        let failures = backend.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if max == 0 || failures < max || !self.set_healthy(slot, false) {
            return;
        }
        let wait = self.settings.fail_timeout;
        tracing::warn!(pool = %self.name, backend = %backend.address, failures, "out of rotation for {wait:?}");
        let pool = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            pool.backends[slot as usize].consecutive_failures.store(0, Ordering::Relaxed);
            if pool.set_healthy(slot, true) {
                tracing::info!(pool = %pool.name, backend = %pool.backends[slot as usize].address, "back in rotation");
            }
        });
    }

    /// The native default used when the balancer plugin fails open: round-robin.
    pub fn fallback_pick(&self, eligible: &[u32]) -> Option<u32> {
        if eligible.is_empty() {
            return None;
        }
        let n = self.fallback_next.fetch_add(1, Ordering::Relaxed);
        Some(eligible[n % eligible.len()])
    }
}

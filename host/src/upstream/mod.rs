//! Pools and backends with the live numbers the host keeps for them.
//!
//! A pool's backends are a [`Members`] list behind an atomic pointer: a
//! connection or request works on one version from pick to finish, while
//! discovery or a reload swaps in the next. A backend that stays keeps its
//! counters and health across versions.

mod backend;

pub use backend::{ActiveGuard, Backend, BackendStats, Chunk, Ejection, Health, Live, LiveTable};

use crate::plugin::bindings::types;
use crate::plugin::{MemberView, PluginInstance};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    pub hash_key: Option<crate::config::HashKey>,
    /// HTTP: statuses after which an idempotent, bodiless request is retried.
    pub retry_on: Vec<u16>,
    /// HTTP: retries allowed as a share of requests.
    pub retry_budget: f64,
    /// When no backend is healthy, use them all rather than none (Envoy's panic mode).
    pub panic: bool,
    /// HTTP: response statuses counted as failed attempts for `max_fails`
    /// (besides `retry_on`, which always count).
    pub fail_on: Vec<u16>,
    /// Whether active checks run: they readmit ejected backends.
    pub active_checks: bool,
    /// Whether a new backend starts up (else down until checks pass).
    pub initial_up: bool,
    /// Connect to the backends over TLS.
    pub tls: Option<Arc<crate::tls::BackendTls>>,
    /// L4: start each backend connection with a PROXY protocol header.
    pub send_proxy: Option<crate::proxy_protocol::Version>,
}

impl Default for PoolSettings {
    /// The defaults of a `[pools.NAME]` table with nothing set.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            max_tries: 3,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            hash_key: None,
            retry_on: Vec::new(),
            retry_budget: 0.2,
            panic: false,
            fail_on: Vec::new(),
            active_checks: false,
            initial_up: true,
            tls: None,
            send_proxy: None,
        }
    }
}

impl From<crate::config::BackendTable> for BackendSpec {
    fn from(t: crate::config::BackendTable) -> Self {
        Self { address: t.address, weight: t.weight, priority: t.priority, tags: t.tags }
    }
}

impl PoolSettings {
    /// Whether a backend that is new to the pool starts in rotation.
    fn starts_up(&self) -> bool {
        self.initial_up || !self.active_checks
    }
}

/// Backends for `specs` (duplicate addresses dropped), in that order. One
/// whose address `previous` has keeps its counters and health; a new one
/// gets a cell of `live` and starts up or down as `up` says. Also says what
/// changed against `previous`.
fn build_backends(
    specs: Vec<BackendSpec>,
    previous: Option<&Members>,
    live: &Arc<LiveTable>,
    up: bool,
    owner: &std::sync::Weak<Pool>,
) -> (Vec<Arc<Backend>>, MemberChange) {
    let mut change = MemberChange::default();
    let mut seen = std::collections::HashSet::new();
    let mut backends = Vec::with_capacity(specs.len());
    for s in specs {
        if !seen.insert(s.address.clone()) {
            continue;
        }
        let slot = backends.len() as u32;
        let (stats, health) = match previous.and_then(|m| m.find(&s.address)) {
            Some(b) => {
                if b.slot != slot || b.weight != s.weight || b.priority != s.priority || b.tags != s.tags {
                    change.changed.push(s.address.clone());
                }
                (b.stats.clone(), b.health.clone())
            }
            None => {
                change.added.push(s.address.clone());
                (Arc::new(BackendStats::new(live)), Arc::new(Health::new(up)))
            }
        };
        *health.owner.lock() = owner.clone();
        backends.push(Arc::new(Backend {
            slot,
            authority: s.address.parse().ok(),
            address: s.address,
            weight: s.weight,
            priority: s.priority,
            tags: s.tags,
            stats,
            health,
        }));
    }
    if let Some(old) = previous {
        change.removed =
            old.backends.iter().filter(|b| !seen.contains(&b.address)).map(|b| b.address.clone()).collect();
    }
    (backends, change)
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

/// One version of a pool's backend list.
pub struct Members {
    /// The pool's id.
    pool: u32,
    /// The pool's pick sequence, shared by all its versions.
    picks: Arc<AtomicU64>,
    /// Version, unique within the pool; balancers get `set-backends` when it changes.
    pub version: u64,
    /// The backends, indexed by slot.
    pub backends: Vec<Arc<Backend>>,
    /// The backend list as balancers receive it.
    pub wit_backends: Vec<types::Backend>,
    /// Each slot's cell in the pool's live table.
    cells: Box<[u32]>,
    /// The first cell, when the cells are consecutive cells of one chunk in
    /// slot order (a pool's first member list, and most later ones): a
    /// gather over every backend then copies part of one array.
    run: Option<u32>,
    /// The pool's live table, which keeps those cells allocated.
    live_table: Arc<LiveTable>,
    /// Slots of the healthy backends, ascending.
    healthy: ArcSwap<Vec<u32>>,
}

impl Members {
    fn new(pool: (u32, &Arc<AtomicU64>), live: &Arc<LiveTable>, version: u64, backends: Vec<Arc<Backend>>) -> Self {
        let live = live.clone();
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
        let cells: Box<[u32]> = backends.iter().map(|b| b.stats.cell()).collect();
        let first = cells.first().copied().unwrap_or(0);
        let consecutive = cells.iter().enumerate().all(|(i, &c)| c as usize == first as usize + i);
        let run = (consecutive && live.run(first, cells.len()).is_some()).then_some(first);
        let members = Self {
            pool: pool.0,
            picks: pool.1.clone(),
            version,
            backends,
            wit_backends,
            cells,
            run,
            live_table: live,
            healthy: ArcSwap::default(),
        };
        members.refresh();
        members
    }

    fn refresh(&self) {
        self.healthy.store(Arc::new(self.backends.iter().filter(|b| b.is_healthy()).map(|b| b.slot).collect()));
    }

    /// Slots of the healthy backends, ascending.
    pub fn healthy(&self) -> Arc<Vec<u32>> {
        self.healthy.load_full()
    }

    /// The live numbers of `slot` (which must be in range).
    #[inline]
    pub fn live(&self, slot: u32) -> Live<'_> {
        self.live_table.cell(self.cells[slot as usize])
    }

    /// Active counts of the backends in `eligible` (ascending slots of this
    /// list), in that order.
    pub fn gather_active(&self, eligible: &[u32]) -> Vec<u32> {
        self.gather(eligible, |c| &c.active, |a| a.load(Ordering::Relaxed))
    }

    /// Latencies (µs) of the backends in `eligible`, in that order.
    pub fn gather_latency_us(&self, eligible: &[u32]) -> Vec<u32> {
        self.gather(eligible, |c| &c.latency_us, |a| a.load(Ordering::Relaxed))
    }

    /// Bytes/s of the backends in `eligible`, in that order.
    pub fn gather_bytes_per_sec(&self, eligible: &[u32]) -> Vec<u64> {
        self.gather(eligible, |c| &c.bytes_per_sec, |a| a.load(Ordering::Relaxed))
    }

    /// One column of the live table for `eligible`. With every backend
    /// eligible and the cells consecutive, a copy of part of one array.
    #[inline]
    fn gather<A, T>(&self, eligible: &[u32], column: impl Fn(&Chunk) -> &[A], load: impl Fn(&A) -> T) -> Vec<T> {
        if eligible.len() == self.cells.len() {
            if let Some((chunk, range)) = self.run.and_then(|first| self.live_table.run(first, self.cells.len())) {
                return column(chunk)[range].iter().map(load).collect();
            }
        }
        let one = |cell: u32| {
            let (chunk, i) = self.live_table.place(cell);
            load(&column(chunk)[i])
        };
        if eligible.len() == self.cells.len() {
            self.cells.iter().map(|&c| one(c)).collect()
        } else {
            eligible.iter().map(|&s| one(self.cells[s as usize])).collect()
        }
    }

    /// The backend with this address.
    pub fn find(&self, address: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.address == address)
    }
}

impl MemberView for Members {
    fn pool_id(&self) -> u32 {
        self.pool
    }

    fn next_sequence(&self) -> u64 {
        self.picks.fetch_add(1, Ordering::Relaxed)
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn backends(&self) -> &[types::Backend] {
        &self.wit_backends
    }

    fn active(&self, slot: u32) -> Option<u32> {
        ((slot as usize) < self.cells.len()).then(|| self.live(slot).active())
    }

    fn gather_active(&self, eligible: &[u32]) -> Vec<u32> {
        Members::gather_active(self, eligible)
    }

    fn gather_latency_us(&self, eligible: &[u32]) -> Vec<u32> {
        Members::gather_latency_us(self, eligible)
    }

    fn gather_bytes_per_sec(&self, eligible: &[u32]) -> Vec<u64> {
        Members::gather_bytes_per_sec(self, eligible)
    }
}

/// What a member-list change did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// Addresses that joined.
    pub added: Vec<String>,
    /// Addresses that left.
    pub removed: Vec<String>,
    /// Addresses that stayed with a new weight, priority, tags or slot.
    pub changed: Vec<String>,
}

impl MemberChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A pool's balancer: a plugin instance, or the host's own round-robin.
#[derive(Clone)]
pub enum Balancer {
    /// A balancer plugin instance.
    Plugin(Arc<PluginInstance>),
    /// `native:round-robin`: round-robin run by the host with no Wasm call,
    /// the one a failing-open plugin falls back to. The baseline the
    /// benchmarks measure the plugin pipeline against.
    NativeRoundRobin,
}

impl From<Arc<PluginInstance>> for Balancer {
    fn from(p: Arc<PluginInstance>) -> Self {
        Self::Plugin(p)
    }
}

impl Balancer {
    /// The instance name (or `native:round-robin`).
    pub fn name(&self) -> &str {
        match self {
            Self::Plugin(p) => p.name(),
            Self::NativeRoundRobin => crate::config::NATIVE_ROUND_ROBIN,
        }
    }

    /// The plugin instance, unless the balancer is native.
    pub fn plugin(&self) -> Option<&Arc<PluginInstance>> {
        match self {
            Self::Plugin(p) => Some(p),
            Self::NativeRoundRobin => None,
        }
    }
}

/// A named set of backends with one balancer.
pub struct Pool {
    /// Process-unique id, handed to balancers.
    pub id: u32,
    /// Name from the config.
    pub name: String,
    /// The balancer.
    pub balancer: Balancer,
    /// Connection and failure settings.
    pub settings: PoolSettings,
    /// HTTP retry accounting.
    pub retries: RetryBudget,
    members: ArcSwap<Members>,
    live: Arc<LiveTable>,
    /// Serialises member-list swaps and healthy-list refreshes.
    update: Mutex<()>,
    versions: AtomicU64,
    fallback_next: AtomicUsize,
    /// The pick sequence, shared with every member list.
    picks: Arc<AtomicU64>,
    /// This pool, for its backends' health to name as their owner.
    me: std::sync::Weak<Pool>,
}

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

impl Pool {
    /// A pool of `specs`. Backends that `previous` (the pool this one
    /// replaces on a reload) has too keep their counters and health; new
    /// ones start up, or down when active checks run with `initial_up` off.
    pub fn new(
        name: &str,
        specs: Vec<BackendSpec>,
        balancer: impl Into<Balancer>,
        settings: PoolSettings,
        previous: Option<&Pool>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::build(name, specs, balancer.into(), settings, previous, me))
    }

    fn build(
        name: &str,
        specs: Vec<BackendSpec>,
        balancer: Balancer,
        settings: PoolSettings,
        previous: Option<&Pool>,
        me: &std::sync::Weak<Pool>,
    ) -> Self {
        let live = Arc::new(LiveTable::default());
        let old = previous.map(|p| p.members());
        let (backends, _) = build_backends(specs, old.as_deref(), &live, settings.starts_up(), me);
        let (id, picks) = (NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed), Arc::default());
        let members = Members::new((id, &picks), &live, 1, backends);
        Self {
            id,
            name: name.into(),
            balancer,
            settings,
            retries: RetryBudget::default(),
            members: ArcSwap::from_pointee(members),
            live,
            update: Mutex::new(()),
            versions: AtomicU64::new(1),
            fallback_next: AtomicUsize::new(0),
            picks,
            me: me.clone(),
        }
    }

    /// The current member list.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Replace the member list. Backends whose address stays keep their
    /// counters and health; the rest start fresh. Nothing is swapped when
    /// nothing changed.
    pub fn set_members(&self, specs: Vec<BackendSpec>) -> MemberChange {
        self.edit_members(|_| Some(specs)).unwrap_or_default()
    }

    /// A new member list made from the current one's specs by `change`
    /// (none: no change), as one step against other changes.
    fn edit_members(&self, change: impl FnOnce(&[BackendSpec]) -> Option<Vec<BackendSpec>>) -> Option<MemberChange> {
        let _g = self.update.lock();
        let old = self.members.load_full();
        let specs = change(&old.backends.iter().map(|b| b.spec()).collect::<Vec<_>>())?;
        let (backends, change) = build_backends(specs, Some(&old), &self.live, self.settings.starts_up(), &self.me);
        if !change.is_empty() {
            let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
            self.members.store(Arc::new(Members::new((self.id, &self.picks), &self.live, version, backends)));
        }
        Some(change)
    }

    /// Add a backend by hand (admin API): a new member-list version; a
    /// reload from the file or the next discovery answer replaces it. An
    /// error when the pool has it already.
    pub fn add_backend(&self, spec: BackendSpec) -> Result<(), String> {
        let address = spec.address.clone();
        let mut exists = false;
        self.edit_members(|specs| {
            exists = specs.iter().any(|s| s.address == spec.address);
            (!exists).then(|| specs.iter().cloned().chain([spec]).collect())
        });
        if exists {
            return Err(format!("pool `{}` has {address} already", self.name));
        }
        tracing::info!(pool = %self.name, backend = %address, "added by hand");
        Ok(())
    }

    /// Remove a backend by hand (admin API); work in flight on it finishes.
    /// Whether the pool had it.
    pub fn remove_backend(&self, address: &str) -> bool {
        let removed = self
            .edit_members(|specs| {
                let kept: Vec<BackendSpec> = specs.iter().filter(|s| s.address != address).cloned().collect();
                (kept.len() < specs.len()).then_some(kept)
            })
            .is_some();
        if removed {
            tracing::info!(pool = %self.name, backend = %address, "removed by hand");
        }
        removed
    }

    /// Set the active-health verdict of the backend in `slot` of the current
    /// list by hand (admin API, tests). Returns whether it changed.
    pub fn set_up(&self, slot: u32, up: bool) -> bool {
        let members = self.members();
        let Some(b) = members.backends.get(slot as usize) else { return false };
        if b.health.up.swap(up, Ordering::Relaxed) == up {
            return false;
        }
        b.health.count_transition();
        self.refresh_health();
        true
    }

    /// Take the backend in `slot` of the current list out of rotation by
    /// hand, or put it back: work in flight finishes, no new work goes to
    /// it. Returns its address, or none when there is no such slot.
    pub fn set_disabled(&self, slot: u32, disabled: bool) -> Option<String> {
        let members = self.members();
        let b = members.backends.get(slot as usize)?;
        if b.health.disabled.swap(disabled, Ordering::Relaxed) != disabled {
            b.health.count_transition();
            self.refresh_health();
            tracing::info!(pool = %self.name, backend = %b.address, disabled, "changed by hand");
        }
        Some(b.address.clone())
    }

    /// Change the weight of the backend in `slot` of the current list (a
    /// new member-list version, so balancers get `set-backends`; counters
    /// and health stay). Returns its address, or none when there is no
    /// such slot. A reload puts the configured weight back.
    pub fn set_weight(&self, slot: u32, weight: u32) -> Option<String> {
        let mut address = None;
        self.edit_members(|specs| {
            address = Some(specs.get(slot as usize)?.address.clone());
            let mut specs = specs.to_vec();
            specs[slot as usize].weight = weight;
            Some(specs)
        });
        let address = address?;
        tracing::info!(pool = %self.name, backend = %address, weight, "weight changed by hand");
        Some(address)
    }

    /// Recompute the healthy list after a backend's health changed.
    pub fn refresh_health(&self) {
        let _g = self.update.lock();
        self.members.load().refresh();
    }

    /// Record an active-check result for a backend of the current list.
    /// Returns the new verdict when it flipped.
    pub fn record_check(&self, backend: &Backend, result: Result<(), String>, rise: u32, fall: u32) -> Option<bool> {
        let passed = result.is_ok();
        let flipped = backend.health.record_check(result, rise, fall);
        let readmitted = passed && backend.health.ejection() == Ejection::AwaitingCheck && {
            backend.health.set_ejection(Ejection::None);
            backend.health.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::info!(pool = %self.name, backend = %backend.address, "readmitted by a passing check");
            true
        };
        if flipped.is_some() || readmitted {
            self.refresh_health();
        }
        flipped
    }

    /// Slots of `members` eligible for a new attempt: healthy and not in
    /// `tried`. Without exclusions this is the shared healthy list, not a copy.
    pub fn eligible(&self, members: &Members, tried: &[u32]) -> Arc<Vec<u32>> {
        let mut healthy = members.healthy();
        if healthy.is_empty() && self.settings.panic {
            healthy = Arc::new((0..members.backends.len() as u32).collect());
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
            let mut totals: HashMap<usize, u64> = HashMap::new();
            let mut last = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let members = pool.members();
                let now = tokio::time::Instant::now();
                let mut next = HashMap::with_capacity(members.backends.len());
                for b in &members.backends {
                    let key = Arc::as_ptr(&b.stats) as usize;
                    let mut total = totals.get(&key).copied().unwrap_or(b.stats.rx() + b.stats.tx());
                    b.stats.tick_throughput(&mut total, now - last);
                    next.insert(key, total);
                }
                totals = next;
                last = now;
            }
        });
    }

    /// An attempt on `backend` succeeded.
    pub fn report_success(&self, backend: &Backend) {
        backend.health.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// An attempt on `backend` failed (connect error, or a failure status).
    /// After `max_fails` in a row the backend leaves rotation for
    /// `fail_timeout` (nginx's `max_fails`/`fail_timeout`, Envoy's outlier
    /// ejection); then it is back, or, when active checks run, back at the
    /// next passing check.
    pub fn report_failure(self: &Arc<Self>, backend: &Arc<Backend>) {
        let max = self.settings.max_fails;
        let failures = backend.health.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if max == 0 || failures < max {
            return;
        }
        if backend.health.set_ejection(Ejection::Backoff) != Ejection::None {
            return;
        }
        backend.health.count_transition();
        self.refresh_health();
        let wait = self.settings.fail_timeout;
        tracing::warn!(pool = %self.name, backend = %backend.address, failures, "ejected for {wait:?}");
        let backend = backend.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // The pool that holds the backend now: a reload since the
            // ejection replaced this one, keeping the backend's health.
            let Some(pool) = backend.health.owner.lock().upgrade() else { return };
            if pool.settings.active_checks {
                backend.health.set_ejection(Ejection::AwaitingCheck);
                tracing::info!(pool = %pool.name, backend = %backend.address, "backoff over; waiting for a passing check");
                return;
            }
            backend.health.consecutive_failures.store(0, Ordering::Relaxed);
            backend.health.set_ejection(Ejection::None);
            backend.health.count_transition();
            pool.refresh_health();
            tracing::info!(pool = %pool.name, backend = %backend.address, "back in rotation");
        });
    }

    /// The native round-robin: `native:round-robin`, and the fallback of a
    /// balancer plugin that fails open.
    pub fn fallback_pick(&self, eligible: &[u32]) -> Option<u32> {
        if eligible.is_empty() {
            return None;
        }
        let n = self.fallback_next.fetch_add(1, Ordering::Relaxed);
        Some(eligible[n % eligible.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16, weight: u32) -> BackendSpec {
        BackendSpec { address: format!("127.0.0.1:{port}"), weight, priority: 0, tags: vec![] }
    }

    fn pool(ports: &[u16], settings: PoolSettings) -> Arc<Pool> {
        let specs = ports.iter().map(|&p| spec(p, 1)).collect();
        Pool::new("p", specs, Balancer::NativeRoundRobin, settings, None)
    }

    #[tokio::test]
    async fn an_ejection_ends_in_the_pool_a_reload_put_in_place_of_the_one_that_ejected() {
        let settings =
            PoolSettings { max_fails: 1, fail_timeout: Duration::from_millis(50), ..PoolSettings::default() };
        let before = pool(&[1, 2], settings.clone());
        let b = before.members().backends[0].clone();
        before.report_failure(&b);
        assert_eq!(*before.eligible(&before.members(), &[]), vec![1]);
        // A reload: a new pool over the old one keeps the backend's health
        // (still ejected), and the old pool goes.
        let specs = vec![spec(1, 1), spec(2, 1)];
        let after = Pool::new("p", specs, Balancer::NativeRoundRobin, settings, Some(&before));
        drop(before);
        assert_eq!(*after.eligible(&after.members(), &[]), vec![1], "still ejected");
        let started = std::time::Instant::now();
        while after.eligible(&after.members(), &[]).len() < 2 {
            assert!(started.elapsed() < Duration::from_secs(5), "the backend never came back after the reload");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(after.members().backends[0].health.ejection(), Ejection::None);
    }

    #[test]
    fn eligible_backends_are_the_healthy_ones_not_tried() {
        let pool = pool(&[1, 2, 3, 4], PoolSettings::default());
        let members = pool.members();
        assert_eq!(*pool.eligible(&members, &[]), vec![0, 1, 2, 3]);
        assert_eq!(*pool.eligible(&members, &[1, 3]), vec![0, 2]);
        assert!(pool.set_up(2, false));
        assert!(!pool.set_up(2, false), "no change the second time");
        assert_eq!(*pool.eligible(&pool.members(), &[]), vec![0, 1, 3]);
        assert_eq!(pool.set_disabled(0, true).as_deref(), Some("127.0.0.1:1"));
        assert_eq!(*pool.eligible(&pool.members(), &[]), vec![1, 3]);
        assert_eq!(pool.set_disabled(9, true), None);
    }

    #[test]
    fn panic_mode_uses_every_backend_when_none_is_healthy() {
        let calm = pool(&[1, 2], PoolSettings::default());
        let panicky = pool(&[1, 2], PoolSettings { panic: true, ..PoolSettings::default() });
        for p in [&calm, &panicky] {
            p.set_up(0, false);
            p.set_up(1, false);
        }
        assert!(calm.eligible(&calm.members(), &[]).is_empty());
        assert_eq!(*panicky.eligible(&panicky.members(), &[]), vec![0, 1]);
        assert_eq!(*panicky.eligible(&panicky.members(), &[0]), vec![1], "tried ones stay excluded");
    }

    #[test]
    fn a_member_swap_keeps_the_numbers_and_health_of_backends_that_stay() {
        let pool = pool(&[1, 2, 3], PoolSettings::default());
        let before = pool.members();
        before.backends[1].stats.add_rx(500);
        pool.set_up(1, false);
        let change = pool.set_members(vec![spec(2, 1), spec(4, 1), spec(2, 5)]);
        assert_eq!(change.added, vec!["127.0.0.1:4".to_string()]);
        assert_eq!(change.removed, vec!["127.0.0.1:1".to_string(), "127.0.0.1:3".to_string()]);
        assert_eq!(change.changed, vec!["127.0.0.1:2".to_string()], "its slot moved from 1 to 0");
        let after = pool.members();
        assert!(after.version > before.version);
        assert_eq!(after.backends.len(), 2, "a duplicate address is dropped");
        let kept = &after.backends[0];
        assert!(Arc::ptr_eq(&kept.stats, &before.backends[1].stats));
        assert_eq!(kept.stats.rx(), 500);
        assert!(!kept.is_healthy(), "its health stays too");
        assert!(after.backends[1].is_healthy(), "a new backend starts up");
        assert_eq!(*pool.eligible(&after, &[]), vec![1]);
        assert!(pool.set_members(vec![spec(2, 1), spec(4, 1)]).is_empty());
        assert_eq!(pool.members().version, after.version, "nothing changed, nothing swapped");
    }

    #[test]
    fn a_new_backend_waits_for_its_checks_when_initial_up_is_off() {
        let settings = PoolSettings { active_checks: true, initial_up: false, ..PoolSettings::default() };
        let pool = pool(&[1], settings);
        assert!(pool.eligible(&pool.members(), &[]).is_empty());
        let backend = pool.members().backends[0].clone();
        assert_eq!(pool.record_check(&backend, Ok(()), 1, 1), Some(true));
        assert_eq!(*pool.eligible(&pool.members(), &[]), vec![0]);
    }

    #[tokio::test]
    async fn passive_ejection_lasts_fail_timeout_then_awaits_a_check_when_checks_run() {
        let timeout = Duration::from_millis(50);
        let plain = pool(&[1, 2], PoolSettings { max_fails: 1, fail_timeout: timeout, ..PoolSettings::default() });
        let checked = pool(
            &[1, 2],
            PoolSettings { max_fails: 1, fail_timeout: timeout, active_checks: true, ..PoolSettings::default() },
        );
        let reported = std::time::Instant::now();
        for p in [&plain, &checked] {
            let b = p.members().backends[0].clone();
            p.report_failure(&b);
            assert_eq!(b.health.ejection(), Ejection::Backoff);
            assert_eq!(*p.eligible(&p.members(), &[]), vec![1]);
        }
        let b = checked.members().backends[0].clone();
        while b.health.ejection() != Ejection::AwaitingCheck || plain.eligible(&plain.members(), &[]).len() < 2 {
            assert!(reported.elapsed() < Duration::from_secs(5), "backoff never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(reported.elapsed() >= timeout - Duration::from_millis(1), "out for fail_timeout");
        assert_eq!(*plain.eligible(&plain.members(), &[]), vec![0, 1], "back after fail_timeout");
        assert_eq!(*checked.eligible(&checked.members(), &[]), vec![1], "still out until a check passes");
        checked.record_check(&b, Ok(()), 2, 2);
        assert_eq!(b.health.ejection(), Ejection::None);
        assert_eq!(*checked.eligible(&checked.members(), &[]), vec![0, 1]);
    }

    #[test]
    fn retries_are_bounded_by_the_budget() {
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.request();
        }
        // 0.1 × 100 requests + 10.
        let allowed = (0..100).filter(|_| budget.try_retry(0.1)).count();
        assert_eq!(allowed, 20);
        assert_eq!(budget.retries(), 20);
    }

    #[test]
    fn native_round_robin_cycles_through_the_eligible() {
        let pool = pool(&[1, 2, 3], PoolSettings::default());
        let picks: Vec<u32> = (0..6).map(|_| pool.fallback_pick(&[0, 2]).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2, 0, 2]);
        assert_eq!(pool.fallback_pick(&[]), None);
    }
}

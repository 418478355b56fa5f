//! A named plugin instance: a component, its config, its limits, and a set
//! of live Wasm instances reused across calls. Every call runs under an
//! epoch deadline and a memory cap; an instance that traps, times out or
//! hits the cap is dropped and replaced on the next call.

use super::bindings::{access, balancer, discovery, health, router, types};
use super::state::{HttpPick, PickCall, PluginState, RequestHead};
use super::{LoadError, PluginSpec, Runtime, World};
use crate::config::Fallback;
use crate::upstream::{Members, Pool};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{InstancePre, Resource};
use wasmtime::{Store, Trap};

/// Per-call limits of a plugin instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time one call may run (wall-clock, in 10 ms epochs).
    pub timeout: Duration,
    /// Linear memory an instance may grow to, in bytes.
    pub memory: usize,
    /// Time instantiation plus `init` may run. Longer than a call's: it runs
    /// once per instance, off the request path at load, and plugins with an
    /// embedded interpreter (Python, JavaScript) spend most of their start-up
    /// there.
    pub init_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { timeout: Duration::from_millis(100), memory: 32 << 20, init_timeout: Duration::from_secs(5) }
    }
}

/// How a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallErrorKind {
    /// The plugin returned an error value.
    Error,
    /// The plugin trapped.
    Trap,
    /// The plugin ran past its deadline.
    Timeout,
    /// The plugin tried to grow past its memory limit.
    Memory,
    /// A fresh instance could not be made (instantiation or `init` failed).
    Instantiate,
    /// The plugin answered something impossible (e.g. an ineligible slot).
    BadAnswer,
}

/// A failed plugin call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}: {kind:?}: {message}")]
pub struct CallError {
    /// The plugin instance name.
    pub plugin: Arc<str>,
    /// What went wrong.
    pub kind: CallErrorKind,
    /// Detail for the log.
    pub message: String,
}

/// Call counters of a plugin instance.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that returned an error value.
    pub errors: AtomicU64,
    /// Calls that trapped.
    pub traps: AtomicU64,
    /// Calls interrupted at their deadline.
    pub timeouts: AtomicU64,
    /// Calls that hit the memory limit.
    pub memory_exceeded: AtomicU64,
    /// Fresh instances that failed to start.
    pub instantiate_failures: AtomicU64,
    /// Answers the host rejected.
    pub bad_answers: AtomicU64,
    /// Wasm instances created (first ones and replacements).
    pub instances_created: AtomicU64,
    /// Call times (wall clock, instance hand-out to answer) of one call in
    /// eight on the hot path, and of every background call.
    pub call_time: crate::histogram::Histogram,
}

impl PluginStats {
    /// Traps, timeouts and memory-limit hits: the failures that recycle an instance.
    pub fn recycled(&self) -> u64 {
        self.traps.load(Ordering::Relaxed)
            + self.timeouts.load(Ordering::Relaxed)
            + self.memory_exceeded.load(Ordering::Relaxed)
    }
}

/// An access decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Let the connection and all its requests through: on HTTP, the
    /// filter is not asked about the connection's requests.
    AllowConnection,
    /// Refuse it.
    Deny {
        /// Why, for the log.
        reason: String,
        /// HTTP status for L7 (403 when none).
        status: Option<u16>,
        /// Extra response headers for L7.
        headers: Vec<(String, String)>,
    },
}

enum Bound {
    Balancer(balancer::Balancer),
    Access(access::AccessFilter),
    Router(router::Router),
    Health(health::HealthChecker),
    Discovery(discovery::DiscoveryAdapter),
}

/// A backend found by a discovery plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// `host:port`.
    pub address: String,
    /// Relative weight.
    pub weight: u32,
    /// Priority group.
    pub priority: u32,
    /// Labels.
    pub tags: Vec<String>,
}

/// A header edit from a route decision: `None` removes the header.
pub type HeaderEdit = (String, Option<String>);

/// Where a router sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// Forward to a pool.
    Forward {
        /// Pool name.
        pool: String,
        /// Key for the pool's balancer.
        hash_key: Option<String>,
        /// Edits to the request headers.
        request_headers: Vec<HeaderEdit>,
        /// Edits to the response headers.
        response_headers: Vec<HeaderEdit>,
    },
    /// Answer directly.
    Respond {
        /// Status code.
        status: u16,
        /// Header fields.
        headers: Vec<(String, String)>,
        /// Body.
        body: Vec<u8>,
    },
    /// No rule matched: the listener's default pool.
    NoMatch,
}

struct Slot {
    store: Store<PluginState>,
    bound: Bound,
    /// Pool id -> version of the backend list this instance was given
    /// (looked up on every pick: a fast hash for a u32 key).
    seen_pools: rustc_hash::FxHashMap<u32, u64>,
}

/// One loaded version of a plugin instance.
struct Generation {
    pre: InstancePre<PluginState>,
    config_json: String,
    limits: Limits,
    /// Boxed: a call takes one out and puts it back, moving a pointer.
    #[expect(clippy::vec_box, reason = "every call moves a slot out and back: a pointer, not the store and bindings")]
    idle: Mutex<Vec<Box<Slot>>>,
    hash: String,
    grants: Arc<super::Grants>,
    /// 1 for the component loaded from the config, +1 per swap.
    number: u64,
    /// Where the component came from.
    source: String,
    /// When it went live.
    loaded_at: std::time::SystemTime,
}

/// A generation rolling out: it serves `percent` of the calls until it has
/// made `promote_after` of them (then it becomes the current generation),
/// unless its failure rate (errors, traps, timeouts, memory) goes above
/// `max_failure_rate` first (then it is dropped and the current one serves
/// everything again).
struct Canary {
    generation: Arc<Generation>,
    percent: u64,
    max_failure_rate: f64,
    promote_after: u64,
    calls: AtomicU64,
    failures: AtomicU64,
}

/// Calls a canary makes before its failure rate can roll it back.
const CANARY_MIN_CALLS: u64 = 20;

/// How a new generation rolls out.
#[derive(Debug, Clone, Copy)]
pub struct Rollout {
    /// Share of calls it serves, 1 to 99.
    pub percent: u32,
    /// Failure rate above which it is rolled back.
    pub max_failure_rate: f64,
    /// Calls after which it is promoted.
    pub promote_after: u64,
}

/// A rollout in progress.
#[derive(Debug, Clone)]
pub struct RolloutInfo {
    /// The generation rolling out.
    pub generation: u64,
    /// Its share of calls.
    pub percent: u32,
    /// Calls it made.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
}

/// What a plugin instance runs now.
#[derive(Debug, Clone)]
pub struct GenerationInfo {
    /// 1 for the component loaded from the config, +1 per swap.
    pub number: u64,
    /// Where the component came from (`builtin:<name>`, a path, or `upload`).
    pub source: String,
    /// Short content hash of the component.
    pub hash: String,
    /// When it went live.
    pub loaded_at: std::time::SystemTime,
}

/// A named plugin instance from the config.
pub struct PluginInstance {
    name: Arc<str>,
    /// The spec and component bytes it was loaded from, as one digest: a
    /// reload keeps the instance (and any swapped generation) when equal.
    origin: String,
    world: World,
    fallback: Fallback,
    runtime: Arc<Runtime>,
    current: ArcSwap<Generation>,
    /// A new generation serving a share of the calls, when one is rolling out.
    canary: arc_swap::ArcSwapOption<Canary>,
    /// One swap at a time, so generation numbers follow each other.
    swapping: Mutex<()>,
    /// The last generation number given out (rolled-back ones included).
    numbers: AtomicU64,
    stats: PluginStats,
}

impl PluginInstance {
    pub(super) fn new(
        runtime: Arc<Runtime>,
        spec: PluginSpec,
        pre: InstancePre<PluginState>,
        hash: String,
    ) -> Result<Arc<Self>, LoadError> {
        let origin = super::origin_of(&spec, &hash);
        let generation = Generation {
            pre,
            config_json: spec.config_json,
            limits: spec.limits,
            idle: Mutex::new(Vec::new()),
            hash,
            grants: Arc::new(spec.grants),
            number: 1,
            source: spec.source,
            loaded_at: std::time::SystemTime::now(),
        };
        let this = Self {
            origin,
            name: spec.name.into(),
            world: spec.world,
            fallback: spec.fallback,
            runtime,
            current: ArcSwap::from_pointee(generation),
            canary: Default::default(),
            swapping: Mutex::new(()),
            numbers: AtomicU64::new(1),
            stats: PluginStats::default(),
        };
        // Make the first instance now so that a bad config or a trapping
        // init is reported at load time; keep it for the first call.
        let generation = this.current.load_full();
        let slot = this.instantiate(&generation).map_err(|e| LoadError::Init(e.message))?;
        generation.idle.lock().push(slot);
        Ok(Arc::new(this))
    }

    /// The instance name from the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Digest of the spec and component it was loaded from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Where the component in use came from (`builtin:<name>`, a path, or `upload`).
    pub fn source(&self) -> String {
        self.current.load().source.clone()
    }

    /// The generation in use.
    pub fn generation(&self) -> GenerationInfo {
        let g = self.current.load();
        GenerationInfo { number: g.number, source: g.source.clone(), hash: g.hash.clone(), loaded_at: g.loaded_at }
    }

    /// Replace the component while calls go on. The new one is compiled,
    /// checked against the phase's world, linked, instantiated and given
    /// the instance's config before it goes live; if any step fails it is
    /// refused with the reason and the old one keeps serving. Calls under
    /// way finish on the old generation, which is dropped with its last
    /// Wasm instance. Blocks while compiling: call from a blocking thread.
    pub fn swap(&self, bytes: &[u8], source: &str) -> Result<GenerationInfo, LoadError> {
        self.swap_with(bytes, source, None)
    }

    /// [`Self::swap`], with the new generation first serving only a share
    /// of the calls when `rollout` says so (a canary), promoted or rolled
    /// back automatically by its failure rate.
    pub fn swap_with(&self, bytes: &[u8], source: &str, rollout: Option<Rollout>) -> Result<GenerationInfo, LoadError> {
        let (pre, hash) = self.runtime.prepare(self.world, bytes)?;
        let _one_at_a_time = self.swapping.lock();
        let old = self.current.load_full();
        let generation = Generation {
            pre,
            config_json: old.config_json.clone(),
            limits: old.limits,
            idle: Mutex::new(Vec::new()),
            hash,
            grants: old.grants.clone(),
            number: self.numbers.fetch_add(1, Ordering::Relaxed) + 1,
            source: source.to_string(),
            loaded_at: std::time::SystemTime::now(),
        };
        let slot = self.instantiate(&generation).map_err(|e| LoadError::Init(e.message))?;
        generation.idle.lock().push(slot);
        let info = GenerationInfo {
            number: generation.number,
            source: generation.source.clone(),
            hash: generation.hash.clone(),
            loaded_at: generation.loaded_at,
        };
        match rollout {
            Some(r) => {
                self.canary.store(Some(Arc::new(Canary {
                    generation: Arc::new(generation),
                    percent: r.percent.clamp(1, 99) as u64,
                    max_failure_rate: r.max_failure_rate,
                    promote_after: r.promote_after,
                    calls: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                })));
                tracing::info!(plugin = %self.name, generation = info.number, percent = r.percent, "plugin rolling out");
            }
            None => {
                self.canary.store(None);
                self.current.store(Arc::new(generation));
                tracing::info!(plugin = %self.name, generation = info.number, hash = %info.hash, "plugin swapped");
            }
        }
        Ok(info)
    }

    /// The rollout in progress, if any.
    pub fn rollout(&self) -> Option<RolloutInfo> {
        self.canary.load().as_ref().map(|c| RolloutInfo {
            generation: c.generation.number,
            percent: c.percent as u32,
            calls: c.calls.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        })
    }

    /// Count a canary call; promote or roll back when its time has come.
    fn judge_canary(&self, canary: &Arc<Canary>, failed: bool) {
        let calls = canary.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let failures = canary.failures.fetch_add(failed as u64, Ordering::Relaxed) + failed as u64;
        let rate = failures as f64 / calls as f64;
        let current = self.canary.load();
        let still = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, canary));
        if !still {
            return;
        }
        if calls >= CANARY_MIN_CALLS && rate > canary.max_failure_rate {
            let _one_at_a_time = self.swapping.lock();
            if self.canary.compare_and_swap(&current, None).as_ref().is_some_and(|c| Arc::ptr_eq(c, canary)) {
                tracing::warn!(
                    plugin = %self.name,
                    generation = canary.generation.number,
                    failures,
                    calls,
                    "rollout rolled back: failure rate {rate:.3} above {}",
                    canary.max_failure_rate
                );
            }
        } else if calls >= canary.promote_after {
            let _one_at_a_time = self.swapping.lock();
            if self.canary.compare_and_swap(&current, None).as_ref().is_some_and(|c| Arc::ptr_eq(c, canary)) {
                self.current.store(canary.generation.clone());
                tracing::info!(plugin = %self.name, generation = canary.generation.number, calls, failures, "rollout promoted");
            }
        }
    }

    /// The world it implements.
    pub fn world(&self) -> World {
        self.world
    }

    /// What callers do when a call fails.
    pub fn fallback(&self) -> Fallback {
        self.fallback
    }

    /// Call counters.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// Short content hash of the component in use.
    pub fn content_hash(&self) -> String {
        self.current.load().hash.clone()
    }

    fn deadline_ticks(timeout: Duration) -> u64 {
        // The current tick is partly over: one more than ceil(timeout /
        // tick) stops the call after at least `timeout`.
        timeout.as_micros().div_ceil(super::EPOCH_TICK.as_micros()).max(1) as u64 + 1
    }

    fn fail(&self, kind: CallErrorKind, message: String) -> CallError {
        CallError { plugin: self.name.clone(), kind, message }
    }

    fn instantiate(&self, generation: &Generation) -> Result<Box<Slot>, CallError> {
        self.stats.instances_created.fetch_add(1, Ordering::Relaxed);
        let mut store = Store::new(
            self.runtime.engine(),
            PluginState::new(
                self.name.clone(),
                self.runtime.shared().clone(),
                generation.limits.memory,
                generation.grants.clone(),
            ),
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(Self::deadline_ticks(generation.limits.init_timeout));
        let init_timeout = generation.limits.init_timeout;
        let failed = |e: wasmtime::Error| {
            self.stats.instantiate_failures.fetch_add(1, Ordering::Relaxed);
            let message = match classify(&e) {
                CallErrorKind::Timeout => format!("instantiation and init ran past init_timeout ({init_timeout:?})"),
                _ => format!("{e:#}"),
            };
            self.fail(CallErrorKind::Instantiate, message)
        };
        let config = generation.config_json.clone();
        let init_failed = |e: types::Error| {
            self.stats.instantiate_failures.fetch_add(1, Ordering::Relaxed);
            self.fail(CallErrorKind::Instantiate, describe(&e))
        };
        let bound = match self.world {
            World::Balancer => {
                let b = balancer::BalancerPre::new(generation.pre.clone())
                    .and_then(|p| p.instantiate(&mut store))
                    .map_err(failed)?;
                b.weir_plugin_balance().call_init(&mut store, &config).map_err(failed)?.map_err(init_failed)?;
                Bound::Balancer(b)
            }
            World::AccessFilter => {
                let a = access::AccessFilterPre::new(generation.pre.clone())
                    .and_then(|p| p.instantiate(&mut store))
                    .map_err(failed)?;
                a.weir_plugin_access().call_init(&mut store, &config).map_err(failed)?.map_err(init_failed)?;
                Bound::Access(a)
            }
            World::Router => {
                let r = router::RouterPre::new(generation.pre.clone())
                    .and_then(|p| p.instantiate(&mut store))
                    .map_err(failed)?;
                r.weir_plugin_route().call_init(&mut store, &config).map_err(failed)?.map_err(init_failed)?;
                Bound::Router(r)
            }
            World::HealthChecker => {
                let h = health::HealthCheckerPre::new(generation.pre.clone())
                    .and_then(|p| p.instantiate(&mut store))
                    .map_err(failed)?;
                h.weir_plugin_healthcheck().call_init(&mut store, &config).map_err(failed)?.map_err(init_failed)?;
                Bound::Health(h)
            }
            World::DiscoveryAdapter => {
                let d = discovery::DiscoveryAdapterPre::new(generation.pre.clone())
                    .and_then(|p| p.instantiate(&mut store))
                    .map_err(failed)?;
                d.weir_plugin_discovery().call_init(&mut store, &config).map_err(failed)?.map_err(init_failed)?;
                Bound::Discovery(d)
            }
        };
        Ok(Box::new(Slot { store, bound, seen_pools: Default::default() }))
    }

    /// Run `f` on an idle instance under the call limits. A trap, timeout or
    /// memory-limit hit drops the instance; anything else returns it.
    fn with_slot<R>(
        &self,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<R, CallError> {
        self.with_slot_for(None, f)
    }

    /// [`Self::with_slot`] with a time limit of its own instead of the
    /// instance's (background calls, whose limit is their phase's timeout).
    fn with_slot_for<R>(
        &self,
        timeout: Option<Duration>,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<R, CallError> {
        let n = self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let started = (timeout.is_some() || n.is_multiple_of(8)).then(std::time::Instant::now);
        // Guards, not clones: no reference count is touched on the way.
        let canary_guard = self.canary.load();
        let canary = canary_guard.as_ref().filter(|c| n % 100 < c.percent);
        let current_guard;
        let generation: &Generation = match canary {
            Some(c) => &c.generation,
            None => {
                current_guard = self.current.load();
                &current_guard
            }
        };
        let idle = generation.idle.lock().pop();
        let mut slot = match idle {
            Some(s) => s,
            None => match self.instantiate(generation) {
                Ok(s) => s,
                Err(e) => {
                    if let Some(c) = canary {
                        self.judge_canary(c, true);
                    }
                    return Err(e);
                }
            },
        };
        let limits = Limits { timeout: timeout.unwrap_or(generation.limits.timeout), ..generation.limits };
        slot.store.set_epoch_deadline(Self::deadline_ticks(limits.timeout));
        let result = f(&mut slot);
        if let Some(t) = started {
            self.stats.call_time.observe(t.elapsed());
        }
        if let Some(c) = canary {
            self.judge_canary(c, !matches!(result, Ok(Ok(_))));
        }
        match result {
            Ok(Ok(r)) => {
                generation.idle.lock().push(slot);
                Ok(r)
            }
            Ok(Err(e)) => {
                generation.idle.lock().push(slot);
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(self.fail(CallErrorKind::Error, describe(&e)))
            }
            Err(e) => {
                // The instance may be in any state after a trap: drop it.
                let kind = if slot.store.data().limits.hit { CallErrorKind::Memory } else { classify(&e) };
                let counter = match kind {
                    CallErrorKind::Timeout => &self.stats.timeouts,
                    CallErrorKind::Memory => &self.stats.memory_exceeded,
                    _ => &self.stats.traps,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let err = self.fail(kind, format!("{e:#}").lines().next().unwrap_or_default().to_string());
                tracing::warn!(plugin = %self.name, kind = ?kind, "plugin instance recycled: {}", err.message);
                Err(err)
            }
        }
    }

    /// Ask a balancer for a slot of `pool` among `eligible`.
    pub fn pick(
        &self,
        pool: &Arc<Pool>,
        members: &Arc<Members>,
        eligible: Arc<Vec<u32>>,
        conn: &types::Connection,
        hash_key: Option<&str>,
        mut http: Option<&mut HttpPick>,
    ) -> Result<u32, CallError> {
        use balancer::exports::weir::plugin::balance::{Choice, PickContext};
        let ctx = PickContext {
            pool: pool.id,
            eligible_count: eligible.len() as u32,
            sequence: pool.next_pick(),
            client_hash: client_hash(&conn.client.ip),
        };
        let check = eligible.clone();
        let choice = self.with_slot(|slot| {
            let Bound::Balancer(b) = &slot.bound else { unreachable!("balancer slot") };
            let b = b.weir_plugin_balance();
            if slot.seen_pools.get(&pool.id) != Some(&members.version) {
                match b.call_set_backends(&mut slot.store, pool.id, &members.wit_backends)? {
                    Ok(()) => {
                        slot.seen_pools.insert(pool.id, members.version);
                    }
                    Err(e) => return Ok(Err(e)),
                }
            }
            slot.store.data_mut().pick = Some(PickCall {
                pool: pool.id,
                members: members.clone(),
                eligible,
                conn: conn.clone(),
                // Lent to the call and taken back: the cookies are not copied.
                http: http.as_deref_mut().map(|h| {
                    h.response_headers.clear();
                    std::mem::take(h)
                }),
            });
            let result = b.call_pick(&mut slot.store, Resource::new_borrow(0), ctx, hash_key);
            // Dropped where it is: moving the call out would copy it.
            let call = &mut slot.store.data_mut().pick;
            if let (Some(out), Some(back)) = (http, call.as_mut().and_then(|c| c.http.take())) {
                *out = back;
            }
            *call = None;
            result
        })?;
        let slot = match choice {
            Choice::Slot(s) if check.binary_search(&s).is_ok() => Some(s),
            Choice::EligibleIndex(i) => check.get(i as usize).copied(),
            Choice::Slot(_) => None,
        };
        slot.ok_or_else(|| {
            self.stats.bad_answers.fetch_add(1, Ordering::Relaxed);
            self.fail(CallErrorKind::BadAnswer, format!("answered {choice:?}, which is not an eligible backend"))
        })
    }

    /// Ask an access filter about a new connection.
    pub fn check_connection(&self, conn: &types::Connection) -> Result<Verdict, CallError> {
        self.with_slot(|slot| {
            let Bound::Access(a) = &slot.bound else { unreachable!("access slot") };
            Ok(a.weir_plugin_access().call_check_connection(&mut slot.store, conn)?.map(verdict))
        })
    }

    /// Ask an access filter about an HTTP request head.
    pub fn check_request(&self, conn: &types::Connection, head: Arc<RequestHead>) -> Result<Verdict, CallError> {
        self.with_slot(|slot| {
            let Bound::Access(a) = &slot.bound else { unreachable!("access slot") };
            slot.store.data_mut().request = Some(head);
            let r = a.weir_plugin_access().call_check_request(&mut slot.store, conn, Resource::new_borrow(0));
            slot.store.data_mut().request = None;
            Ok(r?.map(verdict))
        })
    }
}

impl PluginInstance {
    /// Run a background call with I/O allowed until `timeout` from now.
    /// The Wasm deadline is a little later than the I/O one, so that an
    /// I/O timeout reaches the plugin as an error it can report rather
    /// than as an interruption.
    fn background<R>(
        &self,
        target: Option<String>,
        proxy: Option<crate::proxy_protocol::Version>,
        timeout: Duration,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<R, CallError> {
        let deadline = std::time::Instant::now() + timeout;
        self.with_slot_for(Some(timeout + timeout / 4 + Duration::from_millis(20)), |slot| {
            slot.store.data_mut().io = Some(super::io::CallScope { target, proxy, deadline });
            let r = f(slot);
            slot.store.data_mut().io = None;
            r
        })
    }

    /// Ask a health checker about a backend: `Ok(Ok(()))` healthy,
    /// `Ok(Err(reason))` unhealthy. With `proxy` (the pool sends PROXY to
    /// its backends), the checker's connections to the backend start with a
    /// `LOCAL` header. Blocks on I/O: call from a blocking thread.
    pub fn check(
        &self,
        target: &types::Backend,
        proxy: Option<crate::proxy_protocol::Version>,
        timeout: Duration,
    ) -> Result<Result<(), String>, CallError> {
        use health::exports::weir::plugin::healthcheck::Health;
        let health = self.background(Some(target.address.clone()), proxy, timeout, |slot| {
            let Bound::Health(h) = &slot.bound else { unreachable!("health slot") };
            h.weir_plugin_healthcheck().call_check(&mut slot.store, target)
        })?;
        Ok(match health {
            Health::Healthy => Ok(()),
            Health::Unhealthy(reason) => Err(reason),
        })
    }

    /// Ask a discovery plugin for its backends. Blocks on I/O: call from a
    /// blocking thread.
    pub fn discover(&self, timeout: Duration) -> Result<Vec<Discovered>, CallError> {
        let list = self.background(None, None, timeout, |slot| {
            let Bound::Discovery(d) = &slot.bound else { unreachable!("discovery slot") };
            d.weir_plugin_discovery().call_discover(&mut slot.store)
        })?;
        Ok(list
            .into_iter()
            .map(|d| Discovered { address: d.address, weight: d.weight, priority: d.priority, tags: d.tags })
            .collect())
    }

    /// Ask a router where a connection goes (L4: SNI in `conn`, the
    /// offered ALPN protocols in `alpn`).
    pub fn route_connection(&self, conn: &types::Connection, alpn: &[String]) -> Result<RouteDecision, CallError> {
        self.with_slot(|slot| {
            let Bound::Router(r) = &slot.bound else { unreachable!("router slot") };
            Ok(r.weir_plugin_route().call_route_connection(&mut slot.store, conn, alpn)?.map(decision))
        })
    }

    /// Ask a router where an HTTP request goes.
    pub fn route_request(&self, conn: &types::Connection, head: Arc<RequestHead>) -> Result<RouteDecision, CallError> {
        self.with_slot(|slot| {
            let Bound::Router(r) = &slot.bound else { unreachable!("router slot") };
            slot.store.data_mut().request = Some(head);
            let d = r.weir_plugin_route().call_route_request(&mut slot.store, conn, Resource::new_borrow(0));
            slot.store.data_mut().request = None;
            Ok(d?.map(decision))
        })
    }
}

/// `pick-context.client-hash`: FNV-1a over the address bytes with a 64-bit
/// finaliser. weir-sdk's `hash64` is the same function, so a plugin can hash
/// an address itself and agree with the host.
pub fn client_hash(ip: &types::IpAddress) -> u64 {
    let mut bytes = [0u8; 16];
    let used = match *ip {
        types::IpAddress::Ipv4((a, b, c, d)) => {
            bytes[..4].copy_from_slice(&[a, b, c, d]);
            4
        }
        types::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            for (i, seg) in [a, b, c, d, e, f, g, h].iter().enumerate() {
                bytes[2 * i..2 * i + 2].copy_from_slice(&seg.to_be_bytes());
            }
            16
        }
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &bytes[..used] {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn decision(d: router::exports::weir::plugin::route::Decision) -> RouteDecision {
    use router::exports::weir::plugin::route::Decision as D;
    let edits =
        |v: Vec<router::exports::weir::plugin::route::HeaderEdit>| v.into_iter().map(|e| (e.name, e.value)).collect();
    match d {
        D::Forward(f) => RouteDecision::Forward {
            pool: f.pool,
            hash_key: f.hash_key,
            request_headers: edits(f.request_headers),
            response_headers: edits(f.response_headers),
        },
        D::Respond(r) => RouteDecision::Respond { status: r.status, headers: r.headers, body: r.body },
        D::NoMatch => RouteDecision::NoMatch,
    }
}

fn verdict(v: access::exports::weir::plugin::access::Verdict) -> Verdict {
    use access::exports::weir::plugin::access::Verdict as V;
    match v {
        V::Allow => Verdict::Allow,
        V::AllowConnection => Verdict::AllowConnection,
        V::Deny(d) => Verdict::Deny { reason: d.reason, status: d.status, headers: d.headers },
    }
}

fn describe(e: &types::Error) -> String {
    match e {
        types::Error::InvalidConfig(m) => format!("invalid config: {m}"),
        types::Error::Unavailable(m) => format!("unavailable: {m}"),
        types::Error::Other(m) => m.clone(),
    }
}

fn classify(e: &wasmtime::Error) -> CallErrorKind {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallErrorKind::Timeout,
        _ => CallErrorKind::Trap,
    }
}

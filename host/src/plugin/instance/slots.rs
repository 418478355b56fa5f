//! A generation (one loaded version of a plugin instance's component) and
//! its slots: the live Wasm instances it reuses across calls, made with the
//! instance's config and limits.

use super::{CallError, CallErrorKind, Limits, PluginInstance};
use crate::plugin::bindings::{access, balancer, discovery, health, router, types};
use crate::plugin::state::PluginState;
use crate::plugin::World;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap};

pub(super) enum Bound {
    Balancer(balancer::Balancer),
    Access(access::AccessFilter),
    Router(router::Router),
    Health(health::HealthChecker),
    Discovery(discovery::DiscoveryAdapter),
}

pub(super) struct Slot {
    pub(super) store: Store<PluginState>,
    pub(super) bound: Bound,
    /// Pool id -> version of the backend list this instance was given
    /// (looked up on every pick: a fast hash for a u32 key).
    pub(super) seen_pools: rustc_hash::FxHashMap<u32, u64>,
}

/// One loaded version of a plugin instance.
pub(super) struct Generation {
    pub(super) pre: InstancePre<PluginState>,
    pub(super) config_json: String,
    pub(super) limits: Limits,
    pub(super) idle: IdleSlots,
    pub(super) hash: String,
    pub(super) grants: Arc<crate::plugin::Grants>,
    /// 1 for the component loaded from the config, +1 per swap.
    pub(super) number: u64,
    /// Where the component came from.
    pub(super) source: String,
    /// When it went live.
    pub(super) loaded_at: std::time::SystemTime,
}

/// A generation's instances not in a call, kept per worker loop so that a
/// worker keeps reusing the instances (and their memory) it warmed.
pub(super) struct IdleSlots(
    /// Boxed: a call takes one out and puts it back, moving a pointer.
    #[expect(clippy::vec_box, reason = "every call moves a slot out and back: a pointer, not the store and bindings")]
    Box<[Mutex<Vec<Box<Slot>>>]>,
);

impl IdleSlots {
    pub(super) fn new() -> Self {
        Self((0..crate::workers::count()).map(|_| Mutex::default()).collect())
    }

    /// An idle instance of the calling worker's, else one of another's.
    pub(super) fn take(&self) -> Option<Box<Slot>> {
        let own = crate::workers::index() % self.0.len();
        // Two statements: the own list's guard must be gone before the
        // others (itself included) are locked.
        let slot = self.0[own].lock().pop();
        slot.or_else(|| self.0.iter().find_map(|list| list.lock().pop()))
    }

    pub(super) fn put(&self, slot: Box<Slot>) {
        self.0[crate::workers::index() % self.0.len()].lock().push(slot);
    }
}

impl PluginInstance {
    pub(super) fn deadline_ticks(timeout: Duration) -> u64 {
        // The current tick is partly over: one more than ceil(timeout /
        // tick) stops the call after at least `timeout`.
        timeout.as_micros().div_ceil(crate::plugin::EPOCH_TICK.as_micros()).max(1) as u64 + 1
    }

    pub(super) fn instantiate(&self, generation: &Generation) -> Result<Box<Slot>, CallError> {
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
}

pub(super) fn describe(e: &types::Error) -> String {
    match e {
        types::Error::InvalidConfig(m) => format!("invalid config: {m}"),
        types::Error::Unavailable(m) => format!("unavailable: {m}"),
        types::Error::Other(m) => m.clone(),
    }
}

/// What a trapped call reports: the trap (not wasmtime's `error while
/// executing at wasm backtrace:` header), the plugin function it stopped
/// in, and the panic message the SDK reported before it, if any.
pub(super) fn trap_message(e: &wasmtime::Error, panic: Option<String>) -> String {
    let reason = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string().trim_start_matches("wasm trap: ").to_string(),
        None => e.root_cause().to_string(),
    };
    let place = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|b| b.frames().iter().find_map(|f| f.func_name().map(str::to_string)))
        .map(|f| format!(" in {f}"))
        .unwrap_or_default();
    match panic {
        Some(p) => format!("{reason}{place}: the plugin {}", p.replace('\n', " ")),
        None => format!("{reason}{place}"),
    }
}

pub(super) fn classify(e: &wasmtime::Error) -> CallErrorKind {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallErrorKind::Timeout,
        _ => CallErrorKind::Trap,
    }
}

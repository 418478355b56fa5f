//! The live Wasm instances of a generation, reused across calls, and the
//! limits every call runs under.

use super::generation::Generation;
use super::{CallError, CallErrorKind, Limits, PluginInstance};
use crate::plugin::bindings::{access, balancer, discovery, health, router, types};
use crate::plugin::state::PluginState;
use crate::plugin::World;
use std::sync::atomic::Ordering;
use std::time::Duration;
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

impl PluginInstance {
    fn deadline_ticks(timeout: Duration) -> u64 {
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

    /// Run `f` on an idle instance under the call limits. A trap, timeout or
    /// memory-limit hit drops the instance; anything else returns it.
    pub(super) fn with_slot<R>(
        &self,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<R, CallError> {
        self.with_slot_for(None, f)
    }

    /// [`Self::with_slot`] with a time limit of its own instead of the
    /// instance's (background calls, whose limit is their phase's timeout).
    pub(super) fn with_slot_for<R>(
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

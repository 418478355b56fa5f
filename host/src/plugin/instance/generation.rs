//! Which generation serves a call: the one in use, or a canary rolling out
//! beside it; swaps between them while calls go on; and the call itself
//! (`with_slot`: a slot of that generation under the call's limits).

use super::slots::{classify, describe, Generation, IdleSlots, Slot};
use super::{CallError, CallErrorKind, Limits, PluginInstance};
use crate::plugin::bindings::types;
use crate::plugin::LoadError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A generation rolling out: it serves `percent` of the calls until it has
/// made `promote_after` of them (then it becomes the current generation),
/// unless its failure rate (errors, traps, timeouts, memory) goes above
/// `max_failure_rate` first (then it is dropped and the current one serves
/// everything again).
pub(super) struct Canary {
    pub(super) generation: Arc<Generation>,
    pub(super) percent: u64,
    pub(super) max_failure_rate: f64,
    pub(super) promote_after: u64,
    pub(super) calls: AtomicU64,
    pub(super) failures: AtomicU64,
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

impl PluginInstance {
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
            idle: IdleSlots::new(),
            hash,
            grants: old.grants.clone(),
            number: self.numbers.fetch_add(1, Ordering::Relaxed) + 1,
            source: source.to_string(),
            loaded_at: std::time::SystemTime::now(),
        };
        let slot = self.instantiate(&generation).map_err(|e| LoadError::Init(e.message))?;
        generation.idle.put(slot);
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
    pub(super) fn judge_canary(&self, canary: &Arc<Canary>, failed: bool) {
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

    /// Short content hash of the component in use.
    pub fn content_hash(&self) -> String {
        self.current.load().hash.clone()
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
        let idle = generation.idle.take();
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
        let printed = slot.store.data().output.take();
        if let (Some(text), Ok(_)) = (&printed, &result) {
            tracing::info!(plugin = %self.name, "printed: {text}");
        }
        match result {
            Ok(Ok(r)) => {
                generation.idle.put(slot);
                Ok(r)
            }
            Ok(Err(e)) => {
                generation.idle.put(slot);
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
                let panic = slot.store.data_mut().panic.take();
                let mut message = super::slots::trap_message(&e, panic);
                if let Some(text) = printed {
                    message = format!("{message}; it printed: {}", text.replace('\n', " | "));
                }
                let err = self.fail(kind, message);
                tracing::warn!(plugin = %self.name, kind = ?kind, "plugin instance recycled: {}", err.message);
                Err(err)
            }
        }
    }
}

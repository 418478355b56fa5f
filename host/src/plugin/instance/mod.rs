//! A named plugin instance: a component, its config, its limits, and a set
//! of live Wasm instances reused across calls. Every call runs under an
//! epoch deadline and a memory cap; an instance that traps, times out or
//! hits the cap is dropped and replaced on the next call.
//!
//! - `slots`: a generation (one component version) and its live Wasm
//!   instances, reused across calls;
//! - `generation`: which generation serves a call (the current one or a
//!   canary), swaps and rollouts, and a call under its limits;
//! - `calls`: one method per phase call, and the conversions between WIT
//!   values and the host's.

mod calls;
mod generation;
mod slots;

pub use calls::{client_hash, Discovered, HeaderEdit, RouteDecision, Verdict};
pub use generation::{GenerationInfo, Rollout, RolloutInfo};

use super::state::PluginState;
use super::{LoadError, PluginSpec, Runtime, World};
use crate::config::Fallback;
use arc_swap::ArcSwap;
use generation::Canary;
use parking_lot::Mutex;
use slots::{Generation, IdleSlots};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::InstancePre;

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
        let origin = crate::plugin::origin_of(&spec, &hash);
        let generation = Generation {
            pre,
            config_json: spec.config_json,
            limits: spec.limits,
            idle: IdleSlots::new(),
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
        generation.idle.put(slot);
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

    fn fail(&self, kind: CallErrorKind, message: String) -> CallError {
        CallError { plugin: self.name.clone(), kind, message }
    }
}

//! Load shedding: when an event loop falls behind, plugin calls take too
//! long or the process's memory passes its ceiling, new work is refused
//! early and cheaply (a connection closed at accept, after a `503` on plain
//! HTTP; an HTTP request answered `503` with `retry-after` before any phase
//! runs) while the work in progress completes (Envoy's overload manager).
//!
//! Loop lag is measured where it hurts: a ticker on each event loop that
//! serves connections stamps the time every [`TICK`]; a loop that has not
//! run its ticker for longer than the limit is busy with work queued before
//! it, and a request it polls now has waited about that long. Each request
//! reads its own loop's stamp, so shedding starts in the middle of a long
//! batch rather than at the loop's next timer check. Memory and plugin call
//! time are sampled by the server's monitor ([`Overload::sample`]) every
//! [`SAMPLE`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often a loop's ticker stamps the time.
pub const TICK: Duration = Duration::from_millis(5);

/// How often memory and plugin call time are sampled.
pub const SAMPLE: Duration = Duration::from_millis(100);

/// Timed plugin calls a window needs before its mean is judged.
pub const MIN_TIMED_CALLS: u64 = 5;

/// Why new work is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An event loop is behind by more than `shed_loop_lag`.
    LoopLag,
    /// Plugin calls took longer than `shed_plugin_time` on average.
    PluginTime,
    /// Resident memory is over `shed_memory`.
    Memory,
}

impl Reason {
    /// Every reason, in the order of the counters.
    pub const ALL: [Reason; 3] = [Reason::LoopLag, Reason::PluginTime, Reason::Memory];

    /// Its name in metrics, logs and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Reason::LoopLag => "loop_lag",
            Reason::PluginTime => "plugin_time",
            Reason::Memory => "memory",
        }
    }

    /// What a shed request's answer says.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::LoopLag => "overloaded (loop lag)",
            Reason::PluginTime => "overloaded (plugin time)",
            Reason::Memory => "overloaded (memory)",
        }
    }
}

/// The limits, from `[runtime]` (`None`: that signal is not watched).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `shed_loop_lag`.
    pub loop_lag: Option<Duration>,
    /// `shed_plugin_time`: mean plugin call time over a sample.
    pub plugin_time: Option<Duration>,
    /// `shed_memory`: resident set size in bytes.
    pub memory: Option<u64>,
}

/// A server's overload state, read on every accept and request.
pub struct Overload {
    epoch: Instant,
    /// `shed_loop_lag` in ns (0: off).
    lag_limit: AtomicU64,
    /// Each serving loop's last tick, in ns since `epoch`.
    ticks: Box<[AtomicU64]>,
    plugin_over: AtomicBool,
    memory_over: AtomicBool,
    limits: parking_lot::Mutex<Limits>,
    shed: [AtomicU64; 3],
    /// The last sample: resident bytes, mean plugin call time (ns).
    resident: AtomicU64,
    plugin_mean: AtomicU64,
    /// Plugin calls timed and their time when the current window began, and
    /// when that was.
    window: parking_lot::Mutex<(u64, f64, Instant)>,
}

impl Overload {
    /// With one tick slot per event loop serving connections.
    pub fn new(loops: usize) -> Self {
        Self {
            epoch: Instant::now(),
            lag_limit: AtomicU64::new(0),
            ticks: (0..loops.max(1)).map(|_| AtomicU64::new(0)).collect(),
            plugin_over: AtomicBool::new(false),
            memory_over: AtomicBool::new(false),
            limits: Default::default(),
            shed: Default::default(),
            resident: AtomicU64::new(0),
            plugin_mean: AtomicU64::new(0),
            window: parking_lot::Mutex::new((0, 0.0, Instant::now())),
        }
    }

    /// Set the limits (at start and at each reload). Returns whether loop
    /// lag is watched now and was not before: its tickers must start.
    pub fn set(&self, limits: Limits) -> bool {
        let mut now = self.limits.lock();
        let starts = now.loop_lag.is_none() && limits.loop_lag.is_some();
        if starts {
            self.tick_all();
        }
        *now = limits;
        if limits.plugin_time.is_none() {
            self.plugin_over.store(false, Relaxed);
        }
        if limits.memory.is_none() {
            self.memory_over.store(false, Relaxed);
        }
        self.lag_limit.store(limits.loop_lag.map_or(0, |d| d.as_nanos() as u64), Relaxed);
        starts
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        *self.limits.lock()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn tick_all(&self) {
        let now = self.now();
        self.ticks.iter().for_each(|t| t.store(now, Relaxed));
    }

    /// Stamp loop `i` (its ticker, every [`TICK`]).
    pub fn tick(&self, i: usize) {
        if let Some(t) = self.ticks.get(i) {
            t.store(self.now(), Relaxed);
        }
    }

    /// Whether loop `i` is behind by more than the limit.
    fn lagging(&self, i: usize, limit: u64) -> bool {
        self.ticks.get(i).is_some_and(|t| self.now().saturating_sub(t.load(Relaxed)) > limit + TICK.as_nanos() as u64)
    }

    fn sampled(&self) -> Option<Reason> {
        if self.memory_over.load(Relaxed) {
            return Some(Reason::Memory);
        }
        self.plugin_over.load(Relaxed).then_some(Reason::PluginTime)
    }

    /// Why a request on event loop `i` (`workers::index()`) is refused
    /// now, if it is.
    pub fn refusing(&self, i: usize) -> Option<Reason> {
        let limit = self.lag_limit.load(Relaxed);
        if limit != 0 && self.lagging(i, limit) {
            return Some(Reason::LoopLag);
        }
        self.sampled()
    }

    /// Why a new connection is refused now, if it is: with several loops,
    /// for lag only when every one of them is behind.
    pub fn refusing_connection(&self) -> Option<Reason> {
        let limit = self.lag_limit.load(Relaxed);
        if limit != 0 && (0..self.ticks.len()).all(|i| self.lagging(i, limit)) {
            return Some(Reason::LoopLag);
        }
        self.sampled()
    }

    /// Count one piece of work refused.
    pub fn shed(&self, reason: Reason) {
        self.shed[reason as usize].fetch_add(1, Relaxed);
    }

    /// Work refused so far, by reason.
    pub fn shed_counts(&self) -> [(Reason, u64); 3] {
        Reason::ALL.map(|r| (r, self.shed[r as usize].load(Relaxed)))
    }

    /// Every reason refusing new work now (on any loop).
    pub fn reasons(&self) -> Vec<Reason> {
        let limit = self.lag_limit.load(Relaxed);
        let lag = limit != 0 && (0..self.ticks.len()).any(|i| self.lagging(i, limit));
        let flags = [lag, self.plugin_over.load(Relaxed), self.memory_over.load(Relaxed)];
        Reason::ALL.into_iter().zip(flags).filter(|(_, on)| *on).map(|(r, _)| r).collect()
    }

    /// The longest time a loop has gone without its tick, when watched.
    pub fn loop_lag(&self) -> Option<Duration> {
        if self.lag_limit.load(Relaxed) == 0 {
            return None;
        }
        let now = self.now();
        let oldest = self.ticks.iter().map(|t| now.saturating_sub(t.load(Relaxed))).max().unwrap_or(0);
        Some(Duration::from_nanos(oldest.saturating_sub(TICK.as_nanos() as u64)))
    }

    /// The last sample's resident memory (bytes) and mean plugin call time.
    pub fn last_sample(&self) -> (u64, Duration) {
        (self.resident.load(Relaxed), Duration::from_nanos(self.plugin_mean.load(Relaxed)))
    }

    /// Take a sample: `resident` bytes now, and the plugin calls timed so
    /// far (the hot path times one call in eight) with their total time.
    /// Memory is over its ceiling above it and stays so until it is 5 %
    /// under. Plugin time is judged on a window of at least
    /// [`MIN_TIMED_CALLS`] timed calls (or whatever a second gave): over its
    /// limit when they averaged more.
    pub fn sample(&self, resident: u64, plugin_calls: u64, plugin_secs: f64) {
        let limits = self.limits();
        self.resident.store(resident, Relaxed);
        if let Some(ceiling) = limits.memory {
            let over = self.memory_over.load(Relaxed);
            let now_over = if over { resident > ceiling - ceiling / 20 } else { resident > ceiling };
            if now_over != over {
                self.memory_over.store(now_over, Relaxed);
                log_change(Reason::Memory, now_over, format!("resident {} MiB", resident >> 20));
            }
        }
        let (calls, secs) = {
            let mut window = self.window.lock();
            let delta = (plugin_calls.saturating_sub(window.0), (plugin_secs - window.1).max(0.0));
            if delta.0 < MIN_TIMED_CALLS && window.2.elapsed() < Duration::from_secs(1) {
                return;
            }
            *window = (plugin_calls, plugin_secs, Instant::now());
            delta
        };
        let mean = if calls > 0 { Duration::from_secs_f64(secs / calls as f64) } else { Duration::ZERO };
        self.plugin_mean.store(mean.as_nanos() as u64, Relaxed);
        if let Some(limit) = limits.plugin_time {
            let over = self.plugin_over.load(Relaxed);
            let now_over = mean > limit;
            if now_over != over {
                self.plugin_over.store(now_over, Relaxed);
                log_change(Reason::PluginTime, now_over, format!("{calls} calls averaged {mean:?}"));
            }
        }
    }
}

fn log_change(reason: Reason, over: bool, what: String) {
    if over {
        tracing::warn!(reason = reason.name(), "overloaded: refusing new work ({what})");
    } else {
        tracing::info!(reason = reason.name(), "no longer overloaded ({what})");
    }
}

/// This process's resident set size in bytes (Linux; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_without_its_tick_for_longer_than_the_limit_refuses_and_a_tick_clears_it() {
        let o = Overload::new(2);
        assert_eq!(o.refusing(0), None, "nothing watched");
        assert!(o.set(Limits { loop_lag: Some(Duration::from_millis(20)), ..Default::default() }));
        assert_eq!(o.refusing(0), None, "just stamped");
        std::thread::sleep(Duration::from_millis(40));
        o.tick(1);
        assert_eq!(o.refusing(0), Some(Reason::LoopLag), "loop 0 is behind");
        assert_eq!(o.refusing_connection(), None, "loop 1 is not");
        assert_eq!(o.reasons(), vec![Reason::LoopLag]);
        o.tick(0);
        assert_eq!(o.refusing(0), None);
        assert!(!o.set(Limits { loop_lag: Some(Duration::from_millis(30)), ..Default::default() }));
        o.set(Limits::default());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(o.refusing(0), None, "off again");
    }

    #[test]
    fn memory_has_hysteresis_and_plugin_time_judges_the_calls_since_the_last_sample() {
        let o = Overload::new(1);
        o.set(Limits { memory: Some(100 << 20), plugin_time: Some(Duration::from_millis(2)), ..Default::default() });
        o.sample(99 << 20, 0, 0.0);
        assert_eq!(o.refusing(0), None);
        o.sample(101 << 20, 0, 0.0);
        assert_eq!(o.refusing(0), Some(Reason::Memory));
        o.sample(97 << 20, 0, 0.0);
        assert_eq!(o.refusing(0), Some(Reason::Memory), "not 5 % under yet");
        o.sample(94 << 20, 0, 0.0);
        assert_eq!(o.refusing(0), None);
        // 100 calls of 3 ms: over; the next 2 are too few to judge; 10
        // of 0.1 ms clear it.
        o.sample(0, 100, 0.3);
        assert_eq!(o.refusing(0), Some(Reason::PluginTime));
        assert_eq!(o.last_sample().1, Duration::from_millis(3));
        o.sample(0, 102, 0.4);
        assert_eq!(o.refusing(0), Some(Reason::PluginTime));
        o.sample(0, 110, 0.3008);
        assert_eq!(o.refusing(0), None);
        o.shed(Reason::PluginTime);
        assert_eq!(o.shed_counts()[1], (Reason::PluginTime, 1));
    }
}

//! Host imports every plugin may use, wrapped for Rust: logging, clock,
//! randomness, rate-limit buckets, shared counters, metrics and the shared
//! key-value store.

use crate::imports::weir::plugin::host;
use crate::Error;

pub use host::SharedCounter;

/// Log levels accepted by [`log`].
pub use host::LogLevel;

/// Write a line to weir's log, tagged with this plugin instance's name.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message);
}

/// The config name of a listener, from `Connection::listener`.
pub fn listener_name(id: u32) -> String {
    host::listener_name(id)
}

/// Monotonic clock, nanoseconds.
pub fn now_nanos() -> u64 {
    host::now_nanos()
}

/// 64 random bits from the host (not for cryptography).
pub fn random_u64() -> u64 {
    host::random_u64()
}

/// A uniformly distributed number in `0..n` (`n` > 0).
pub fn random_below(n: u32) -> u32 {
    (((random_u64() >> 32) * n as u64) >> 32) as u32
}

/// Take a token from the host-owned bucket `key` (`rate` a second, at most
/// `burst` saved up). `Ok(())` when one was taken, else the wait until the
/// next one is due. Buckets are shared by every instance and worker thread.
pub fn take_token(key: &str, rate: u32, burst: u32) -> Result<(), std::time::Duration> {
    match host::take_token(key, rate, burst) {
        0 => Ok(()),
        ms => Err(std::time::Duration::from_millis(ms as u64)),
    }
}

/// A metric of this plugin instance that weir exports on its `/metrics`:
/// a counter as `weir_plugin_custom_total{plugin="NAME",name="..."}`, a
/// gauge as `weir_plugin_custom_gauge{...}`. Like [`SharedCounter`], it is
/// shared by every instance and worker thread and survives hot swaps.
///
/// Open it once, in `init`, and keep it: `inc`, `add` and `set` are one
/// host call each, with no lookup.
///
/// ```no_run
/// use weir_sdk::Metric;
///
/// let refused = Metric::counter("refused").expect("a valid metric name");
/// refused.inc();
/// let queue = Metric::gauge("queue_depth").expect("a valid metric name");
/// queue.set(3);
/// ```
pub struct Metric(host::Metric);

impl Metric {
    /// The counter `name` (1 to 64 of `a-z`, `A-Z`, `0-9`, `_`). Refused when
    /// the name is invalid, is a gauge already, or the plugin instance has
    /// 64 metrics.
    pub fn counter(name: &str) -> Result<Self, Error> {
        Self::open(name, host::MetricKind::Counter)
    }

    /// The gauge `name`; refused as for [`Metric::counter`].
    pub fn gauge(name: &str) -> Result<Self, Error> {
        Self::open(name, host::MetricKind::Gauge)
    }

    fn open(name: &str, kind: host::MetricKind) -> Result<Self, Error> {
        host::open_metric(name, kind).map(Self).map_err(Error::Other)
    }

    /// Add one.
    pub fn inc(&self) {
        self.0.add(1);
    }

    /// Add `delta` (a counter ignores a negative one).
    pub fn add(&self, delta: i64) {
        self.0.add(delta);
    }

    /// Set the value (a gauge; a counter ignores it).
    pub fn set(&self, value: i64) {
        self.0.set(value);
    }
}

/// Read a value from the host's shared key-value store.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    host::kv_get(key)
}

/// Write a value to the host's shared key-value store.
pub fn kv_set(key: &str, value: &[u8]) {
    host::kv_set(key, value)
}

/// Delete a value from the host's shared key-value store.
pub fn kv_delete(key: &str) {
    host::kv_delete(key)
}

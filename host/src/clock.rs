//! A cheap monotonic clock shared by the host and plugins.

use std::sync::OnceLock;
use std::time::Instant;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since the first call in this process.
pub fn now_nanos() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// Wall-clock seconds since the Unix epoch (0 before it).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

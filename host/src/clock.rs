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

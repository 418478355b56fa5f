//! A lock-free latency histogram with power-of-two buckets in nanoseconds:
//! cheap enough for the request path (one atomic add per observation and
//! one for the sum), exported as a Prometheus histogram and read for
//! approximate quantiles.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Buckets: the upper bound of bucket `i` is `2^(i + 7)` ns (128 ns, 256 ns,
/// ... about 34 s); the last bucket also takes everything slower.
const BUCKETS: usize = 29;

/// Latencies, counted per power-of-two bucket.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Count one observation.
    pub fn observe(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        // 0..=128 ns -> bucket 0, 129..=256 -> 1, ...
        let i = (64 - ns.saturating_sub(1).leading_zeros()).saturating_sub(7) as usize;
        self.buckets[i.min(BUCKETS - 1)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Upper bound of bucket `i`, in seconds.
    fn upper(i: usize) -> f64 {
        (1u64 << (i + 7)) as f64 / 1e9
    }

    /// (upper bound in seconds, count) per bucket, the last one +Inf.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        (0..BUCKETS)
            .map(|i| (if i + 1 == BUCKETS { f64::INFINITY } else { Self::upper(i) }, self.buckets[i].load(Relaxed)))
            .collect()
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Sum of the observations, in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_ns.load(Relaxed) as f64 / 1e9
    }

    /// The upper bound (seconds) of the bucket holding quantile `q`
    /// (0 < q <= 1): within a factor of two above the true value. None
    /// when nothing was observed.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper(i));
            }
        }
        Some(Self::upper(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.observe(Duration::from_nanos(300)); // (256, 512]
        }
        h.observe(Duration::from_micros(50)); // (32.768, 65.536] µs
        h.observe(Duration::from_secs(100)); // past the last bound
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), Some(512e-9));
        assert_eq!(h.quantile(0.99), Some(65_536e-9));
        let b = h.buckets();
        assert_eq!(b[2], (512e-9, 98));
        assert_eq!(b[BUCKETS - 1], (f64::INFINITY, 1));
        h.observe(Duration::from_nanos(128));
        assert_eq!(h.buckets()[0].1, 1);
    }
}

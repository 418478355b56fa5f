//! Bundled balancer `least-latency`: the eligible backend with the lowest
//! `latency × (active + 1)`, where latency is the host's peak-EWMA of
//! observed latencies (connect time on L4, time to response head on L7).
//! A backend with no sample yet scores 0 and is tried first. Ties in turn.

use weir_sdk::balancer::*;

/// Index of the lowest score; `turn` rotates among ties. One SIMD scan of
/// the exact products (the SDK's `nth_min_product`).
pub fn lowest(latency_us: &[u32], active: &[u32], turn: u64) -> usize {
    nth_min_product(latency_us, active, 1, turn)
}

struct LeastLatency;

impl Balancer for LeastLatency {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(LeastLatency)
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        eligible_or_err(ctx)?;
        let (latency, active) = (pool.eligible_latency_us(), pool.eligible_active());
        Ok(Choice::EligibleIndex(lowest(&latency, &active, ctx.sequence) as u32))
    }
}

weir_sdk::export_balancer!(LeastLatency);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_is_the_plain_definition() {
        let mut rng = FastRng::from_seed(11u64);
        let mut next = move || rng.next_u64();
        for round in 0..500 {
            let n = (next() % 100 + 1) as usize;
            let spread = [3u64, 1000, 1 << 32][round % 3];
            let latency: Vec<u32> = (0..n).map(|_| (next() % spread) as u32).collect();
            let active: Vec<u32> = (0..n).map(|_| (next() % spread) as u32).collect();
            let turn = next();
            let score = |i: usize| latency[i] as u64 * (active[i] as u64 + 1);
            assert_eq!(lowest(&latency, &active, turn), nth_min(n, score, turn));
        }
    }

    #[test]
    fn latency_times_load() {
        assert_eq!(lowest(&[100, 2000, 300], &[0, 0, 0], 0), 0);
        // 100 µs with 9 in flight (1000) loses to 300 µs idle.
        assert_eq!(lowest(&[100, 2000, 300], &[9, 0, 0], 0), 2);
        // Unmeasured backends first, in turn.
        assert_eq!((0..3).map(|t| lowest(&[0, 50, 0], &[0, 0, 0], t)).collect::<Vec<_>>(), vec![0, 2, 0]);
    }
}

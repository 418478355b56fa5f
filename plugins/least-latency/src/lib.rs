//! Bundled balancer `least-latency`: the eligible backend with the lowest
//! `latency × (active + 1)`, where latency is the host's peak-EWMA of
//! observed latencies (connect time on L4, time to response head on L7).
//! A backend with no sample yet scores 0 and is tried first. Ties in turn.

use weir_sdk::balancer::*;

/// Index of the lowest score; `turn` rotates among ties.
pub fn lowest(latency_us: &[u32], active: &[u32], turn: u64) -> usize {
    let score = |i: usize| latency_us[i] as u64 * (active[i] as u64 + 1);
    nth_min(latency_us.len(), score, turn)
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
    fn latency_times_load() {
        assert_eq!(lowest(&[100, 2000, 300], &[0, 0, 0], 0), 0);
        // 100 µs with 9 in flight (1000) loses to 300 µs idle.
        assert_eq!(lowest(&[100, 2000, 300], &[9, 0, 0], 0), 2);
        // Unmeasured backends first, in turn.
        assert_eq!((0..3).map(|t| lowest(&[0, 50, 0], &[0, 0, 0], t)).collect::<Vec<_>>(), vec![0, 2, 0]);
    }
}

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

/// Index of the `turn`-th (cyclically) of the entries with the minimum
/// `key`, in two passes and no allocation.
pub fn nth_min(len: usize, key: impl Fn(usize) -> u64, turn: u64) -> usize {
    let (mut min, mut ties) = (u64::MAX, 0u64);
    for i in 0..len {
        let k = key(i);
        if k < min {
            (min, ties) = (k, 1);
        } else if k == min {
            ties += 1;
        }
    }
    let mut want = turn % ties.max(1);
    for i in 0..len {
        if key(i) == min {
            if want == 0 {
                return i;
            }
            want -= 1;
        }
    }
    0
}

struct LeastLatency;

impl Balancer for LeastLatency {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(LeastLatency)
    }

    fn pick(
        &mut self,
        pool: &PoolView,
        ctx: &PickContext,
        _conn: &Connection,
        _key: Option<&str>,
    ) -> Result<Choice, Error> {
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

//! Bundled balancer `least-bandwidth`: the eligible backend moving the
//! fewest bytes per second (rx + tx, averaged by the host every second), as
//! gobetween's `leastbandwidth`. Ties in turn.

use weir_sdk::balancer::*;

/// Index of the smallest rate; `turn` rotates among ties (one SIMD scan,
/// the SDK's `nth_min_u64`).
pub fn least(rates: &[u64], turn: u64) -> usize {
    nth_min_u64(rates, turn)
}

struct LeastBandwidth;

impl Balancer for LeastBandwidth {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(LeastBandwidth)
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        eligible_or_err(ctx)?;
        Ok(Choice::EligibleIndex(least(&pool.eligible_bytes_per_sec(), ctx.sequence) as u32))
    }
}

weir_sdk::export_balancer!(LeastBandwidth);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_rate_wins_ties_rotate() {
        assert_eq!(least(&[500, 20, 900], 7), 1);
        assert_eq!((0..4).map(|t| least(&[0, 9, 0], t)).collect::<Vec<_>>(), vec![0, 2, 0, 2]);
    }
}

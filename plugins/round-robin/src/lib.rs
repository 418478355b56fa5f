//! Bundled balancer `round-robin`: the eligible backends in turn. The turn
//! is the host's per-pool pick sequence, so it is exact across worker
//! threads, and the pick makes no host call at all.

use weir_sdk::balancer::*;

struct RoundRobin;

impl Balancer for RoundRobin {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(RoundRobin)
    }

    fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        Ok(Choice::EligibleIndex((ctx.sequence % n as u64) as u32))
    }
}

weir_sdk::export_balancer!(RoundRobin);

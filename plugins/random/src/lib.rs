//! Bundled balancer `random`: a uniformly random eligible backend.

use weir_sdk::balancer::*;

struct Random;

impl Balancer for Random {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Random)
    }

    fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        Ok(Choice::EligibleIndex(random_below(n)))
    }
}

weir_sdk::export_balancer!(Random);

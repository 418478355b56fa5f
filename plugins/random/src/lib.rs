//! Bundled balancer `random`: a uniformly random eligible backend, drawn by
//! a generator inside the plugin (seeded once from the host), so a pick
//! makes no host call.

use weir_sdk::balancer::*;

struct Random {
    rng: FastRng,
}

impl Balancer for Random {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Random { rng: FastRng::from_host() })
    }

    fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        Ok(Choice::EligibleIndex(self.rng.below(n)))
    }
}

weir_sdk::export_balancer!(Random);

//! Example user balancer `first`: always the lowest eligible slot, so traffic
//! fills the first backend and moves to the next only when it is down or
//! fails — HAProxy's `balance first`. Built by path, not bundled.

use weir_sdk::balancer::*;

struct First;

impl Balancer for First {
    fn init(_config: Config) -> Result<Self, Error> {
        log(LogLevel::Info, "first: ready");
        Ok(First)
    }

    fn pick(&mut self, _pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        eligible_or_err(ctx)?;
        Ok(Choice::EligibleIndex(0))
    }
}

weir_sdk::export_balancer!(First);

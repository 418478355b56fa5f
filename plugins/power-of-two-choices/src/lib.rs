//! Bundled balancer `power-of-two-choices`: two different random eligible
//! backends, the one with fewer active connections wins (ties: the first).
//! Four host calls whatever the pool's size.

use weir_sdk::balancer::*;

struct P2c;

impl Balancer for P2c {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(P2c)
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        if n == 1 {
            return Ok(Choice::EligibleIndex(0));
        }
        let a = random_below(n);
        let b = (a + 1 + random_below(n - 1)) % n;
        let (sa, sb) = (pool.eligible(a), pool.eligible(b));
        Ok(Choice::Slot(if pool.active(sb) < pool.active(sa) { sb } else { sa }))
    }
}

weir_sdk::export_balancer!(P2c);

//! Bundled balancer `round-robin`: the eligible backends in turn, one shared
//! sequence per pool kept by the host so it is exact across worker threads.

use weir_sdk::balancer::*;

struct RoundRobin(PerPoolCounter);

impl Balancer for RoundRobin {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Self(PerPoolCounter::new("round-robin")))
    }

    fn pick(&mut self, pool: &PoolView, _conn: &Connection, _key: Option<&str>) -> Result<u32, Error> {
        let n = eligible_or_err(pool)?;
        Ok(pool.eligible((self.0.next(pool.id()) % n as u64) as u32))
    }
}

weir_sdk::export_balancer!(RoundRobin);

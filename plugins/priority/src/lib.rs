//! Bundled balancer `priority`: backends grouped by their `priority` (lower
//! first). Only the best group that has an eligible backend is used, so the
//! next group takes traffic only when every backend of the better one is down
//! (failover), and gives it back when one recovers.
//!
//! ```toml
//! [plugins.failover]
//! source = "builtin:priority"
//! config = { inner = "round-robin" }   # within a group: round-robin, random or least-connections
//! ```

use serde::Deserialize;
use weir_sdk::balancer::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "rr")]
    inner: String,
}

fn rr() -> String {
    "round-robin".into()
}

#[derive(Clone, Copy)]
enum Inner {
    RoundRobin,
    Random,
    LeastConnections,
}

/// Positions (in `priorities`) of the best priority group.
pub fn best_group(priorities: &[u32]) -> Vec<usize> {
    let best = priorities.iter().copied().min().unwrap_or(0);
    (0..priorities.len()).filter(|&i| priorities[i] == best).collect()
}

struct Priority {
    inner: Inner,
    priorities: PoolMap<Vec<u32>>,
}

impl Balancer for Priority {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let inner = match s.inner.as_str() {
            "round-robin" => Inner::RoundRobin,
            "random" => Inner::Random,
            "least-connections" => Inner::LeastConnections,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "inner: `{other}` is not round-robin, random or least-connections"
                )))
            }
        };
        Ok(Self { inner, priorities: PoolMap::default() })
    }

    fn set_backends(&mut self, pool: u32, backends: Vec<Backend>) -> Result<(), Error> {
        self.priorities.insert(pool, backends.iter().map(|b| b.priority).collect());
        Ok(())
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        eligible_or_err(ctx)?;
        let slots = ctx.eligible_slots(pool);
        let all = self.priorities.get(&ctx.pool).map(Vec::as_slice).unwrap_or(&[]);
        let prios: Vec<u32> = slots.iter().map(|&s| all.get(s as usize).copied().unwrap_or(0)).collect();
        let group = best_group(&prios);
        let n = group.len() as u64;
        let index = match self.inner {
            Inner::RoundRobin => group[(ctx.sequence % n) as usize],
            Inner::Random => group[random_below(n as u32) as usize],
            Inner::LeastConnections => {
                let active = pool.eligible_active();
                group[nth_min(group.len(), |g| active[group[g]] as u64, ctx.sequence)]
            }
        };
        Ok(Choice::EligibleIndex(index as u32))
    }
}

weir_sdk::export_balancer!(Priority);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_group_is_the_lowest_priority_present() {
        assert_eq!(best_group(&[1, 0, 0, 2]), vec![1, 2]);
        assert_eq!(best_group(&[2, 1]), vec![1]);
    }
}

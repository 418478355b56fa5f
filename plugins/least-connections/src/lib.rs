//! Bundled balancer `least-connections`: the eligible backend with the
//! fewest active connections (or in-flight requests) per unit of weight.
//! Ties are broken in turn by the pool's pick sequence, so equal backends
//! share evenly instead of the first one taking every tie (BFE's WlcSmooth).

use std::collections::HashMap;
use weir_sdk::balancer::*;

struct LeastConnections {
    weights: HashMap<u32, Vec<u32>>,
}

/// Index (into `active`) of the least loaded entry; `turn` rotates among ties.
pub fn least_loaded(active: &[u32], weights: &[u32], turn: u64) -> usize {
    // active/weight compared exactly: a_i * w_b < a_b * w_i.
    let lighter = |i: usize, b: usize| {
        (active[i] as u64 * weights[b].max(1) as u64).cmp(&(active[b] as u64 * weights[i].max(1) as u64))
    };
    let (mut best, mut ties) = (0usize, 0u64);
    for i in 0..active.len() {
        match if ties == 0 { std::cmp::Ordering::Less } else { lighter(i, best) } {
            std::cmp::Ordering::Less => (best, ties) = (i, 1),
            std::cmp::Ordering::Equal => ties += 1,
            std::cmp::Ordering::Greater => {}
        }
    }
    let want = (turn % ties.max(1)) as usize;
    (0..active.len()).filter(|&i| lighter(i, best).is_eq()).nth(want).unwrap_or(0)
}

impl Balancer for LeastConnections {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Self { weights: HashMap::new() })
    }

    fn set_backends(&mut self, pool: u32, backends: Vec<Backend>) -> Result<(), Error> {
        self.weights.insert(pool, backends.iter().map(|b| b.weight).collect());
        Ok(())
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        eligible_or_err(ctx)?;
        let active = pool.eligible_active();
        let all = self.weights.get(&ctx.pool).map(Vec::as_slice).unwrap_or(&[]);
        // Every backend eligible (the usual case): eligible index = slot,
        // and the slot list need not cross the boundary.
        if all.len() == active.len() {
            return Ok(Choice::EligibleIndex(least_loaded(&active, all, ctx.sequence) as u32));
        }
        let slots = pool.eligible_slots();
        let weights: Vec<u32> = slots.iter().map(|&s| all.get(s as usize).copied().unwrap_or(1)).collect();
        Ok(Choice::EligibleIndex(least_loaded(&active, &weights, ctx.sequence) as u32))
    }
}

weir_sdk::export_balancer!(LeastConnections);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewest_per_weight_wins_and_ties_rotate() {
        assert_eq!(least_loaded(&[3, 1, 2], &[1, 1, 1], 0), 1);
        // 4 active at weight 4 is lighter than 2 at weight 1.
        assert_eq!(least_loaded(&[2, 4], &[1, 4], 0), 1);
        let picks: Vec<usize> = (0..4).map(|t| least_loaded(&[0, 5, 0, 0], &[1, 1, 1, 1], t)).collect();
        assert_eq!(picks, vec![0, 2, 3, 0]);
    }
}

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
    // Compare active/weight as active_a * weight_b < active_b * weight_a.
    let mut best: Vec<usize> = Vec::new();
    for i in 0..active.len() {
        let Some(&b) = best.first() else {
            best.push(i);
            continue;
        };
        let lhs = active[i] as u64 * weights[b].max(1) as u64;
        let rhs = active[b] as u64 * weights[i].max(1) as u64;
        if lhs < rhs {
            best.clear();
            best.push(i);
        } else if lhs == rhs {
            best.push(i);
        }
    }
    best[(turn % best.len() as u64) as usize]
}

impl Balancer for LeastConnections {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Self { weights: HashMap::new() })
    }

    fn set_backends(&mut self, pool: u32, backends: Vec<Backend>) -> Result<(), Error> {
        self.weights.insert(pool, backends.iter().map(|b| b.weight).collect());
        Ok(())
    }

    fn pick(
        &mut self,
        pool: &PoolView,
        ctx: &PickContext,
        _conn: &Connection,
        _key: Option<&str>,
    ) -> Result<Choice, Error> {
        eligible_or_err(ctx)?;
        let slots = pool.eligible_slots();
        let active = pool.eligible_active();
        let all = self.weights.get(&ctx.pool).map(Vec::as_slice).unwrap_or(&[]);
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

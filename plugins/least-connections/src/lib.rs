//! Bundled balancer `least-connections`: the eligible backend with the
//! fewest active connections (or in-flight requests) per unit of weight.
//! Ties are broken in turn by the pool's pick sequence, so equal backends
//! share evenly instead of the first one taking every tie (BFE's WlcSmooth).
//!
//! The scan uses the SDK's SIMD scans: with equal weights over the active
//! counts themselves, otherwise over `active × L/weight` (`weight_scale`),
//! which orders and ties exactly as `active / weight`.

use weir_sdk::balancer::*;

/// Index (into `active`) of the least loaded entry; `turn` rotates among
/// ties. The plain definition, by exact cross-multiplication: the fallback
/// when [`Weights`] has no scale, and the reference in tests.
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

/// A pool's weights in the forms the scan wants, computed once per
/// member list.
pub struct Weights {
    weights: Vec<u32>,
    /// `L / weight` per slot, when the weights' lcm `L` fits in 32 bits.
    scale: Option<Vec<u32>>,
    /// All weights equal: the active counts alone decide.
    uniform: bool,
}

impl Weights {
    /// The weights of a pool's backends, by slot.
    pub fn new(weights: Vec<u32>) -> Self {
        let uniform = weights.windows(2).all(|w| w[0].max(1) == w[1].max(1));
        let scale = if uniform { None } else { weight_scale(&weights) };
        Self { weights, scale, uniform }
    }

    /// Index into `active` of the least loaded backend, ties in turn.
    /// `active` holds the counts of the backends in `slots`, or of every
    /// backend in slot order when `slots` is `None`.
    pub fn least_loaded(&self, active: &[u32], slots: Option<&[u32]>, turn: u64) -> usize {
        if self.uniform {
            return nth_min_u32(active, turn);
        }
        let of_slots = |of: &[u32], slots: &[u32]| -> Vec<u32> {
            slots.iter().map(|&s| of.get(s as usize).copied().unwrap_or(1)).collect()
        };
        match (&self.scale, slots) {
            (Some(scale), None) => nth_min_product(active, scale, 0, turn),
            (Some(scale), Some(slots)) => nth_min_product(active, &of_slots(scale, slots), 0, turn),
            (None, None) => least_loaded(active, &self.weights, turn),
            (None, Some(slots)) => least_loaded(active, &of_slots(&self.weights, slots), turn),
        }
    }

    /// Whether the counts alone decide (every weight the same).
    pub fn uniform(&self) -> bool {
        self.uniform
    }

    /// How many backends the pool has.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether the pool has no backend.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }
}

struct LeastConnections {
    pools: PoolMap<Weights>,
}

impl Balancer for LeastConnections {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Self { pools: PoolMap::default() })
    }

    fn set_backends(&mut self, pool: u32, backends: Vec<Backend>) -> Result<(), Error> {
        self.pools.insert(pool, Weights::new(backends.iter().map(|b| b.weight).collect()));
        Ok(())
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        eligible_or_err(ctx)?;
        let active = pool.eligible_active();
        let Some(weights) = self.pools.get(&ctx.pool) else {
            return Ok(Choice::EligibleIndex(nth_min_u32(&active, ctx.sequence) as u32));
        };
        // Every backend eligible (the usual case) or equal weights: the
        // slot list need not cross the boundary.
        let slots = (weights.len() != active.len() && !weights.uniform()).then(|| ctx.eligible_slots(pool));
        Ok(Choice::EligibleIndex(weights.least_loaded(&active, slots.as_deref(), ctx.sequence) as u32))
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

    #[test]
    fn scaled_scan_agrees_with_cross_multiplication() {
        let mut rng = FastRng::from_seed(7u64);
        let mut next = move || rng.next_u64();
        for round in 0..2000 {
            let n = (next() % 40 + 1) as usize;
            let weights: Vec<u32> = (0..n).map(|_| [1, 1, 2, 3, 0, 5, 100, 97][(next() % 8) as usize]).collect();
            let active: Vec<u32> = (0..n).map(|_| (next() % [2, 5, 300][round % 3]) as u32).collect();
            let w = Weights::new(weights.clone());
            let turn = next();
            assert_eq!(
                w.least_loaded(&active, None, turn),
                least_loaded(&active, &weights, turn),
                "{weights:?} {active:?}"
            );
            // A subset of the slots eligible.
            let slots: Vec<u32> = (0..n as u32).filter(|_| next() % 3 != 0).collect();
            if slots.is_empty() {
                continue;
            }
            let sub_active: Vec<u32> = slots.iter().map(|&s| active[s as usize]).collect();
            let sub_weights: Vec<u32> = slots.iter().map(|&s| weights[s as usize]).collect();
            assert_eq!(w.least_loaded(&sub_active, Some(&slots), turn), least_loaded(&sub_active, &sub_weights, turn));
        }
    }
}

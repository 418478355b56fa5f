//! Bundled balancer `weighted-round-robin`: nginx's smooth weighted
//! round-robin. Weights 5:1:1 give `a a b a c a a`, not `a a a a a b c`.
//!
//! The schedule of one full period is computed when the pool's backends are
//! set, and each pick reads the entry at the host's pick sequence, so the
//! order is exact however many threads and Wasm instances serve the pool.
//! Backends that are not eligible are skipped in schedule order.

use weir_sdk::balancer::*;

/// Longest schedule kept; larger weight totals are scaled down to fit.
const MAX_PERIOD: u64 = 1 << 16;

/// One period of smooth weighted round-robin over `weights` (slot indexes).
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let mut w: Vec<i64> = weights.iter().map(|&x| x as i64).collect();
    if w.iter().all(|&x| x == 0) {
        w.iter_mut().for_each(|x| *x = 1);
    }
    let total: i64 = w.iter().sum();
    if total as u64 > MAX_PERIOD {
        let scale = MAX_PERIOD as f64 / total as f64;
        w.iter_mut().filter(|x| **x > 0).for_each(|x| *x = ((*x as f64 * scale) as i64).max(1));
    }
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

struct Wrr {
    schedules: PoolMap<Vec<u32>>,
}

impl Balancer for Wrr {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Self { schedules: PoolMap::default() })
    }

    fn set_backends(&mut self, pool: u32, backends: Vec<Backend>) -> Result<(), Error> {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        self.schedules.insert(pool, smooth_schedule(&weights));
        Ok(())
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        let Some(schedule) = self.schedules.get(&ctx.pool).filter(|s| !s.is_empty()) else {
            return Ok(Choice::EligibleIndex((ctx.sequence % n as u64) as u32));
        };
        let len = schedule.len() as u64;
        let start = ctx.sequence % len;
        for k in 0..len {
            let slot = schedule[((start + k) % len) as usize];
            if ctx.is_eligible(pool, slot) {
                return Ok(Choice::Slot(slot));
            }
        }
        Ok(Choice::EligibleIndex((ctx.sequence % n as u64) as u32))
    }
}

weir_sdk::export_balancer!(Wrr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_like_nginx() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_schedule(&[1, 2, 3]);
        assert_eq!(s.len(), 6);
        for (slot, want) in [(0, 1), (1, 2), (2, 3)] {
            assert_eq!(s.iter().filter(|&&x| x == slot).count(), want);
        }
    }

    #[test]
    fn never_more_in_a_row_than_the_weight() {
        let weights = [7, 3, 1, 9];
        let s = smooth_schedule(&weights);
        let cycle: Vec<u32> = s.iter().chain(s.iter()).copied().collect();
        let mut run = 1;
        for w in cycle.windows(2) {
            run = if w[0] == w[1] { run + 1 } else { 1 };
            assert!(run <= weights[w[1] as usize], "{run} in a row of slot {}", w[1]);
        }
    }

    #[test]
    fn zero_weights_and_huge_totals() {
        assert!(!smooth_schedule(&[0, 2]).contains(&0));
        assert_eq!(smooth_schedule(&[0, 0]).len(), 2);
        assert!(smooth_schedule(&[1_000_000, 1_000_000]).len() as u64 <= MAX_PERIOD);
    }
}

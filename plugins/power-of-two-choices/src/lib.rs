//! Bundled balancer `power-of-two-choices`: two different random eligible
//! backends, the one with fewer active connections wins (ties: the first).
//! The two draws come from a generator inside the plugin and both active
//! counts from one host call (`eligible-active-pair`), whatever the pool's size.

use weir_sdk::balancer::*;

/// Two different eligible indexes below `n` (`n` > 1), uniformly drawn.
pub fn two_of(rng: &mut FastRng, n: u32) -> (u32, u32) {
    let a = rng.below(n);
    (a, (a + 1 + rng.below(n - 1)) % n)
}

/// Of the eligible indexes `a` and `b`, with their active counts packed as
/// `eligible-active-pair` answers (a's in the low half), the one with
/// fewer; ties to `a`.
pub fn choose(a: u32, b: u32, active: u64) -> u32 {
    if (active >> 32) < (active & 0xffff_ffff) {
        b
    } else {
        a
    }
}

struct P2c {
    rng: FastRng,
}

impl Balancer for P2c {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(P2c { rng: FastRng::from_host() })
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, _key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        if n == 1 {
            return Ok(Choice::EligibleIndex(0));
        }
        let (a, b) = two_of(&mut self.rng, n);
        Ok(Choice::EligibleIndex(choose(a, b, pool.eligible_active_pair(a, b))))
    }
}

weir_sdk::export_balancer!(P2c);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewer_active_wins_ties_to_the_first() {
        assert_eq!(choose(3, 7, 5 | 2 << 32), 7);
        assert_eq!(choose(3, 7, 2 | 5 << 32), 3);
        assert_eq!(choose(3, 7, 4 | 4 << 32), 3);
    }

    #[test]
    fn two_different_indexes_uniformly() {
        let mut rng = FastRng::from_seed(1);
        let mut seen = [0u32; 5];
        for _ in 0..50_000 {
            let (a, b) = two_of(&mut rng, 5);
            assert_ne!(a, b);
            assert!(a < 5 && b < 5);
            seen[a as usize] += 1;
            seen[b as usize] += 1;
        }
        // Each index drawn about 20 000 times.
        assert!(seen.iter().all(|&c| (19_000..21_000).contains(&c)), "{seen:?}");
    }
}

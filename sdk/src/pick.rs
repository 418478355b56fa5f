//! Helpers for a balancer's `pick`: a stable hash, the least loaded taken in
//! turn, fast randomness inside the plugin, and state kept per pool.

use crate::{random_u64, SharedCounter};
use std::collections::HashMap;

/// A stable, well-spread 64-bit hash (FNV-1a, then a 64-bit finaliser): the
/// same key hashes the same in every instance, build and host.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Among `len` entries, the index of the `turn`-th (cyclically) of those
/// with the smallest `key`: "the least loaded, ties taken in turn", in two
/// passes and no allocation. For keys already in a slice,
/// [`nth_min_u32`](crate::nth_min_u32), [`nth_min_u64`](crate::nth_min_u64)
/// and [`nth_min_product`](crate::nth_min_product) give the same answer
/// several times faster.
pub fn nth_min(len: usize, key: impl Fn(usize) -> u64, turn: u64) -> usize {
    let (mut min, mut ties) = (u64::MAX, 0u64);
    for i in 0..len {
        let k = key(i);
        if k < min {
            (min, ties) = (k, 1);
        } else if k == min {
            ties += 1;
        }
    }
    let mut want = turn % ties.max(1);
    for i in 0..len {
        if key(i) == min {
            if want == 0 {
                return i;
            }
            want -= 1;
        }
    }
    0
}

/// A fast pseudo-random generator (wyrand) inside the plugin, seeded once
/// from the host: for balancers that draw on every pick, with no host call
/// per draw. Each plugin instance has its own sequence. Not for cryptography.
#[derive(Debug, Clone)]
pub struct FastRng(u64);

impl FastRng {
    /// A generator seeded from the host's [`random_u64`].
    pub fn from_host() -> Self {
        Self(random_u64())
    }

    /// A generator with a given seed (the same seed, the same sequence).
    pub fn from_seed(seed: u64) -> Self {
        Self(seed)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = self.0 as u128 * (self.0 ^ 0xe703_7ed1_a0b4_28db) as u128;
        (t >> 64) as u64 ^ t as u64
    }

    /// A uniformly distributed number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }
}

/// A map keyed by pool id (`PickContext::pool`, and the `pool` that
/// `set-backends` names), hashed with one multiplication instead of
/// SipHash: a balancer looks its pool up on every pick.
///
/// ```
/// let mut rings: weir_sdk::PoolMap<Vec<u32>> = Default::default();
/// rings.insert(7, vec![1, 2, 3]);
/// assert_eq!(rings.get(&7).map(Vec::len), Some(3));
/// ```
pub type PoolMap<T> = HashMap<u32, T, std::hash::BuildHasherDefault<PoolIdHasher>>;

/// The hasher of [`PoolMap`]: pool ids are small integers the host hands
/// out, so a multiplication spreads them well enough (Fibonacci hashing).
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolIdHasher(u64);

impl std::hash::Hasher for PoolIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One host-owned [`SharedCounter`] per pool, opened on first use.
///
/// Counters are shared by every instance of the plugin instance (one per
/// worker thread) and survive hot swaps, so a round-robin sequence stays exact
/// whichever thread serves a connection.
pub struct PerPoolCounter {
    prefix: &'static str,
    counters: PoolMap<SharedCounter>,
}

impl PerPoolCounter {
    /// Counters named `<prefix>/<pool id>`.
    pub fn new(prefix: &'static str) -> Self {
        Self { prefix, counters: PoolMap::default() }
    }

    /// Add one to the pool's counter and return its previous value.
    pub fn next(&mut self, pool: u32) -> u64 {
        self.counter(pool).fetch_add(1) as u64
    }

    /// The pool's counter.
    pub fn counter(&mut self, pool: u32) -> &SharedCounter {
        let prefix = self.prefix;
        self.counters.entry(pool).or_insert_with(|| SharedCounter::new(&format!("{prefix}/{pool}")))
    }
}

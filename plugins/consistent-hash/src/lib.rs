//! Bundled balancer `consistent-hash`: a Ketama ring. Each backend owns
//! `points × weight` points on a 64-bit ring, placed by hashing its address,
//! so a key keeps its backend while others come and go: removing one of N
//! backends moves only the keys it owned (about 1/N), and bringing it back
//! restores the original mapping (gobetween's `iphash1`).
//!
//! ```toml
//! [plugins.chash]
//! source = "builtin:consistent-hash"
//! config = { key = "hash-key", points = 160 }   # key: "hash-key" (the route's or pool's) or "client-ip"
//! ```
//! With `key = "hash-key"` and no key on a request, the client address is used.

use serde::Deserialize;
use weir_sdk::balancer::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "hash_key")]
    key: String,
    #[serde(default = "default_points")]
    points: u32,
}

fn hash_key() -> String {
    "hash-key".into()
}

fn default_points() -> u32 {
    160
}

/// A ring of points, sorted, each with its backend's slot, and an index
/// from the top bits of a point to where that stretch of the ring starts:
/// a lookup reads one index entry and searches the few points after it
/// instead of binary-searching the whole ring (160 points × weight per
/// backend: over 300 000 points at 1 024 backends, mostly cache misses).
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<u64>,
    slots: Vec<u32>,
    /// `index[b]`: the first point whose top `bits` bits are `b` or more;
    /// `2^bits + 1` entries, the last one the ring's length.
    index: Vec<u32>,
    bits: u32,
}

impl Ring {
    /// Place `points × weight` points per backend (address, weight).
    pub fn new(backends: &[(String, u32)], points: u32) -> Self {
        let mut ring = Vec::new();
        for (slot, (address, weight)) in backends.iter().enumerate() {
            for i in 0..points.saturating_mul(*weight) {
                ring.push((hash64(format!("{address}-{i}").as_bytes()), slot as u32));
            }
        }
        ring.sort_unstable();
        let (points, slots): (Vec<u64>, Vec<u32>) = ring.into_iter().unzip();
        // About one index entry per point, at most 2^16 (256 KiB).
        let bits = points.len().next_power_of_two().trailing_zeros().clamp(1, 16);
        let index = (0..=1u64 << bits)
            .map(|b| match b.checked_shl(64 - bits) {
                Some(start) if b < 1 << bits => points.partition_point(|&p| p < start) as u32,
                _ => points.len() as u32,
            })
            .collect();
        Ring { points, slots, index, bits }
    }

    /// The first backend at or after `key`'s point that `eligible` accepts.
    pub fn lookup(&self, key: &[u8], eligible: impl FnMut(u32) -> bool) -> Option<u32> {
        self.lookup_point(hash64(key), eligible)
    }

    /// Where point `h` falls: the first ring position at or after it.
    fn position(&self, h: u64) -> usize {
        let b = (h >> (64 - self.bits)) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        lo + self.points[lo..hi].partition_point(|&p| p < h)
    }

    /// The first backend at or after point `h` that `eligible` accepts.
    pub fn lookup_point(&self, h: u64, mut eligible: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.position(h);
        let mut tried = Vec::new();
        for k in 0..self.slots.len() {
            let slot = self.slots[(start + k) % self.slots.len()];
            if tried.contains(&slot) {
                continue;
            }
            if eligible(slot) {
                return Some(slot);
            }
            tried.push(slot);
        }
        None
    }
}

enum Key {
    HashKey,
    ClientIp,
}

struct ConsistentHash {
    key: Key,
    points: u32,
    rings: PoolMap<(Ring, u32)>,
}

impl Balancer for ConsistentHash {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let key = match s.key.as_str() {
            "hash-key" => Key::HashKey,
            "client-ip" => Key::ClientIp,
            other => return Err(Error::InvalidConfig(format!("key: `{other}` is not hash-key or client-ip"))),
        };
        Ok(Self { key, points: s.points.clamp(1, 1000), rings: PoolMap::default() })
    }

    fn set_backends(&mut self, pool: u32, backends: Vec<Backend>) -> Result<(), Error> {
        let list: Vec<(String, u32)> = backends.iter().map(|b| (b.address.clone(), b.weight)).collect();
        self.rings.insert(pool, (Ring::new(&list, self.points), backends.len() as u32));
        Ok(())
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, key: Option<&str>) -> Result<Choice, Error> {
        let n = eligible_or_err(ctx)?;
        let point = match (&self.key, key) {
            (Key::HashKey, Some(k)) => hash64(k.as_bytes()),
            _ => ctx.client_hash,
        };
        let Some((ring, total)) = self.rings.get(&ctx.pool) else {
            return Ok(Choice::EligibleIndex((point % n as u64) as u32));
        };
        // With every backend eligible, no host call is needed.
        let all = n == *total;
        match ring.lookup_point(point, |slot| all || ctx.is_eligible(pool, slot)) {
            Some(slot) => Ok(Choice::Slot(slot)),
            None => Err(Error::Unavailable("no eligible backend on the ring".into())),
        }
    }
}

weir_sdk::export_balancer!(ConsistentHash);

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    #[test]
    fn removing_one_of_ten_remaps_about_a_tenth_and_restores() {
        let ring = Ring::new(&backends(10), 160);
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let before: Vec<u32> = keys.iter().map(|k| ring.lookup(k.as_bytes(), |_| true).unwrap()).collect();
        let after: Vec<u32> = keys.iter().map(|k| ring.lookup(k.as_bytes(), |s| s != 3).unwrap()).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(moved <= 1_500, "{moved} of 10000 keys moved");
        // Only the removed backend's keys moved.
        assert!(before.iter().zip(&after).all(|(a, b)| a == b || *a == 3));
        let again: Vec<u32> = keys.iter().map(|k| ring.lookup(k.as_bytes(), |_| true).unwrap()).collect();
        assert_eq!(before, again);
        // Load is spread: every backend gets 6-14% of the keys.
        for slot in 0..10 {
            let share = before.iter().filter(|&&s| s == slot).count();
            assert!((600..1_400).contains(&share), "slot {slot} got {share}");
        }
    }

    #[test]
    fn the_index_finds_what_a_search_of_the_whole_ring_finds() {
        for n in [1, 3, 10, 1024] {
            let ring = Ring::new(&backends(n), 160);
            let mut rng = weir_sdk::FastRng::from_seed(n as u64);
            let probes = (0..20_000).map(|_| rng.next_u64());
            let edges = ring.points.iter().flat_map(|&p| [p, p.wrapping_add(1), p.wrapping_sub(1)]).take(30_000);
            for h in probes.chain(edges).chain([0, u64::MAX]) {
                assert_eq!(ring.position(h), ring.points.partition_point(|&p| p < h), "{n} backends, point {h:x}");
            }
        }
    }

    #[test]
    fn weights_are_respected() {
        let list = vec![("a:1".to_string(), 1), ("b:1".to_string(), 3)];
        let ring = Ring::new(&list, 160);
        let b = (0..20_000).filter(|i| ring.lookup(format!("k{i}").as_bytes(), |_| true) == Some(1)).count();
        assert!((13_500..16_500).contains(&b), "weight 3 of 4 got {b} of 20000");
    }
}

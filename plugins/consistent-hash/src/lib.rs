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
use std::collections::HashMap;
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

/// A ring of (point, slot), sorted by point.
#[derive(Debug, Default)]
pub struct Ring(Vec<(u64, u32)>);

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
        Ring(ring)
    }

    /// The first backend at or after `key`'s point that `eligible` accepts.
    pub fn lookup(&self, key: &[u8], eligible: impl FnMut(u32) -> bool) -> Option<u32> {
        self.lookup_point(hash64(key), eligible)
    }

    /// The first backend at or after point `h` that `eligible` accepts.
    pub fn lookup_point(&self, h: u64, mut eligible: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.0.is_empty() {
            return None;
        }
        let start = self.0.partition_point(|(p, _)| *p < h);
        let mut tried = Vec::new();
        for k in 0..self.0.len() {
            let slot = self.0[(start + k) % self.0.len()].1;
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
    rings: HashMap<u32, (Ring, u32)>,
}

impl Balancer for ConsistentHash {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse()?;
        let key = match s.key.as_str() {
            "hash-key" => Key::HashKey,
            "client-ip" => Key::ClientIp,
            other => return Err(Error::InvalidConfig(format!("key: `{other}` is not hash-key or client-ip"))),
        };
        Ok(Self { key, points: s.points.clamp(1, 1000), rings: HashMap::new() })
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
        match ring.lookup_point(point, |slot| all || pool.is_eligible(slot)) {
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
    fn weights_are_respected() {
        let list = vec![("a:1".to_string(), 1), ("b:1".to_string(), 3)];
        let ring = Ring::new(&list, 160);
        let b = (0..20_000).filter(|i| ring.lookup(format!("k{i}").as_bytes(), |_| true) == Some(1)).count();
        assert!((13_500..16_500).contains(&b), "weight 3 of 4 got {b} of 20000");
    }
}

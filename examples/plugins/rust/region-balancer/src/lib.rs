//! Example user balancer `region-balancer`: prefer the backends tagged with
//! the request's region, else least connections over every eligible backend.
//!
//! The region arrives as `pick`'s `hash-key` (a pool with
//! `hash_key = "header:x-region"` hands over each request's `x-region`
//! header). Backends whose tags hold `region=<value>` (the prefix is the
//! `tag_prefix` config key) are the candidates; when none of them is
//! eligible, or the request names no region, every eligible backend is.
//! Among the candidates the least-loaded one wins, ties broken by the host's
//! pick sequence. It is the Rust twin of `examples/plugins/python/region-balancer`
//! and `examples/plugins/js/region-balancer`: the three make the same choices.

use std::collections::{BTreeSet, HashMap};
use weir_sdk::balancer::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_prefix")]
    tag_prefix: String,
}

fn default_prefix() -> String {
    "region=".into()
}

struct RegionBalancer {
    prefix: String,
    /// Pool id -> the tags of each slot.
    tags: HashMap<u32, Vec<BTreeSet<String>>>,
}

/// The choice, from the eligible slots, their active counts and which of
/// them carry the wanted tag: the least-loaded matching slot (every slot
/// when none matches), ties broken by `sequence`.
pub fn choose(slots: &[u32], active: &[u32], matches: impl Fn(u32) -> bool, sequence: u64) -> u32 {
    let mut candidates: Vec<usize> = (0..slots.len()).filter(|&i| matches(slots[i])).collect();
    if candidates.is_empty() {
        candidates = (0..slots.len()).collect();
    }
    let least = candidates.iter().map(|&i| active[i]).min().unwrap_or(0);
    let tied: Vec<usize> = candidates.into_iter().filter(|&i| active[i] == least).collect();
    slots[tied[(sequence % tied.len() as u64) as usize]]
}

impl Balancer for RegionBalancer {
    fn init(config: Config) -> Result<Self, Error> {
        let s: Settings = config.parse().map_err(Error::InvalidConfig)?;
        Ok(RegionBalancer { prefix: s.tag_prefix, tags: HashMap::new() })
    }

    fn set_backends(&mut self, pool: u32, backends: Vec<Backend>) -> Result<(), Error> {
        let mut tags = vec![BTreeSet::new(); backends.len()];
        for b in backends {
            let slot = b.slot as usize;
            if slot >= tags.len() {
                tags.resize(slot + 1, BTreeSet::new());
            }
            tags[slot] = b.tags.into_iter().collect();
        }
        self.tags.insert(pool, tags);
        Ok(())
    }

    fn pick(&mut self, pool: &PoolView, ctx: &PickContext, hash_key: Option<&str>) -> Result<Choice, Error> {
        eligible_or_err(ctx)?;
        let slots = ctx.eligible_slots(pool);
        let active = pool.eligible_active();
        let want = hash_key.filter(|k| !k.is_empty()).map(|k| format!("{}{k}", self.prefix));
        let tags = self.tags.get(&ctx.pool);
        let matches = |slot: u32| match (&want, tags) {
            (Some(w), Some(t)) => t.get(slot as usize).is_some_and(|s| s.contains(w)),
            _ => false,
        };
        Ok(Choice::Slot(choose(&slots, &active, matches, ctx.sequence)))
    }
}

weir_sdk::export_balancer!(RegionBalancer);

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn prefers_matching_then_least_loaded() {
        let slots = [0, 1, 2, 3];
        // Slots 1 and 3 match; 3 is less loaded.
        assert_eq!(choose(&slots, &[0, 5, 0, 2], |s| s == 1 || s == 3, 0), 3);
        // None match: least loaded of all, ties rotate with the sequence.
        assert_eq!(choose(&slots, &[1, 0, 0, 1], |_| false, 0), 1);
        assert_eq!(choose(&slots, &[1, 0, 0, 1], |_| false, 1), 2);
        assert_eq!(choose(&slots, &[1, 0, 0, 1], |_| false, 2), 1);
    }
}

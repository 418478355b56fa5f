// region-balancer: prefer the backends tagged with the request's region.
//
// The region arrives as `pick`'s `hash-key`: give the pool
// `hash_key = "header:x-region"` and weir hands each request's `x-region`
// header to the balancer. Backends whose tags hold `region=<value>` (the
// prefix is the `tag_prefix` config key) are the candidates; when none of
// them is eligible, or the request names no region, every eligible backend
// is. Among the candidates the least-loaded one wins (fewest active
// requests), ties broken by the host's pick sequence, so sequential requests
// rotate.
//
// The Rust twin (`examples/plugins/rust/region-balancer`) and the Python one
// (`examples/plugins/python/region-balancer`) make exactly the same choices.

let prefix = "region=";
// pool id -> one Set of tags per slot
const tagsByPool = new Map();

// A `result` error: componentize-js returns the thrown value's `payload`.
function fail(tag, message) {
  const e = new Error(message);
  e.payload = { tag, val: message };
  return e;
}

export const balance = {
  init(config) {
    let cfg = {};
    if (config.trim() !== "") {
      try {
        cfg = JSON.parse(config);
      } catch (e) {
        throw fail("invalid-config", `config is not JSON: ${e}`);
      }
    }
    if (cfg.tag_prefix !== undefined) {
      if (typeof cfg.tag_prefix !== "string") {
        throw fail("invalid-config", "tag_prefix: expected a string");
      }
      prefix = cfg.tag_prefix;
    }
  },

  setBackends(pool, backends) {
    const tags = [];
    for (const b of backends) {
      tags[b.slot] = new Set(b.tags);
    }
    tagsByPool.set(pool, tags);
  },

  pick(pool, ctx, hashKey) {
    if (ctx.eligibleCount === 0) {
      throw fail("unavailable", "no eligible backend");
    }
    const slots = pool.eligibleSlots();
    const active = pool.eligibleActive();
    let candidates = [];
    if (hashKey) {
      const want = prefix + hashKey;
      const tags = tagsByPool.get(ctx.pool) || [];
      for (let i = 0; i < slots.length; i++) {
        const t = tags[slots[i]];
        if (t && t.has(want)) candidates.push(i);
      }
    }
    if (candidates.length === 0) {
      candidates = Array.from(slots, (_, i) => i);
    }
    let least = Infinity;
    for (const i of candidates) least = Math.min(least, active[i]);
    const tied = candidates.filter((i) => active[i] === least);
    const turn = Number(ctx.sequence % BigInt(tied.length));
    return { tag: "slot", val: slots[tied[turn]] };
  },
};

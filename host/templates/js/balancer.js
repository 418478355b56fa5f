// NAME: a weir balancer plugin, made by `weir plugin new`.
//
// Config (`config = { offset = 0 }` in weir's TOML, handed to `init` as
// JSON): `offset` skips that many backends on every pick, a toy knob to
// show config.
//
// Build with `weir plugin build`; test with
// `weir plugin test target/weir/NAME.wasm --cases cases.toml`.

// SETTINGS

// Module state lives as long as the Wasm instance; weir reuses instances
// call after call, but several may serve one plugin at once.
let offset = 0;

// The decision, kept free of host calls: an index among the eligible
// backends, the one a request's `x-pick: N` header names, else the next in
// turn, `offset` further on. `sequence` is a BigInt (WIT u64).
function choose(pinned, sequence, offset, eligible) {
  if (pinned !== undefined && /^\s*\d+\s*$/.test(pinned) && Number(pinned) < eligible) {
    return Number(pinned);
  }
  return Number((sequence + BigInt(offset)) % BigInt(eligible));
}

export const balance = {
  init(config) {
    const value = settings(config, ["offset"]).offset ?? 0;
    if (!Number.isInteger(value) || value < 0) {
      throw fail("invalid-config", "offset: expected a whole number, 0 or more");
    }
    offset = value;
  },

  // The pool's static data (addresses, weights, tags), once per change.
  setBackends(pool, backends) {},

  pick(pool, ctx, hashKey) {
    if (ctx.eligibleCount === 0) {
      throw fail("unavailable", "no eligible backend");
    }
    // HTTP requests only (undefined on L4); a host call, like every `pool` read.
    const pinned = pool.requestHeader("x-pick");
    return { tag: "eligible-index", val: choose(pinned, ctx.sequence, offset, ctx.eligibleCount) };
  },
};

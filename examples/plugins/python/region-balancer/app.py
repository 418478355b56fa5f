"""region-balancer: prefer the backends tagged with the request's region.

The region arrives as `pick`'s `hash-key`: give the pool
`hash_key = "header:x-region"` and weir hands each request's `x-region`
header to the balancer. Backends whose tags hold `region=<value>` (the
prefix is the `tag_prefix` config key) are the candidates; when none of them
is eligible, or the request names no region, every eligible backend is.
Among the candidates the least-loaded one wins (fewest active requests),
ties broken by the host's pick sequence, so sequential requests rotate.

The Rust twin (`examples/plugins/rust/region-balancer`) and the JavaScript
one (`examples/plugins/js/region-balancer`) make exactly the same choices.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.exports import balance
from wit_world.imports import types


# Module state: it lives as long as the Wasm instance (componentize-py
# does not promise one object of the export class across calls).
PREFIX = "region="
# pool id -> one set of tags per slot
TAGS: dict[int, list[frozenset[str]]] = {}


class Balance(wit_world.exports.Balance):

    def init(self, config: str) -> None:
        global PREFIX
        try:
            cfg = json.loads(config) if config.strip() else {}
        except ValueError as e:
            raise Err(types.Error_InvalidConfig(f"config is not JSON: {e}"))
        prefix = cfg.get("tag_prefix", "region=")
        if not isinstance(prefix, str):
            raise Err(types.Error_InvalidConfig("tag_prefix: expected a string"))
        PREFIX = prefix

    def set_backends(self, pool: int, backends: list[types.Backend]) -> None:
        tags = [frozenset()] * len(backends)
        for b in backends:
            if b.slot >= len(tags):
                tags.extend([frozenset()] * (b.slot + 1 - len(tags)))
            tags[b.slot] = frozenset(b.tags)
        TAGS[pool] = tags

    def pick(self, pool, ctx: balance.PickContext, hash_key):
        if ctx.eligible_count == 0:
            raise Err(types.Error_Unavailable("no eligible backend"))
        slots = pool.eligible_slots()
        active = pool.eligible_active()
        candidates = []
        if hash_key:
            want = PREFIX + hash_key
            tags = TAGS.get(ctx.pool, [])
            candidates = [i for i, s in enumerate(slots) if s < len(tags) and want in tags[s]]
        if not candidates:
            candidates = range(len(slots))
        least = min(active[i] for i in candidates)
        tied = [i for i in candidates if active[i] == least]
        return balance.Choice_Slot(slots[tied[ctx.sequence % len(tied)]])

"""NAME: a weir balancer plugin, made by `weir plugin new`.

Config (`config = { offset = 0 }` in weir's TOML, handed to `init` as JSON):
`offset` skips that many backends on every pick, a toy knob to show config.

Build with `weir plugin build`; test with
`weir plugin test target/weir/NAME.wasm --cases cases.toml`.
"""

import wit_world
from componentize_py_types import Err
from wit_world.exports import balance
from wit_world.imports import types

from settings import settings

# Module state lives as long as the Wasm instance; weir reuses instances
# call after call, but several may serve one plugin at once.
OFFSET = 0


def choose(pinned: str | None, sequence: int, offset: int, eligible: int) -> int:
    """The decision, kept free of host calls: an index among the eligible
    backends, the one a request's `x-pick: N` header names, else the next in
    turn, `offset` further on."""
    if pinned is not None and pinned.strip().isdigit() and int(pinned) < eligible:
        return int(pinned)
    return (sequence + offset) % eligible


class Balance(wit_world.exports.Balance):

    def init(self, config: str) -> None:
        global OFFSET
        offset = settings(config, {"offset"}).get("offset", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise Err(types.Error_InvalidConfig("offset: expected a whole number, 0 or more"))
        OFFSET = offset

    def set_backends(self, pool: int, backends: list[types.Backend]) -> None:
        # The pool's static data (addresses, weights, tags), once per change.
        pass

    def pick(self, pool, ctx: balance.PickContext, hash_key: str | None) -> balance.Choice:
        if ctx.eligible_count == 0:
            raise Err(types.Error_Unavailable("no eligible backend"))
        # HTTP requests only (None on L4); a host call, like every `pool` read.
        pinned = pool.request_header("x-pick")
        return balance.Choice_EligibleIndex(choose(pinned, ctx.sequence, OFFSET, ctx.eligible_count))

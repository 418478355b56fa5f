"""NAME: a weir router plugin, made by `weir plugin new`.

Config (`config = { prefix = "/api/", pool = "api" }` in weir's TOML, handed
to `init` as JSON): requests whose path starts with `prefix` go to `pool`;
the others to the listener's default pool.

Build with `weir plugin build`; test with
`weir plugin test target/weir/NAME.wasm --cases cases.toml`.
"""

import wit_world
from componentize_py_types import Err
from wit_world.exports import route
from wit_world.imports import types

from settings import settings

PREFIX = "/"
POOL = ""


def pool_for(path: str, prefix: str, pool: str) -> str | None:
    """The decision, kept free of host calls."""
    return pool if path.startswith(prefix) else None


class Route(wit_world.exports.Route):

    def init(self, config: str) -> None:
        global PREFIX, POOL
        cfg = settings(config, {"prefix", "pool"})
        for key in ("prefix", "pool"):
            if not isinstance(cfg.get(key), str) or not cfg[key]:
                raise Err(types.Error_InvalidConfig(f"{key}: expected a non-empty string"))
        PREFIX, POOL = cfg["prefix"], cfg["pool"]

    def route_request(self, req, host: str | None, path: str) -> route.Decision:
        # `host` and `path` come with the call; anything else is asked of
        # `req` (`req.header("x-user")`, `req.connection()`, ...).
        pool = pool_for(path, PREFIX, POOL)
        if pool is None:
            return route.Decision_NoMatch()
        return route.Decision_Forward(route.Forward(pool, None, [], []))

    def route_connection(self, conn: types.Connection, alpn: list[str]) -> route.Decision:
        # L4 listeners (TLS passthrough routes by `conn.sni`).
        return route.Decision_NoMatch()

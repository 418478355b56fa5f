"""path-router: send a request to a pool by the longest matching path prefix.

Config (JSON, from `[plugins.NAME] config` in weir's TOML):

    {"routes": [{"prefix": "/api/", "pool": "api",
                 "request_headers": {"x-routed-by": "path-router"},
                 "remove_request_headers": ["x-secret"],
                 "response_headers": {"x-pool": "api"}}]}

`request_headers` sets headers on the request before it is forwarded,
`remove_request_headers` removes some, and `response_headers` sets headers
on the response before it is returned. The longest matching prefix wins; a
request no prefix matches goes to the listener's default pool (`no-match`).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.exports import route
from wit_world.imports import types


def _edits(table, where: str) -> list[route.HeaderEdit]:
    if table is None:
        return []
    if not isinstance(table, dict):
        raise Err(types.Error_InvalidConfig(f"{where}: expected a table of header names"))
    edits = []
    for name, value in table.items():
        if not isinstance(value, str):
            raise Err(types.Error_InvalidConfig(f"{where}.{name}: expected a string"))
        edits.append(route.HeaderEdit(name, value))
    return edits


def _removals(names, where: str) -> list[route.HeaderEdit]:
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise Err(types.Error_InvalidConfig(f"{where}: expected a list of header names"))
    return [route.HeaderEdit(n, None) for n in names]


# Module state: it lives as long as the Wasm instance (componentize-py
# does not promise one object of the export class across calls).
ROUTES: list[tuple[str, route.Forward]] = []


class Route(wit_world.exports.Route):

    def init(self, config: str) -> None:
        try:
            cfg = json.loads(config) if config.strip() else {}
        except ValueError as e:
            raise Err(types.Error_InvalidConfig(f"config is not JSON: {e}"))
        routes = []
        for i, r in enumerate(cfg.get("routes", [])):
            where = f"routes[{i}]"
            prefix, pool = r.get("prefix"), r.get("pool")
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise Err(types.Error_InvalidConfig(f"{where}.prefix: expected a path starting with /"))
            if not isinstance(pool, str) or not pool:
                raise Err(types.Error_InvalidConfig(f"{where}.pool: expected a pool name"))
            forward = route.Forward(
                pool,
                None,
                _edits(r.get("request_headers"), f"{where}.request_headers")
                + _removals(r.get("remove_request_headers"), f"{where}.remove_request_headers"),
                _edits(r.get("response_headers"), f"{where}.response_headers"),
            )
            routes.append((prefix, forward))
        # Longest prefix first, so the most specific route wins.
        routes.sort(key=lambda pr: len(pr[0]), reverse=True)
        ROUTES[:] = routes

    def route_request(self, req, host, path) -> route.Decision:
        for prefix, forward in ROUTES:
            if path.startswith(prefix):
                return route.Decision_Forward(forward)
        return route.Decision_NoMatch()

    def route_connection(self, conn, alpn) -> route.Decision:
        return route.Decision_NoMatch()

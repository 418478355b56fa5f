"""NAME: a weir access filter plugin, made by `weir plugin new`.

Config (`config = { header = "x-blocked" }` in weir's TOML, handed to `init`
as JSON): requests carrying that header are denied with 403.

Build with `weir plugin build`; test with
`weir plugin test target/weir/NAME.wasm --cases cases.toml`.
"""

import wit_world
from componentize_py_types import Err
from wit_world.exports import access
from wit_world.imports import types

from settings import settings

HEADER = ""


def allowed(value: str | None) -> bool:
    """The decision, kept free of host calls."""
    return value is None


class Access(wit_world.exports.Access):

    def init(self, config: str) -> None:
        global HEADER
        header = settings(config, {"header"}).get("header")
        if not isinstance(header, str) or not header:
            raise Err(types.Error_InvalidConfig("header: expected a header name"))
        HEADER = header

    def check_connection(self, conn: types.Connection) -> access.Verdict:
        return access.Verdict_Allow()

    def check_request(self, conn: types.Connection, req) -> access.Verdict:
        if allowed(req.header(HEADER)):
            return access.Verdict_Allow()
        return access.Verdict_Deny(access.DenyInfo(f"{HEADER} present", 403, []))

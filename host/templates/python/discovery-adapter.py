"""NAME: a weir discovery adapter plugin, made by `weir plugin new`.

Config (`config = { addresses = ["127.0.0.1:8080"] }` in weir's TOML, handed
to `init` as JSON): a fixed list, a stand-in for a real source, which would
be read with the `io` imports the instance's `grants` allow.

Build with `weir plugin build`; check with
`weir plugin check target/weir/NAME.wasm --config '{ addresses = ["127.0.0.1:8080"] }'`.
"""

import wit_world
from componentize_py_types import Err
from wit_world.exports import discovery
from wit_world.imports import types

from settings import settings

ADDRESSES: list[str] = []


class Discovery(wit_world.exports.Discovery):

    def init(self, config: str) -> None:
        global ADDRESSES
        addresses = settings(config, {"addresses"}).get("addresses")
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise Err(types.Error_InvalidConfig("addresses: expected a list of host:port strings"))
        ADDRESSES = addresses

    def discover(self) -> list[discovery.Discovered]:
        return [discovery.Discovered(a, 1, 0, []) for a in ADDRESSES]

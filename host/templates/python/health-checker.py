"""NAME: a weir health checker plugin, made by `weir plugin new`.

Config (`config = { timeout_ms = 500 }` in weir's TOML, handed to `init` as
JSON): a backend is healthy when a TCP connection to it opens within
`timeout_ms` (0: as long as the check may run).

Build with `weir plugin build`; check with
`weir plugin check target/weir/NAME.wasm --config '{ timeout_ms = 500 }'`.
"""

import wit_world
from componentize_py_types import Err
from wit_world.exports import healthcheck
from wit_world.imports import io, types

from settings import settings

TIMEOUT_MS = 0


class Healthcheck(wit_world.exports.Healthcheck):

    def init(self, config: str) -> None:
        global TIMEOUT_MS
        timeout = settings(config, {"timeout_ms"}).get("timeout_ms", 0)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
            raise Err(types.Error_InvalidConfig("timeout_ms: expected a whole number, 0 or more"))
        TIMEOUT_MS = timeout

    def check(self, target: types.Backend) -> healthcheck.Health:
        try:
            io.tcp_probe(target.address, b"", 0, TIMEOUT_MS)
        except Err as e:
            reason = e.value.value
            # I/O outside the instance's grants is a config error, not a sick backend.
            if reason.startswith("denied:"):
                raise
            return healthcheck.Health_Unhealthy(reason)
        return healthcheck.Health_Healthy()

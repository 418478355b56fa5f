// NAME: a weir health checker plugin, made by `weir plugin new`.
//
// Config (`config = { timeout_ms = 500 }` in weir's TOML, handed to `init`
// as JSON): a backend is healthy when a TCP connection to it opens within
// `timeout_ms` (0: as long as the check may run).
//
// Build with `weir plugin build`; check with
// `weir plugin check target/weir/NAME.wasm --config '{ timeout_ms = 500 }'`.

import { tcpProbe } from "weir:plugin/io@0.2.0";

// SETTINGS

let timeoutMs = 0;

export const healthcheck = {
  init(config) {
    const value = settings(config, ["timeout_ms"]).timeout_ms ?? 0;
    if (!Number.isInteger(value) || value < 0) {
      throw fail("invalid-config", "timeout_ms: expected a whole number, 0 or more");
    }
    timeoutMs = value;
  },

  check(target) {
    try {
      tcpProbe(target.address, new Uint8Array(), 0, timeoutMs);
    } catch (e) {
      const reason = e.payload ? e.payload.val : String(e);
      // I/O outside the instance's grants is a config error, not a sick backend.
      if (reason.startsWith("denied:")) throw e;
      return { tag: "unhealthy", val: reason };
    }
    return { tag: "healthy" };
  },
};

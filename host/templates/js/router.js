// NAME: a weir router plugin, made by `weir plugin new`.
//
// Config (`config = { prefix = "/api/", pool = "api" }` in weir's TOML,
// handed to `init` as JSON): requests whose path starts with `prefix` go to
// `pool`; the others to the listener's default pool.
//
// Build with `weir plugin build`; test with
// `weir plugin test target/weir/NAME.wasm --cases cases.toml`.

// SETTINGS

let prefix = "/";
let pool = "";

// The decision, kept free of host calls.
function poolFor(path, prefix, pool) {
  return path.startsWith(prefix) ? pool : undefined;
}

export const route = {
  init(config) {
    const cfg = settings(config, ["prefix", "pool"]);
    for (const key of ["prefix", "pool"]) {
      if (typeof cfg[key] !== "string" || cfg[key] === "") {
        throw fail("invalid-config", `${key}: expected a non-empty string`);
      }
    }
    prefix = cfg.prefix;
    pool = cfg.pool;
  },

  // `host` and `path` come with the call; anything else is asked of `req`
  // (`req.header("x-user")`, `req.connection()`, ...).
  routeRequest(req, host, path) {
    const target = poolFor(path, prefix, pool);
    if (target === undefined) return { tag: "no-match" };
    return {
      tag: "forward",
      val: { pool: target, hashKey: undefined, requestHeaders: [], responseHeaders: [] },
    };
  },

  // L4 listeners (TLS passthrough routes by `conn.sni`).
  routeConnection(conn, alpn) {
    return { tag: "no-match" };
  },
};

// NAME: a weir access filter plugin, made by `weir plugin new`.
//
// Config (`config = { header = "x-blocked" }` in weir's TOML, handed to
// `init` as JSON): requests carrying that header are denied with 403.
//
// Build with `weir plugin build`; test with
// `weir plugin test target/weir/NAME.wasm --cases cases.toml`.

// SETTINGS

let header = "";

// The decision, kept free of host calls.
function allowed(value) {
  return value === undefined;
}

export const access = {
  init(config) {
    const value = settings(config, ["header"]).header;
    if (typeof value !== "string" || value === "") {
      throw fail("invalid-config", "header: expected a header name");
    }
    header = value;
  },

  checkConnection(conn) {
    return { tag: "allow" };
  },

  checkRequest(conn, req) {
    if (allowed(req.header(header))) return { tag: "allow" };
    return { tag: "deny", val: { reason: `${header} present`, status: 403, headers: [] } };
  },
};

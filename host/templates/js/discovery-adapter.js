// NAME: a weir discovery adapter plugin, made by `weir plugin new`.
//
// Config (`config = { addresses = ["127.0.0.1:8080"] }` in weir's TOML,
// handed to `init` as JSON): a fixed list, a stand-in for a real source,
// which would be read with the `io` imports the instance's `grants` allow.
//
// Build with `weir plugin build`; check with
// `weir plugin check target/weir/NAME.wasm --config '{ addresses = ["127.0.0.1:8080"] }'`.

// SETTINGS

let addresses = [];

export const discovery = {
  init(config) {
    const value = settings(config, ["addresses"]).addresses;
    if (!Array.isArray(value) || value.some((a) => typeof a !== "string")) {
      throw fail("invalid-config", "addresses: expected a list of host:port strings");
    }
    addresses = value;
  },

  discover() {
    return addresses.map((address) => ({ address, weight: 1, priority: 0, tags: [] }));
  },
};

// key-access: an access filter that refuses listed client addresses and
// requests without a known API key.
//
// Config (JSON, from `[plugins.NAME] config` in weir's TOML):
//
//   { "deny_clients": ["192.0.2.7", "2001:db8::1"],
//     "key_header": "x-api-key", "keys": ["k1", "k2"] }
//
// A connection from a `deny_clients` address is refused when it is accepted
// (L4), and each of its requests with 403 (HTTP). A request whose
// `key_header` is missing answers 401, one with a key not in `keys` 403;
// with no `keys` every other request is allowed.

let denyClients = new Set();
let keyHeader = "x-api-key";
let keys = null;

// A `result` error: componentize-js returns the thrown value's `payload`.
function invalid(message) {
  const e = new Error(message);
  e.payload = { tag: "invalid-config", val: message };
  return e;
}

function ipText(ip) {
  if (ip.tag === "ipv4") return ip.val.join(".");
  // Shortest form is not needed: configs are compared after the same expansion.
  return ip.val.map((g) => g.toString(16)).join(":");
}

// "2001:db8::1" -> "2001:db8:0:0:0:0:0:1", matching `ipText`; IPv4 unchanged.
function normalise(text) {
  if (!text.includes(":")) return text;
  const [head, tail] = text.split("::");
  const h = head ? head.split(":") : [];
  const t = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const zeros = tail === undefined ? [] : Array(8 - h.length - t.length).fill("0");
  return [...h, ...zeros, ...t].map((g) => parseInt(g, 16).toString(16)).join(":");
}

function deny(reason, status) {
  return { tag: "deny", val: { reason, status, headers: [] } };
}

export const access = {
  init(config) {
    let cfg = {};
    if (config.trim() !== "") {
      try {
        cfg = JSON.parse(config);
      } catch (e) {
        throw invalid(`config is not JSON: ${e}`);
      }
    }
    const clients = cfg.deny_clients ?? [];
    if (!Array.isArray(clients) || clients.some((c) => typeof c !== "string")) {
      throw invalid("deny_clients: expected a list of addresses");
    }
    denyClients = new Set(clients.map(normalise));
    if (cfg.key_header !== undefined) {
      if (typeof cfg.key_header !== "string" || cfg.key_header === "") {
        throw invalid("key_header: expected a header name");
      }
      keyHeader = cfg.key_header;
    }
    if (cfg.keys !== undefined) {
      if (!Array.isArray(cfg.keys) || cfg.keys.some((k) => typeof k !== "string")) {
        throw invalid("keys: expected a list of strings");
      }
      keys = new Set(cfg.keys);
    }
  },

  checkConnection(conn) {
    const client = ipText(conn.client.ip);
    if (denyClients.has(client)) return deny(`client ${client} is denied`, 403);
    return { tag: "allow" };
  },

  checkRequest(conn, req) {
    const client = ipText(conn.client.ip);
    if (denyClients.has(client)) return deny(`client ${client} is denied`, 403);
    if (keys === null) return { tag: "allow" };
    const key = req.header(keyHeader);
    if (key === undefined) return deny(`no ${keyHeader}`, 401);
    if (!keys.has(key)) return deny(`unknown ${keyHeader}`, 403);
    return { tag: "allow" };
  },
};

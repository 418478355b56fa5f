// A `result` error for weir: componentize-js turns a thrown value's
// `payload` into the error variant.
function fail(tag, message) {
  const e = new Error(message);
  e.payload = { tag, val: message };
  return e;
}

// The instance config, as weir hands it to `init` (JSON text), refusing
// text that is not a JSON object and keys not in `keys`.
function settings(config, keys) {
  let cfg = {};
  if (config.trim() !== "") {
    try {
      cfg = JSON.parse(config);
    } catch (e) {
      throw fail("invalid-config", `config is not JSON: ${e}`);
    }
  }
  if (cfg === null || typeof cfg !== "object" || Array.isArray(cfg)) {
    throw fail("invalid-config", "config: expected a table");
  }
  for (const key of Object.keys(cfg)) {
    if (!keys.includes(key)) {
      throw fail("invalid-config", `unknown key \`${key}\`, expected one of ${keys.join(", ")}`);
    }
  }
  return cfg;
}

// Unit tests of NAME.js, run natively by node's test runner: `npm test`
// (`node --import ./weir/testing/register.js --test`). What the host would
// answer is stubbed: plain objects stand in for resources, and `stubs`
// (weir/testing/hooks.js) for imported functions. Types for an editor:
// target/weir/types, written by `weir plugin build` (jsconfig.json).
import { test } from "node:test";
import assert from "node:assert/strict";
import { route } from "./NAME.js";

// The host's side of `request`: what the router asks beyond host and path.
const request = { header: () => undefined };

test("the prefix picks the pool", () => {
  route.init('{"prefix": "/api/", "pool": "api"}');
  const decision = route.routeRequest(request, "shop.test", "/api/users");
  assert.deepEqual(decision, {
    tag: "forward",
    val: { pool: "api", hashKey: undefined, requestHeaders: [], responseHeaders: [] },
  });
  assert.deepEqual(route.routeRequest(request, "shop.test", "/"), { tag: "no-match" });
});

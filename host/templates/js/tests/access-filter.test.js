// Unit tests of NAME.js, run natively by node's test runner: `npm test`
// (`node --import ./weir/testing/register.js --test`). What the host would
// answer is stubbed: plain objects stand in for resources, and `stubs`
// (weir/testing/hooks.js) for imported functions. Types for an editor:
// target/weir/types, written by `weir plugin build` (jsconfig.json).
import { test } from "node:test";
import assert from "node:assert/strict";
import { access } from "./NAME.js";

// The host's side of `request`: the request's headers.
const request = (headers) => ({ header: (name) => headers[name] });
const address = (ip, port) => ({ ip: { tag: "ipv4", val: ip }, port });
const conn = {
  client: address([192, 0, 2, 1], 40000),
  local: address([127, 0, 0, 1], 8080),
  listener: 0,
  protocol: "http",
};

test("a request with the header is denied, others allowed", () => {
  access.init('{"header": "x-blocked"}');
  const denied = access.checkRequest(conn, request({ "x-blocked": "1" }));
  assert.equal(denied.tag, "deny");
  assert.equal(denied.val.status, 403);
  assert.deepEqual(access.checkRequest(conn, request({})), { tag: "allow" });
});

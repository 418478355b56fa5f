// Unit tests of NAME.js, run natively by node's test runner: `npm test`
// (`node --import ./weir/testing/register.js --test`). What the host would
// answer is stubbed: plain objects stand in for resources, and `stubs`
// (weir/testing/hooks.js) for imported functions. Types for an editor:
// target/weir/types, written by `weir plugin build` (jsconfig.json).
import { test } from "node:test";
import assert from "node:assert/strict";
import { discovery } from "./NAME.js";

test("the configured addresses are discovered", () => {
  discovery.init('{"addresses": ["10.0.0.1:80", "10.0.0.2:80"]}');
  assert.deepEqual(
    discovery.discover().map((d) => d.address),
    ["10.0.0.1:80", "10.0.0.2:80"],
  );
});

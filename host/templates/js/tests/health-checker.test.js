// Unit tests of NAME.js, run natively by node's test runner: `npm test`
// (`node --import ./weir/testing/register.js --test`). What the host would
// answer is stubbed: plain objects stand in for resources, and `stubs`
// (weir/testing/hooks.js) for imported functions. Types for an editor:
// target/weir/types, written by `weir plugin build` (jsconfig.json).
import { test } from "node:test";
import assert from "node:assert/strict";
import { stubs } from "weir:stubs";
import { healthcheck } from "./NAME.js";

const backend = { slot: 0, address: "10.0.0.1:80", weight: 1, priority: 0, tags: [] };

test("a backend that accepts is healthy", () => {
  healthcheck.init('{"timeout_ms": 500}');
  const calls = [];
  stubs.io = { tcpProbe: (...args) => (calls.push(args), new Uint8Array()) };
  assert.deepEqual(healthcheck.check(backend), { tag: "healthy" });
  assert.deepEqual(calls, [["10.0.0.1:80", new Uint8Array(), 0, 500]]);
});

test("a refused connection is unhealthy", () => {
  healthcheck.init('{"timeout_ms": 500}');
  const refused = Object.assign(new Error("refused"), { payload: { tag: "other", val: "connection refused" } });
  stubs.io = {
    tcpProbe: () => {
      throw refused;
    },
  };
  assert.deepEqual(healthcheck.check(backend), { tag: "unhealthy", val: "connection refused" });
});

// Unit tests of NAME.js, run natively by node's test runner: `npm test`
// (`node --import ./weir/testing/register.js --test`). What the host would
// answer is stubbed: plain objects stand in for resources, and `stubs`
// (weir/testing/hooks.js) for imported functions. Types for an editor:
// target/weir/types, written by `weir plugin build` (jsconfig.json).
import { test } from "node:test";
import assert from "node:assert/strict";
import { balance } from "./NAME.js";

// The host's side of `pool-view`: the request's headers.
const pool = (headers) => ({ requestHeader: (name) => headers[name] });
const context = (sequence) => ({ pool: 0, eligibleCount: 3, sequence, clientHash: 0n, eligibleMask: 0b111n });

test("picks go round the eligible backends", () => {
  balance.init('{"offset": 1}');
  const picks = [0n, 1n, 2n, 3n].map((seq) => balance.pick(pool({}), context(seq), undefined));
  assert.deepEqual(picks.map((p) => p.val), [1, 2, 0, 1]);
});

test("x-pick names an eligible backend", () => {
  balance.init('{"offset": 1}');
  assert.deepEqual(balance.pick(pool({ "x-pick": "2" }), context(0n), undefined), { tag: "eligible-index", val: 2 });
  assert.deepEqual(balance.pick(pool({ "x-pick": "9" }), context(0n), undefined), { tag: "eligible-index", val: 1 });
});

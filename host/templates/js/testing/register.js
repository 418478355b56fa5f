// Lets node run a plugin's module natively, under its own test runner:
// `node --import ./weir/testing/register.js --test` (`npm test`).
// The `weir:plugin/...` imports become stubs; see hooks.js.
import { register } from "node:module";

register("./hooks.js", import.meta.url);

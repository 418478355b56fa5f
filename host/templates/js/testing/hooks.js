// Module hooks that resolve `weir:plugin/<interface>@<version>` imports to
// stubs made from the WIT package in ../wit, so that a plugin's module
// loads under node. Each imported function calls the function a test set
// in `stubs.<interface>` (camelCase names, as the bindings have them):
//
//   import { stubs } from "weir:stubs";
//   stubs.io = { tcpProbe: (address, send, readMax, timeoutMs) => new Uint8Array() };
//
// An import the test did not stub throws and names what to set. A
// resource (`SharedCounter`, `Metric`) is constructed from the class set
// under its name.
import { readFileSync, readdirSync } from "node:fs";

const WIT = new URL("../wit/", import.meta.url);

export async function resolve(specifier, context, next) {
  if (specifier === "weir:stubs" || specifier.startsWith("weir:plugin/")) {
    return { url: specifier, shortCircuit: true };
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (url === "weir:stubs") {
    return { format: "module", source: "export const stubs = {};\n", shortCircuit: true };
  }
  if (url.startsWith("weir:plugin/")) {
    const iface = url.slice("weir:plugin/".length).split("@")[0];
    return { format: "module", source: stubModule(iface), shortCircuit: true };
  }
  return next(url, context);
}

const camel = (name) => name.replace(/-([a-z0-9])/g, (_, c) => c.toUpperCase());
const pascal = (name) => camel(name).replace(/^[a-z]/, (c) => c.toUpperCase());

// The functions and resources of `interface <iface> { ... }` in the WIT
// files: declarations at the interface's own level (not a resource's).
function members(iface) {
  for (const file of readdirSync(WIT).filter((f) => f.endsWith(".wit"))) {
    const text = readFileSync(new URL(file, WIT), "utf8").replace(/\/\/.*$/gm, "");
    const start = text.search(new RegExp(`\\binterface ${iface}\\s*\\{`));
    if (start < 0) continue;
    const functions = [];
    const resources = [];
    let depth = 0;
    let statement = "";
    for (const ch of text.slice(text.indexOf("{", start))) {
      if (ch === "{") {
        depth += 1;
        if (depth === 2) {
          const resource = statement.match(/^\s*resource\s+([a-z][a-z0-9-]*)/);
          if (resource) resources.push(pascal(resource[1]));
        }
        statement = "";
      } else if (ch === "}") {
        depth -= 1;
        statement = "";
        if (depth === 0) break;
      } else if (ch === ";") {
        const func = depth === 1 && statement.match(/^\s*([a-z][a-z0-9-]*)\s*:\s*func\b/);
        if (func) functions.push(camel(func[1]));
        const resource = depth === 1 && statement.match(/^\s*resource\s+([a-z][a-z0-9-]*)/);
        if (resource) resources.push(pascal(resource[1]));
        statement = "";
      } else {
        statement += ch;
      }
    }
    return { functions, resources };
  }
  throw new Error(`weir:plugin/${iface}: no such interface in weir/wit`);
}

function stubModule(iface) {
  const key = camel(iface);
  const { functions, resources } = members(iface);
  const missing = (name) =>
    `throw new Error("weir:plugin/${iface} ${name} is not stubbed: set stubs.${key}.${name} in the test");`;
  const lines = [
    'import { stubs } from "weir:stubs";',
    ...functions.map(
      (f) => `export function ${f}(...args) { const f = stubs.${key}?.${f}; if (typeof f !== "function") ${missing(f)} return f(...args); }`,
    ),
    ...resources.map(
      (r) => `export class ${r} { constructor(...args) { const C = stubs.${key}?.${r}; if (typeof C !== "function") ${missing(r)} return new C(...args); } }`,
    ),
  ];
  return lines.join("\n") + "\n";
}

// Build: type-check + emit typings with tsc, then bundle src/index.ts and its dependencies
// (tvmjs, tokenizers, jinja) into one ES module, dist/index.js, importable by a page or a module
// worker as-is (no import map, no bundler on the user's side).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, readFileSync, rmSync, writeFileSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = resolve(root, "dist");
rmSync(dist, { recursive: true, force: true });

execFileSync(process.execPath, [resolve(root, "scripts/sync-artifact-format.mjs")], { stdio: "inherit" });
execFileSync(process.execPath, [resolve(root, "node_modules/typescript/bin/tsc"), "-p", resolve(root, "tsconfig.json")], { stdio: "inherit" });

// The packages esbuild inlines into dist/index.js, whose licenses must travel with it.
const BUNDLED = ["@mlc-ai/web-runtime", "@huggingface/tokenizers", "@huggingface/jinja"];
// Shipped beside it and loaded on the first structured-output request only (2.4 MB: its wasm is inlined).
const LAZY = { "@mlc-ai/web-xgrammar": { file: "xgrammar.js", from: "lib/index.js" } };
const lazyModules = {
  name: "lazy-modules",
  setup(b) {
    b.onResolve({ filter: /^@mlc-ai\/web-xgrammar$/ }, (args) => ({ path: "./" + LAZY[args.path].file, external: true }));
  },
};

await build({
  entryPoints: [resolve(root, "src/index.ts")],
  outfile: resolve(dist, "index.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: "linked",
  // Minifying drops the bundled packages' license headers; THIRD_PARTY_LICENSES.txt carries them.
  legalComments: "none",
  banner: { js: `/*! @astro/aae-web: bundles ${BUNDLED.join(", ")}; see THIRD_PARTY_LICENSES.txt */` },
  // tvmjs' Emscripten WASI shim mentions Node modules behind `if (node)` branches; they never run
  // in a browser, and under Node engine.ts provides `require` itself.
  external: ["fs", "path", "perf_hooks", "ws", "crypto", "url", "module"],
  logLevel: "warning",
  plugins: [lazyModules],
});
// Node: dist/node.js (CreateNodeEngine, FsStore, the HTTP server) and dist/node-server.js (the
// aae-web-node CLI). They import the engine from ./index.js rather than bundling a second copy, so
// the browser bundle stays free of `node:` imports and both share one set of classes.
const nodeSiblings = {
  name: "node-siblings",
  setup(b) {
    b.onResolve({ filter: /^\.\/(index|node)\.js$/ }, (args) =>
      args.importer.endsWith(`${args.path.slice(2, -3)}.ts`) ? undefined : { path: args.path, external: true },
    );
  },
};
for (const [entry, out, banner] of [
  ["src/node.ts", "node.js", ""],
  ["src/node_cli.ts", "node-server.js", "#!/usr/bin/env node"],
]) {
  await build({
    entryPoints: [resolve(root, entry)],
    outfile: resolve(dist, out),
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node20",
    packages: "external",
    sourcemap: "linked",
    banner: { js: banner },
    logLevel: "warning",
    plugins: [nodeSiblings],
  });
}
chmodSync(resolve(dist, "node-server.js"), 0o755);
for (const [name, { file, from }] of Object.entries(LAZY)) copyFileSync(resolve(root, "node_modules", name, from), resolve(dist, file));

// A ready-made worker script: `new Worker("/web/dist/worker.js", {type: "module"})` needs no code.
writeFileSync(
  resolve(dist, "worker.js"),
  `// Module worker hosting the engine; pair it with CreateWebWorkerEngine on the page.
import { WebWorkerEngineHandler } from "./index.js";
const handler = new WebWorkerEngineHandler();
self.onmessage = (msg) => handler.onmessage(msg);
`,
);

let notices = "Third-party software bundled into dist/index.js (and dist/xgrammar.js)\n";
for (const name of [...BUNDLED, ...Object.keys(LAZY)]) {
  const dir = resolve(root, "node_modules", name);
  const pkg = JSON.parse(readFileSync(resolve(dir, "package.json"), "utf8"));
  notices += `\n${"=".repeat(78)}\n${name} ${pkg.version} (${pkg.license})\n${"=".repeat(78)}\n`;
  for (const f of ["NOTICE", "LICENSE"]) {
    if (existsSync(resolve(dir, f))) notices += `\n${readFileSync(resolve(dir, f), "utf8").trim()}\n`;
  }
}
writeFileSync(resolve(dist, "THIRD_PARTY_LICENSES.txt"), notices);

const kb = (f) => (statSync(resolve(dist, f)).size / 1024).toFixed(0) + " KiB";
console.log(`dist/index.js ${kb("index.js")}, dist/worker.js ${kb("worker.js")}, dist/node.js ${kb("node.js")}, dist/node-server.js ${kb("node-server.js")}`);

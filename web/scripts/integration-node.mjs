// The engine on a real compiled model in Node, on Dawn's WebGPU (npm `webgpu`, a devDependency),
// running the checks of scripts/integration-checks.mjs (the browser runs the same checks: see
// tests/test_browser_integration.py). tests/test_web_node_integration.py runs the quick set on a
// freshly built stories260K; by hand:
//
//   VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json \
//     node scripts/integration-node.mjs [--quick] <built stories260K folder>
//
// --quick: load and the reference continuation only (SwiftShader under Dawn is slow: the full
// set takes minutes). --device wasm: run the folder's CPU library (model_lib.wasm) instead, with
// no WebGPU at all (Dawn is not loaded). Prints one line per check; exits 1 if any failed.
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { fetchWithConfigOverrides, runIntegrationChecks } from "./integration-checks.mjs";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const deviceAt = args.indexOf("--device");
const device = deviceAt >= 0 ? args[deviceAt + 1] : "webgpu";
const folder = args.find((a, i) => !a.startsWith("--") && i !== deviceAt + 1);
if (!folder || !["webgpu", "wasm"].includes(device)) {
  console.error("usage: node scripts/integration-node.mjs [--quick] [--device webgpu|wasm] <model-folder>");
  process.exit(2);
}
let gpu;
if (device === "webgpu") {
  const webgpu = await import("webgpu").catch(() => {
    console.error("needs Dawn for Node (npm `webgpu`, a devDependency): run npm ci");
    process.exit(2);
  });
  Object.assign(globalThis, webgpu.globals);
  gpu = webgpu.create((process.env.AAE_DAWN_OPTIONS || "").split(",").filter(Boolean));
}
const aae = await import(new URL("../dist/index.js", import.meta.url).href);

// Node's fetch does not read file: URLs; the package's Node entry reads them from disk.
const { nodeFetch: fileFetch } = await import(new URL("../dist/node.js", import.meta.url).href);

const load = (overrides) =>
  aae.CreateEngine("m", {
    appConfig: { model_list: [{ model_id: "m", model_url: pathToFileURL(resolve(folder) + "/").href }] },
    gpu,
    device,
    store: null,
    fetch: fetchWithConfigOverrides(fileFetch, overrides),
    logger: () => {},
  });

const config = JSON.parse(await readFile(join(folder, "aae-chat-config.json"), "utf8"));
const failures = await runIntegrationChecks({ aae, load, config, log: (line) => console.log(line), quick });
console.log(failures ? `${failures} check(s) failed` : "all checks passed");
process.exit(failures ? 1 : 0);

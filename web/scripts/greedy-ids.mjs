// Greedy token ids of a built model folder through the engine's forward path (TVMBackend +
// ModelRuntime from dist/index.js: the code the Engine runs), without tokenizer or sampling, so
// they compare one to one with the native engine's (tests/browser_support.py native_greedy).
//
//   node scripts/greedy-ids.mjs [--device wasm|webgpu] [--threads N] <model-folder> <prompt ids, comma-separated> <n>
//
// --device wasm (default): the folder's CPU library (model_lib.wasm), no WebGPU. --device webgpu
// runs on Dawn (npm `webgpu`; set VK_ICD_FILENAMES as integration-node.mjs says).
// --threads: the CPU library's threads (default: every core). Prints one JSON line: {"device",
// "threads", "ids" (prompt + n generated), "prefill_s", "decode_tok_s"}.
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const option = (name) => {
  const at = args.indexOf(name);
  if (at < 0) return undefined;
  const value = args[at + 1];
  args.splice(at, 2);
  return value;
};
const device = option("--device") ?? "wasm";
const threadsText = option("--threads");
const threads = threadsText === undefined ? undefined : Number(threadsText);
const rest = args;
const [folder, promptText, nText] = rest;
if (!folder || !promptText || !nText || !["webgpu", "wasm"].includes(device)) {
  console.error("usage: node scripts/greedy-ids.mjs [--device wasm|webgpu] <model-folder> <ids,comma-separated> <n>");
  process.exit(2);
}
const promptIds = promptText.split(",").map(Number);
const n = Number(nText);

let gpuDevice = null;
if (device === "webgpu") {
  const webgpu = await import("webgpu");
  Object.assign(globalThis, webgpu.globals);
  const gpu = webgpu.create([]);
  const adapter = await gpu.requestAdapter();
  gpuDevice = await adapter.requestDevice({ requiredLimits: { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize } });
}
const aae = await import(new URL("../dist/index.js", import.meta.url).href);

// Node's fetch does not read file: URLs; the package's Node entry reads them from disk.
const { nodeFetch: fileFetch } = await import(new URL("../dist/node.js", import.meta.url).href);
const baseUrl = pathToFileURL(resolve(folder) + "/").href;
const config = aae.parseChatConfig(JSON.parse(await readFile(join(folder, aae.CHAT_CONFIG_FILE), "utf8")));
const manifest = aae.parseManifest(JSON.parse(await readFile(join(folder, config.manifest), "utf8")));
const libFile = config.model_lib[device];
if (!libFile) {
  console.error(`${folder}: no model_lib.${device} in its chat config`);
  process.exit(2);
}
const loader = new aae.ArtifactLoader({ store: null, fetch: fileFetch, estimateStorage: null });
const backend = await aae.TVMBackend.load({
  wasm: new Uint8Array(await readFile(join(folder, libFile))),
  wasmUrl: new URL(libFile, baseUrl).href,
  device: gpuDevice,
  config,
  manifest,
  baseUrl,
  loader,
  logger: (m) => console.error(m),
  onCompileProgress: () => {},
  maxBatchSize: 1,
  threads,
});
const runtime = new aae.ModelRuntime(backend, {
  contextWindowSize: config.context_window_size,
  prefillChunkSize: config.prefill_chunk_size,
  maxBatchSize: 1,
  slidingWindowSize: config.sliding_window_size,
});
const argmax = (row) => {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
};
const seq = runtime.addSequence();
let t = performance.now();
let logits = await runtime.prefill(seq, promptIds);
const prefillS = (performance.now() - t) / 1000;
const out = [];
t = performance.now();
for (;;) {
  out.push(argmax(logits));
  if (out.length === n) break;
  logits = (await runtime.decode([seq], [out[out.length - 1]]))[0];
}
const decodeS = (performance.now() - t) / 1000;
const threadCount = backend.threadCount;
backend.dispose();
console.log(JSON.stringify({ device, threads: threadCount, ids: [...promptIds, ...out], prefill_s: prefillS, decode_tok_s: n > 1 ? (n - 1) / decodeS : null }));

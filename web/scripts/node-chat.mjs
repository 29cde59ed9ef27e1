// Run a built model folder through the real engine (dist/index.js) in Node, on Dawn's WebGPU.
// A quick end-to-end check without a browser: same engine code, same tvmjs, same kernels.
//
//   npm i --no-save webgpu        # Dawn for Node (not a dependency of the package)
//   VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json \
//     node scripts/node-chat.mjs <model-folder> "Once upon a time" [--chat] [--max-tokens N] [--json]
//
// Without --chat the prompt goes through completions.create (raw text, greedy), which is what a
// base model such as stories260K needs; --chat uses chat.completions.create with the template.
// Files are read from disk through a fetch shim (Node's fetch has no file: URLs); nothing is cached.
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const bool = (name) => {
  const i = args.indexOf(name);
  if (i >= 0) args.splice(i, 1);
  return i >= 0;
};
const maxTokens = Number(flag("--max-tokens") ?? 40);
const chat = bool("--chat");
const json = bool("--json");
const [folder, prompt = "Once upon a time"] = args;
if (!folder) {
  console.error("usage: node scripts/node-chat.mjs <model-folder> [prompt] [--chat] [--max-tokens N] [--json]");
  process.exit(2);
}

let webgpu;
try {
  webgpu = await import("webgpu");
} catch {
  console.error("needs Dawn for Node: npm i --no-save webgpu");
  process.exit(2);
}
Object.assign(globalThis, webgpu.globals); // GPUBufferUsage & co., which tvmjs reads as globals
const gpu = webgpu.create((process.env.AAE_DAWN_OPTIONS || "").split(",").filter(Boolean));

const { CreateEngine } = await import(new URL("../dist/index.js", import.meta.url).href);

const base = pathToFileURL(resolve(folder) + "/").href;
const fileFetch = async (input) => {
  const url = new URL(typeof input === "string" ? input : input.url);
  try {
    return new Response(await readFile(url), { status: 200 });
  } catch {
    return new Response("not found", { status: 404 });
  }
};

const t0 = performance.now();
const engine = await CreateEngine("model", {
  appConfig: { model_list: [{ model_id: "model", model_url: base }] },
  gpu,
  store: null,
  fetch: fileFetch,
  logger: (m) => json || console.error(m),
  initProgressCallback: (r) => json || console.error(`[${r.phase}] ${(r.progress * 100).toFixed(0)}% ${r.text}`),
});
const loadS = (performance.now() - t0) / 1000;

const res = chat
  ? await engine.chat.completions.create({ messages: [{ role: "user", content: prompt }], max_tokens: maxTokens, temperature: 0 })
  : await engine.completions.create({ prompt, max_tokens: maxTokens, temperature: 0 });
const text = chat ? res.choices[0].message.content : res.choices[0].text;
if (json) {
  console.log(JSON.stringify({ text, finish_reason: res.choices[0].finish_reason, usage: res.usage, load_s: loadS }));
} else {
  console.log(text);
  console.error(`finish=${res.choices[0].finish_reason} ${JSON.stringify(res.usage)} load=${loadS.toFixed(1)}s`);
}
await engine.unload();

// End-to-end checks of the engine on a real compiled model, in Node on Dawn's WebGPU (npm
// `webgpu`, a devDependency). tests/test_web_node_integration.py runs it on a freshly built
// stories260K; by hand:
//
//   VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json \
//     node scripts/integration-node.mjs <built stories260K folder>
//
// Checks greedy output against the fixture's reference (stories260K), KV-cache reuse across
// requests (same prompt, extended prompt, diverging prompt: all must give the output a fresh
// cache gives), chunked prefill, streaming, interrupt, seeds and the context-window error.
// Prints one line per check; exits 1 on the first failure.
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const folder = process.argv[2];
if (!folder) {
  console.error("usage: node scripts/integration-node.mjs <model-folder>");
  process.exit(2);
}
const webgpu = await import("webgpu").catch(() => {
  console.error("needs Dawn for Node (npm `webgpu`, a devDependency): run npm ci");
  process.exit(2);
});
Object.assign(globalThis, webgpu.globals);
const gpu = webgpu.create((process.env.AAE_DAWN_OPTIONS || "").split(",").filter(Boolean));
const aae = await import(new URL("../dist/index.js", import.meta.url).href);

// Reference from ../shared/fixtures/stories260K/README.md (transformers, fp32, greedy).
const STORY_PROMPT = "Once upon a time";
const STORY_40 =
  ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.";

const fileFetch = async (input) => {
  try {
    return new Response(await readFile(new URL(typeof input === "string" ? input : input.url)));
  } catch {
    return new Response("not found", { status: 404 });
  }
};

async function load(dir) {
  return aae.CreateEngine("m", {
    appConfig: { model_list: [{ model_id: "m", model_url: pathToFileURL(resolve(dir) + "/").href }] },
    gpu,
    store: null,
    fetch: fileFetch,
    logger: () => {},
  });
}

const greedy = (engine, prompt, max_tokens = 40, extra = {}) =>
  engine.completions.create({ prompt, max_tokens, temperature: 0, ...extra }).then((r) => r.choices[0].text);

let failures = 0;
async function check(name, fn) {
  const t = performance.now();
  try {
    await fn();
    console.log(`ok   ${name} (${((performance.now() - t) / 1000).toFixed(1)}s)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

const config = JSON.parse(await readFile(join(folder, "aae-chat-config.json"), "utf8"));
const isStories = config.model_config.vocab_size === 512 && config.model_config.hidden_size === 64;
console.log(`model ${config.model_id}${isStories ? " (stories260K reference checks on)" : ""}`);

const engine = await load(folder);
const fresh = await greedy(engine, STORY_PROMPT);

await check("greedy output matches the reference", async () => {
  if (isStories) assert.equal(fresh, STORY_40);
  assert.ok(fresh.length > 0);
});

await check("same prompt again (KV cache reused, one token re-run) gives the same text", async () => {
  assert.equal(await greedy(engine, STORY_PROMPT), fresh);
});

await check("a diverging prompt, then the original again, gives the fresh-cache text", async () => {
  await greedy(engine, "The dog", 10);
  assert.equal(await greedy(engine, STORY_PROMPT), fresh);
});

await check("an extended prompt continues like a fresh cache would", async () => {
  const head = STORY_PROMPT + fresh.slice(0, 20);
  const reused = await greedy(engine, head, 15);
  await engine.resetChat();
  assert.equal(await greedy(engine, head, 15), reused);
});

await check("streaming yields the same text and a usage chunk", async () => {
  const stream = await engine.completions.create({ prompt: STORY_PROMPT, max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = "";
  let usage;
  for await (const c of stream) {
    text += c.choices[0]?.text ?? "";
    if (c.usage) usage = c.usage;
  }
  assert.equal(text, fresh);
  assert.equal(usage.completion_tokens, 40);
  assert.ok(usage.decode_tokens_per_s > 0 && usage.prefill_tokens_per_s > 0);
});

await check("chat API on a base model: the message is the prompt", async () => {
  const r = await engine.chat.completions.create({ messages: [{ role: "user", content: STORY_PROMPT }], max_tokens: 40, temperature: 0 });
  assert.equal(r.choices[0].message.content, fresh);
});

await check("interruptGenerate stops a stream with finish_reason abort", async () => {
  const stream = await engine.completions.create({ prompt: STORY_PROMPT, max_tokens: 200, temperature: 0, stream: true, ignore_eos: true });
  let n = 0;
  let finish;
  for await (const c of stream) {
    if (++n === 3) engine.interruptGenerate();
    finish = c.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(finish, "abort");
  assert.ok(n < 20);
  assert.equal(await greedy(engine, STORY_PROMPT), fresh, "usable after an interrupt");
});

await check("seeded sampling is reproducible", async () => {
  const a = await greedy(engine, STORY_PROMPT, 20, { temperature: 1, seed: 7 });
  const b = await greedy(engine, STORY_PROMPT, 20, { temperature: 1, seed: 7 });
  assert.equal(a, b);
});

await check("a prompt over the context window is refused before running", async () => {
  const long = Array(config.context_window_size + 10).fill(3);
  await assert.rejects(engine.completions.create({ prompt: long, max_tokens: 1 }), aae.ContextWindowExceededError);
});

// Reference for the chunked-prefill check, from a fresh cache with full-size prefill chunks.
const EXT = STORY_PROMPT + fresh.slice(0, 30);
await engine.resetChat();
const extRef = await greedy(engine, EXT, 10);
await engine.unload();

await check("chunked prefill (prefill_chunk_size 3) gives the same text", async () => {
  const dir = await mkdtemp(join(tmpdir(), "aae-chunk-"));
  await cp(folder, dir, { recursive: true });
  await writeFile(join(dir, "aae-chat-config.json"), JSON.stringify({ ...config, prefill_chunk_size: 3 }));
  const e2 = await load(dir);
  try {
    assert.equal(await greedy(e2, STORY_PROMPT), fresh);
    await e2.resetChat();
    assert.equal(await greedy(e2, EXT, 10), extRef);
  } finally {
    await e2.unload();
  }
});

console.log(failures ? `${failures} check(s) failed` : "all checks passed");
process.exit(failures ? 1 : 0);

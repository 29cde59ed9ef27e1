import assert from "node:assert/strict";
import { test } from "node:test";
import { Engine } from "../src/engine.js";
import { StopStringMatcher } from "../src/text_stream.js";
import {
  ArtifactFormatError,
  ContextWindowExceededError,
  EngineNotLoadedError,
  FeatureNotSupportedError,
  ModelTooLargeError,
  InvalidRequestError,
  ModelNotFoundError,
  WebGPUNotAvailableError,
} from "../src/errors.js";
import type { ChatCompletion, ChatCompletionChunk, Completion } from "../src/protocol.js";
import { IncrementalDetokenizer } from "../src/tokenizer.js";
import { FakeCacheStorage, FakeFetch, fakeEngine, fakeModelFolder, ids, makeTokenizer, chatConfig } from "./helpers.js";
import { CacheApiStore } from "../src/cache.js";

const USER = [{ role: "user" as const, content: "hello world" }];
// BOS + "user:hello world\nassistant:"
const PROMPT1 = [1, ...ids("user:hello world\nassistant:")];

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

const content = (chunks: ChatCompletionChunk[]) => chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");

test("greedy chat completion: text, finish reason, usage, chunked prefill", async () => {
  const { engine, backend } = fakeEngine("the cat sat.");
  const r = await engine.chat.completions.create({ messages: USER });
  assert.equal(r.object, "chat.completion");
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, "fake-model");
  assert.deepEqual(r.choices[0]!.message, { role: "assistant", content: "the cat sat." });
  assert.equal(r.choices[0]!.finish_reason, "stop");
  assert.equal(r.usage.prompt_tokens, PROMPT1.length);
  assert.equal(r.usage.completion_tokens, 7); // 6 tokens + EOS
  assert.equal(r.usage.total_tokens, PROMPT1.length + 7);
  assert.equal(typeof r.usage.prefill_tokens_per_s, "number");
  assert.equal(typeof r.usage.extra.decode_tokens_per_s, "number");
  // prefill_chunk_size 8: the 9-token prompt goes in two chunks, logits only from the last.
  const prefills = backend.calls.filter((c) => c.op === "prefill");
  assert.deepEqual(prefills.map((c) => [c.tokens!.length, c.wantLogits]), [[8, false], [1, true]]);
  assert.deepEqual(prefills.flatMap((c) => c.tokens!), PROMPT1);
  assert.equal(backend.calls.filter((c) => c.op === "decode").length, 6); // EOS is never fed back
  assert.match(await engine.runtimeStatsText(), /prefill: [\d.]+ tokens\/sec, decoding: [\d.]+ tokens\/sec/);
});

test("streaming: role chunk, content chunks, finish chunk, usage chunk", async () => {
  const { engine } = fakeEngine("the cat sat.");
  const stream = await engine.chat.completions.create({ messages: USER, stream: true, stream_options: { include_usage: true } });
  const chunks = await collect(stream);
  assert.deepEqual(chunks[0]!.choices[0]!.delta, { role: "assistant", content: "" });
  assert.equal(content(chunks), "the cat sat.");
  const finish = chunks[chunks.length - 2]!;
  assert.equal(finish.choices[0]!.finish_reason, "stop");
  assert.deepEqual(finish.choices[0]!.delta, {});
  const last = chunks[chunks.length - 1]!;
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage!.completion_tokens, 7);
  for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
  assert.ok(chunks.every((c) => c.id === chunks[0]!.id && c.object === "chat.completion.chunk"));

  const plain = await collect(await engine.chat.completions.create({ messages: USER, stream: true }));
  assert.ok(plain.every((c) => !("usage" in c)), "no usage field unless asked");
});

test("max_tokens ends with finish_reason length", async () => {
  const { engine } = fakeEngine("the cat sat.");
  const r = await engine.chat.completions.create({ messages: USER, max_tokens: 3 });
  assert.equal(r.choices[0]!.message.content, "the cat");
  assert.equal(r.choices[0]!.finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 3);
});

test("stop strings cut the text, also across tokens, and are never emitted", async () => {
  const cases: Array<[string | string[], string, string]> = [
    ["sat", "the cat ", "stop"],
    [" c", "the", "stop"],
    [["zzz", "t s"], "the ca", "stop"],
    ["cat dog", "the cat sat.", "stop"], // a held-back prefix that never completes is released
    ["sat.x", "the cat sat.", "stop"],
  ];
  for (const [stop, want, reason] of cases) {
    const { engine } = fakeEngine("the cat sat.");
    const r = await engine.chat.completions.create({ messages: USER, stop });
    assert.equal(r.choices[0]!.message.content, want, `stop=${JSON.stringify(stop)}`);
    assert.equal(r.choices[0]!.finish_reason, reason);
    const s = await collect(await engine.chat.completions.create({ messages: USER, stop, stream: true }));
    assert.equal(content(s), want, `streamed, stop=${JSON.stringify(stop)}`);
  }
});

test("StopStringMatcher holds back only possible stop prefixes", () => {
  const m = new StopStringMatcher(["</end>"]);
  assert.deepEqual(m.feed("abc<"), { emit: "abc", stopped: false });
  assert.deepEqual(m.feed("/e"), { emit: "", stopped: false });
  assert.deepEqual(m.feed("x"), { emit: "</ex", stopped: false });
  assert.deepEqual(m.feed("</end>tail"), { emit: "", stopped: true });
  assert.equal(new StopStringMatcher([]).feed("x").emit, "x");
});

test("a prompt longer than the context window fails before any GPU work", async () => {
  const { engine, backend } = fakeEngine("the cat", { context_window_size: 5 });
  await assert.rejects(engine.chat.completions.create({ messages: USER }), (e: unknown) => {
    assert.ok(e instanceof ContextWindowExceededError);
    assert.equal(e.promptTokens, PROMPT1.length);
    assert.equal(e.contextWindowSize, 5);
    return true;
  });
  // Streaming fails at create(), not mid-iteration.
  await assert.rejects(engine.chat.completions.create({ messages: USER, stream: true }), ContextWindowExceededError);
  assert.deepEqual(backend.calls, []);
});

test("generation stops at the context window with finish_reason length", async () => {
  const { engine } = fakeEngine("the cat sat.", { context_window_size: PROMPT1.length + 3 });
  const r = await engine.chat.completions.create({ messages: USER });
  assert.equal(r.choices[0]!.finish_reason, "length");
  assert.equal(r.usage.total_tokens, PROMPT1.length + 3);
});

test("multi-turn chat reuses the KV cache for the shared prefix", async () => {
  const { engine, backend } = fakeEngine("the cat sat.");
  const r1 = await engine.chat.completions.create({ messages: USER });
  const turn2 = [...USER, { role: "assistant" as const, content: r1.choices[0]!.message.content }, { role: "user" as const, content: "a b" }];
  backend.calls.length = 0;
  await engine.chat.completions.create({ messages: turn2 });
  const prompt2 = [1, ...ids("user:hello world\nassistant:the cat sat.\nuser:a b\nassistant:")];
  const prefilled = backend.calls.filter((c) => c.op === "prefill").flatMap((c) => c.tokens!);
  // Only what follows prompt 1 + the 6 decoded reply tokens is prefilled.
  assert.deepEqual(prefilled, prompt2.slice(PROMPT1.length + 6));
  assert.ok(!backend.calls.some((c) => c.op === "reset" || c.op === "popN"));
  assert.deepEqual(backend.seq.slice(0, prompt2.length), prompt2, "the cache holds exactly the prompt");
});

test("a diverging conversation pops the KV cache back to the common prefix", async () => {
  const { engine, backend } = fakeEngine("the cat sat.");
  await engine.chat.completions.create({ messages: USER });
  backend.calls.length = 0;
  await engine.chat.completions.create({ messages: [{ role: "user", content: "a b" }] });
  const prompt = [1, ...ids("user:a b\nassistant:")];
  assert.deepEqual(backend.calls[0], { op: "popN", seqId: 0, n: PROMPT1.length + 6 - 3 }); // keep BOS "user" ":"
  assert.deepEqual(backend.seq.slice(0, prompt.length), prompt);

  // The same prompt again: everything is cached but one token is re-run for its logits.
  backend.calls.length = 0;
  await engine.chat.completions.create({ messages: [{ role: "user", content: "a b" }] });
  const pf = backend.calls.filter((c) => c.op === "prefill");
  assert.equal(pf.length, 1);
  assert.deepEqual(pf[0]!.tokens, [prompt[prompt.length - 1]]);
});

test("without popN support the cached sequence is freed and the prompt fully prefilled", async () => {
  const { engine, backend } = fakeEngine("the cat sat.");
  backend.supportsPopN = false;
  await engine.chat.completions.create({ messages: USER });
  backend.calls.length = 0;
  await engine.chat.completions.create({ messages: [{ role: "user", content: "a b" }] });
  assert.deepEqual(backend.calls.slice(0, 2), [{ op: "remove", seqId: 0 }, { op: "add", seqId: 1 }]);
  assert.deepEqual(backend.seq.slice(0, 1 + ids("user:a b\nassistant:").length), [1, ...ids("user:a b\nassistant:")]);
});

test("resetChat empties the cache", async () => {
  const { engine, backend } = fakeEngine("the cat");
  await engine.chat.completions.create({ messages: USER });
  await engine.resetChat();
  assert.deepEqual(backend.seq, []);
  backend.calls.length = 0;
  await engine.chat.completions.create({ messages: USER });
  assert.deepEqual(backend.calls.filter((c) => c.op === "prefill").flatMap((c) => c.tokens!), PROMPT1);
});

test("interruptGenerate ends a stream with finish_reason abort", async () => {
  const { engine, backend } = fakeEngine("a b a b a b a b a b a b a b a b");
  backend.delayMs = 2;
  const stream = await engine.chat.completions.create({ messages: USER, stream: true });
  const chunks: ChatCompletionChunk[] = [];
  for await (const c of stream) {
    chunks.push(c);
    if (chunks.length === 4) engine.interruptGenerate();
  }
  const last = chunks[chunks.length - 1]!;
  assert.equal(last.choices[0]!.finish_reason, "abort");
  assert.ok(content(chunks).length < "a b a b a b a b a b a b a b a b".length);
  // The engine is usable afterwards.
  const r = await engine.chat.completions.create({ messages: USER, max_tokens: 2 });
  assert.equal(r.choices[0]!.finish_reason, "length");
});

test("breaking out of a stream releases the engine", async () => {
  const { engine } = fakeEngine("a b a b a b a b");
  const stream = await engine.chat.completions.create({ messages: USER, stream: true });
  let n = 0;
  for await (const _ of stream) if (++n === 3) break;
  const r = await engine.chat.completions.create({ messages: USER });
  assert.equal(r.choices[0]!.message.content, "a b a b a b a b");
});

test("concurrent requests run one after the other", async () => {
  const { engine, backend } = fakeEngine("the cat");
  backend.delayMs = 1;
  const [a, b] = await Promise.all([
    engine.chat.completions.create({ messages: USER }),
    engine.chat.completions.create({ messages: [{ role: "user", content: "a" }] }),
  ]);
  assert.equal(a.choices[0]!.message.content, "the cat");
  assert.equal(b.choices[0]!.message.content, "the cat");
  // All of request 1's decodes happen before request 2's prefill.
  const ops = backend.calls.map((c) => c.op);
  const secondStart = ops.lastIndexOf("popN");
  assert.ok(secondStart > ops.indexOf("decode"));
  assert.ok(!ops.slice(secondStart).includes("reset"));
});

test("seeded sampling is reproducible", async () => {
  const run = async (seed: number) => {
    const { engine, backend } = fakeEngine("x");
    backend.uniform = true;
    const r = await engine.chat.completions.create({ messages: USER, temperature: 1, top_p: 1, seed, max_tokens: 12 });
    return r.choices[0]!.message.content;
  };
  assert.equal(await run(5), await run(5));
  assert.notEqual(await run(5), await run(6));
});

test("ignore_eos keeps going to max_tokens", async () => {
  const { engine } = fakeEngine("the cat");
  const r = await engine.chat.completions.create({ messages: USER, ignore_eos: true, max_tokens: 6 });
  assert.equal(r.usage.completion_tokens, 6);
  assert.equal(r.choices[0]!.finish_reason, "length");
});

test("logprobs report each content token", async () => {
  const { engine } = fakeEngine("the cat");
  const r = await engine.chat.completions.create({ messages: USER, logprobs: true, top_logprobs: 2 });
  const lp = r.choices[0]!.logprobs!.content!;
  assert.deepEqual(lp.map((x) => x.token), ["the", " ", "cat"]);
  assert.ok(lp.every((x) => x.logprob <= 0 && x.top_logprobs.length === 2));
  assert.equal(lp[0]!.top_logprobs[0]!.token, "the");
  assert.deepEqual(lp[2]!.bytes, [99, 97, 116]);
});

test("request errors: bad field, wrong model, bad logit_bias id, no model loaded", async () => {
  const { engine } = fakeEngine("the cat");
  await assert.rejects(engine.chat.completions.create({ messages: USER, top_p: 2 }), (e: unknown) => e instanceof InvalidRequestError && e.field === "top_p");
  await assert.rejects(engine.chat.completions.create({ messages: USER, model: "other" }), (e: unknown) => e instanceof InvalidRequestError && e.field === "model");
  await assert.rejects(engine.chat.completions.create({ messages: USER, logit_bias: { "99999": 1 } }), (e: unknown) => e instanceof InvalidRequestError && e.field === "logit_bias");
  await assert.rejects(new Engine().chat.completions.create({ messages: USER }), EngineNotLoadedError);
});

test("completions API: raw prompt, token-id prompt, echo, streaming", async () => {
  const { engine } = fakeEngine("the cat", { chat_template: null });
  const r = (await engine.completions.create({ prompt: "hello", max_tokens: 10 })) as Completion;
  assert.equal(r.object, "text_completion");
  assert.equal(r.choices[0]!.text, "the cat");
  assert.equal(r.usage!.prompt_tokens, 2); // BOS + "hello"
  const e = await engine.completions.create({ prompt: "hello", echo: true, max_tokens: 10 });
  assert.equal(e.choices[0]!.text, "hellothe cat");
  const t = await engine.completions.create({ prompt: [1, 3], max_tokens: 2 });
  assert.equal(t.choices[0]!.text, "the ");
  assert.equal(t.choices[0]!.finish_reason, "length");
  const s = await collect(await engine.completions.create({ prompt: "hello", stream: true, max_tokens: 10 }));
  assert.equal(s.map((c) => c.choices[0]?.text ?? "").join(""), "the cat");
  assert.equal(s[s.length - 1]!.choices[0]!.finish_reason, "stop");
});

test("base model chat (no template): the prompt is the message text", async () => {
  const { engine, backend } = fakeEngine("the cat", { chat_template: null });
  await engine.chat.completions.create({ messages: [{ role: "user", content: "hello world" }] });
  assert.deepEqual(backend.calls.find((c) => c.op === "prefill")!.tokens, [1, ...ids("hello world")]);
});

test("IncrementalDetokenizer emits the same text as a full decode", () => {
  const tok = makeTokenizer();
  const d = new IncrementalDetokenizer(tok);
  const toks = ids("hello world, the cat sat on the mat.");
  const text = toks.map((t) => d.push(t)).join("") + d.flush();
  assert.equal(text, "hello world, the cat sat on the mat.");
});

test("unload disposes the backend; later calls fail clearly", async () => {
  const { engine, backend } = fakeEngine("the cat");
  await engine.unload();
  assert.equal(backend.disposed, true);
  await assert.rejects(engine.chat.completions.create({ messages: USER }), EngineNotLoadedError);
});

// -- reload() failure paths (no GPU here, so these stop before tvmjs) --------------------------

const BASE = "http://127.0.0.1:8080/models/fake-model/";

function reloadEngine(gpu: GPU | undefined, over: { required?: string[]; tensorParallelShards?: number } = {}) {
  const folder = fakeModelFolder(BASE, 2);
  if (over.required || over.tensorParallelShards) {
    const changes = { required_features: over.required ?? [], tensor_parallel_shards: over.tensorParallelShards ?? 1 };
    folder.files.set(BASE + "aae-chat-config.json", new TextEncoder().encode(JSON.stringify(chatConfig(changes))));
  }
  const fetch = new FakeFetch();
  for (const [u, b] of folder.files) fetch.routes.set(u, b);
  const reports: string[] = [];
  const config = {
    appConfig: { model_list: [{ model_id: "fake-model", model_url: BASE }, { model_id: "missing", model_url: "http://127.0.0.1:8080/models/missing/" }] },
    fetch: fetch.fetch as typeof globalThis.fetch,
    store: new CacheApiStore(new FakeCacheStorage()),
    logger: () => {},
    initProgressCallback: (r: { text: string }) => void reports.push(r.text),
    ...(gpu ? { gpu } : {}),
  };
  return { engine: new Engine(config), fetch, reports };
}

test("reload: unknown model id and missing folder are ModelNotFoundError", async () => {
  const { engine } = reloadEngine(undefined);
  await assert.rejects(engine.reload("nope"), (e: unknown) => e instanceof ModelNotFoundError && /known: fake-model, missing/.test((e as Error).message));
  await assert.rejects(engine.reload("missing"), (e: unknown) => e instanceof ModelNotFoundError && /No aae-chat-config.json/.test((e as Error).message));
});

test("reload: no WebGPU fails before any shard is downloaded", async () => {
  const { engine, fetch, reports } = reloadEngine(undefined);
  await assert.rejects(engine.reload("fake-model"), WebGPUNotAvailableError);
  assert.deepEqual(fetch.calls, [BASE + "aae-chat-config.json"]);
  assert.ok(reports.length > 0);
  const noAdapter = { requestAdapter: async () => null } as unknown as GPU;
  await assert.rejects(reloadEngine(noAdapter).engine.reload("fake-model"), WebGPUNotAvailableError);
});

test("reload: a missing shader-f16 is FeatureNotSupportedError", async () => {
  const adapter = { features: new Set<string>(), limits: {}, info: { vendor: "fake" }, requestDevice: async () => ({}) };
  const gpu = { requestAdapter: async () => adapter } as unknown as GPU;
  const { engine, fetch } = reloadEngine(gpu, { required: ["shader-f16"] });
  await assert.rejects(engine.reload("fake-model"), (e: unknown) => e instanceof FeatureNotSupportedError && e.feature === "shader-f16");
  assert.equal(fetch.calls.length, 1);
});

test("reload: a model configured for tensor parallelism is refused before the GPU or any shard", async () => {
  const { engine, fetch } = reloadEngine(undefined, { tensorParallelShards: 2 });
  await assert.rejects(
    engine.reload("fake-model"),
    (e: unknown) =>
      e instanceof ArtifactFormatError &&
      (e as Error).message.endsWith(
        "aae-chat-config.json: this model was configured with tensor_parallel_shards=2, but AAE libraries run on one device; " +
          "regenerate it with `sphere_aae gen_config --tensor-parallel-shards 1`",
      ),
  );
  assert.deepEqual(fetch.calls, [BASE + "aae-chat-config.json"]);
});

export type { ChatCompletion };

// -- n, several prompts, completion logprobs: accepted as the native engine accepts them ----------

test("n choices: choice i is the solo run seeded seed + i", async () => {
  const run = async (body: { seed: number; n?: number }) => {
    const { engine, backend } = fakeEngine("x");
    backend.uniform = true;
    const r = await engine.chat.completions.create({ messages: USER, temperature: 1, top_p: 0.9, max_tokens: 8, return_token_ids: true, ...body });
    return r.choices.map((c) => c.token_ids);
  };
  const both = await run({ seed: 5, n: 2 });
  assert.deepEqual(both, [...(await run({ seed: 5 })), ...(await run({ seed: 6 }))]);
  assert.notDeepEqual(both[0], both[1]);
});

test("n choices stream: a role chunk per choice, then each choice's deltas and finish", async () => {
  const { engine } = fakeEngine("the cat");
  const chunks = await collect(await engine.chat.completions.create({ messages: USER, stream: true, n: 2, stream_options: { include_usage: true } }));
  assert.deepEqual(chunks.slice(0, 2).map((c) => [c.choices[0]!.index, c.choices[0]!.delta.role]), [[0, "assistant"], [1, "assistant"]]);
  for (const i of [0, 1]) {
    const mine = chunks.filter((c) => c.choices[0]?.index === i);
    assert.equal(mine.map((c) => c.choices[0]!.delta.content ?? "").join(""), "the cat");
    assert.equal(mine[mine.length - 1]!.choices[0]!.finish_reason, "stop");
  }
  assert.equal(chunks[chunks.length - 1]!.usage!.completion_tokens, 8); // 2 x (3 tokens + EOS)
});

test("completions: several prompts, n each, indexes prompt * n + i, usage counts each prompt once", async () => {
  const { engine } = fakeEngine("the cat", { chat_template: null });
  const r = await engine.completions.create({ prompt: ["hello", [1, 3]], n: 2, max_tokens: 10, echo: true, return_token_ids: true });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2, 3]);
  assert.deepEqual(r.choices.map((c) => c.text), ["hellothe cat", "hellothe cat", "hellothe cat", "hellothe cat"]);
  assert.deepEqual(r.prompt_token_ids, [[1, ...ids("hello")], [1, 3]]);
  assert.equal(r.usage!.prompt_tokens, 4);
});

test("completions logprobs: tokens, logprobs, alternatives and code-point offsets (echo included)", async () => {
  const { engine } = fakeEngine("the cat", { chat_template: null });
  const r = await engine.completions.create({ prompt: "hello", max_tokens: 10, logprobs: 2, echo: false });
  const lp = r.choices[0]!.logprobs!;
  assert.deepEqual(lp.tokens, ["the", " ", "cat"]);
  assert.deepEqual(lp.text_offset, [0, 3, 4]);
  assert.ok(lp.token_logprobs.every((x) => x <= 0) && lp.top_logprobs.every((d) => Object.keys(d).length === 2));
  assert.equal(Object.keys(lp.top_logprobs[0]!)[0], "the");
});

// -- device fit before download -------------------------------------------------------------------

function limitedGpu(limits: Record<string, number>): GPU {
  const adapter = { features: new Set<string>(), limits, info: { vendor: "fake" }, requestDevice: async () => ({ limits, lost: new Promise(() => {}), destroy: () => {} }) };
  return { requestAdapter: async () => adapter } as unknown as GPU;
}

test("device fit: a tensor over the adapter's binding limit is refused before any shard or library is fetched", async () => {
  // The fake model's largest tensor is 256 bytes; this adapter binds at most 200.
  const { engine, fetch } = reloadEngine(limitedGpu({ maxStorageBufferBindingSize: 200, maxBufferSize: 1 << 30 }));
  await assert.rejects(engine.reload("fake-model"), (e: unknown) => {
    assert.ok(e instanceof ModelTooLargeError, String(e));
    assert.equal(e.limit, "maxStorageBufferBindingSize");
    assert.equal(e.needBytes, 256);
    assert.equal(e.limitBytes, 200);
    assert.match((e as Error).message, /tensor w0 needs .* fewer bits per weight/);
    return true;
  });
  assert.deepEqual(fetch.calls, [BASE + "aae-chat-config.json", BASE + "tensor-manifest.json"]);
});

test("device fit: a KV cache over the binding limit is refused with the context window that would fit", async () => {
  // ctx 64 x 1 sequence x (2 x 1 head x 8 dims x 4 bytes) = 4 KiB per layer; allow 1 KiB.
  const { engine, fetch } = reloadEngine(limitedGpu({ maxStorageBufferBindingSize: 1024, maxBufferSize: 1 << 30 }));
  await assert.rejects(engine.reload("fake-model"), (e: unknown) => {
    assert.ok(e instanceof ModelTooLargeError, String(e));
    assert.equal(e.needBytes, 64 * 64);
    assert.equal(e.suggestion, "context_window_size <= 16");
    return true;
  });
  assert.equal(fetch.calls.length, 2);
});

test("device fit: a model within the limits goes on to download", async () => {
  const { engine, fetch } = reloadEngine(limitedGpu({ maxStorageBufferBindingSize: 1 << 20, maxBufferSize: 1 << 20 }));
  // The fake library is not a real wasm, so the load fails later, but only after the fit check.
  await assert.rejects(engine.reload("fake-model"), (e: unknown) => !(e instanceof ModelTooLargeError));
  assert.ok(fetch.calls.includes(BASE + "fake-model-webgpu.wasm"), JSON.stringify(fetch.calls));
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { MessageChannel } from "node:worker_threads";
import type { Engine, EngineConfig, InitProgressReport } from "../src/engine.js";
import { ContextWindowExceededError, InvalidRequestError } from "../src/errors.js";
import type { ChatCompletionChunk } from "../src/protocol.js";
import { WebWorkerEngine, WebWorkerEngineHandler, type WorkerLike } from "../src/worker.js";
import { fakeEngine, type FakeBackend } from "./helpers.js";

const USER = [{ role: "user" as const, content: "hello world" }];

/**
 * A page/worker pair over a real MessageChannel (structured clone included): port1 plays the
 * worker, port2 the page's Worker object.
 */
function pair(reply = "the cat sat.", over = {}) {
  const { port1, port2 } = new MessageChannel();
  let backend!: FakeBackend;
  let engineConfig!: EngineConfig;
  const handler = new WebWorkerEngineHandler({
    postMessage: (m) => port1.postMessage(m),
    createEngine: (config) => {
      engineConfig = config;
      const f = fakeEngine(reply, over);
      backend = f.backend;
      f.engine.updateConfig(config);
      return f.engine;
    },
  });
  port1.on("message", (data) => handler.onmessage({ data }));
  const progress: InitProgressReport[] = [];
  const proxy = new WebWorkerEngine(port2 as unknown as WorkerLike, { initProgressCallback: (r) => progress.push(r) });
  const close = () => {
    port1.close();
    port2.close();
  };
  return { proxy, handler, backend, engineConfig, progress, close };
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

test("non-streaming completion through the worker", async () => {
  const { proxy, close } = pair();
  try {
    const r = await proxy.chat.completions.create({ messages: USER });
    assert.equal(r.choices[0]!.message.content, "the cat sat.");
    assert.equal(r.usage.completion_tokens, 7);
    assert.match(await proxy.runtimeStatsText(), /tokens\/sec/);
  } finally {
    close();
  }
});

test("streaming through the worker yields the same chunks", async () => {
  const { proxy, close } = pair();
  try {
    const stream = await proxy.chat.completions.create({ messages: USER, stream: true, stream_options: { include_usage: true } });
    const chunks = await collect(stream);
    assert.equal(chunks.map((c) => c.choices[0]?.delta.content ?? "").join(""), "the cat sat.");
    assert.equal(chunks[chunks.length - 2]!.choices[0]!.finish_reason, "stop");
    assert.equal(chunks[chunks.length - 1]!.usage!.completion_tokens, 7);
    const text = await proxy.completions.create({ prompt: "hello", max_tokens: 3 });
    assert.equal(text.choices[0]!.text, "the cat");
  } finally {
    close();
  }
});

test("typed errors survive the trip", async () => {
  const { proxy, close } = pair("x", { context_window_size: 4 });
  try {
    await assert.rejects(proxy.chat.completions.create({ messages: USER, temperature: -1 }), (e: unknown) => {
      assert.ok(e instanceof InvalidRequestError);
      assert.equal(e.field, "temperature");
      return true;
    });
    await assert.rejects(proxy.chat.completions.create({ messages: USER, stream: true }), ContextWindowExceededError);
  } finally {
    close();
  }
});

test("interruptGenerate reaches a running generation", async () => {
  const { proxy, backend, close } = pair("a b a b a b a b a b a b a b a b a b a b");
  try {
    backend.delayMs = 3;
    const stream = await proxy.chat.completions.create({ messages: USER, stream: true });
    const chunks: ChatCompletionChunk[] = [];
    for await (const c of stream) {
      chunks.push(c);
      if (chunks.length === 3) proxy.interruptGenerate();
    }
    assert.equal(chunks[chunks.length - 1]!.choices[0]!.finish_reason, "abort");
  } finally {
    close();
  }
});

test("breaking out of a proxied stream cancels it in the worker", async () => {
  const { proxy, backend, close } = pair("a b a b a b a b a b a b a b a b a b a b");
  try {
    backend.delayMs = 3;
    const stream = await proxy.chat.completions.create({ messages: USER, stream: true });
    let n = 0;
    for await (const _ of stream) if (++n === 2) break;
    // The worker stops and frees the engine: the next request completes.
    const r = await proxy.chat.completions.create({ messages: USER, max_tokens: 2 });
    assert.equal(r.choices[0]!.finish_reason, "length");
    const decodes = backend.calls.filter((c) => c.op === "decode").length;
    assert.ok(decodes < 25, `worker kept generating: ${decodes} decodes`);
  } finally {
    close();
  }
});

test("progress reports are forwarded to the page's callback", async () => {
  const { proxy, engineConfig, progress, close } = pair();
  try {
    const report: InitProgressReport = { progress: 0.5, timeElapsed: 1, text: "half", phase: "download", loadedBytes: 5, totalBytes: 10, loadedShards: 1, totalShards: 2, cachedBytes: 0 };
    engineConfig.initProgressCallback!(report);
    await proxy.runtimeStatsText(); // a round trip: the progress message was sent before its reply
    assert.deepEqual(progress, [report]);
  } finally {
    close();
  }
});

test("resetChat, unload, and configure round-trip", async () => {
  const { proxy, handler, backend, close } = pair();
  try {
    await proxy.configure({ appConfig: { model_list: [] }, maxConcurrentDownloads: 2, chatTemplate: "{{ tools }}" });
    // The options reach the worker's engine (they apply from its next load).
    assert.equal((handler.engine as unknown as { config: EngineConfig }).config.chatTemplate, "{{ tools }}");
    await proxy.chat.completions.create({ messages: USER });
    await proxy.resetChat();
    assert.deepEqual(backend.seq, []);
    await proxy.unload();
    assert.equal(backend.disposed, true);
  } finally {
    close();
  }
});

test("messages that are not ours are ignored on both sides", async () => {
  const { proxy, handler, close } = pair();
  try {
    handler.onmessage({ data: { hello: "world" } });
    handler.onmessage({ data: null });
    const r = await proxy.chat.completions.create({ messages: USER, max_tokens: 1 });
    assert.equal(r.choices[0]!.message.content, "the");
  } finally {
    close();
  }
});

test("a request's AbortSignal cancels it in the worker alone, streaming or not", async () => {
  const { proxy, handler, backend, close } = pair("a b a b a b a b a b a b a b a b a b a b", { max_batch_size: 2 });
  try {
    backend.delayMs = 2;
    const engine = handler.engine as Engine;
    const controller = new AbortController();
    const other = proxy.chat.completions.create({ messages: USER, max_tokens: 12 });
    const stream = await proxy.chat.completions.create({ messages: USER, stream: true }, { signal: controller.signal });
    await assert.rejects(
      (async () => {
        let n = 0;
        for await (const _ of stream) if (++n === 3) controller.abort();
      })(),
      (e: unknown) => (e as Error).name === "AbortError",
    );
    const plain = new AbortController();
    const pending = proxy.chat.completions.create({ messages: USER }, { signal: plain.signal });
    setTimeout(() => plain.abort(), 6);
    await assert.rejects(pending, (e: unknown) => (e as Error).name === "AbortError");
    // The other request is untouched; the aborted ones' sequences are gone in the worker.
    const r = await other;
    assert.equal(r.choices[0]!.message.content, "a b a b a b "); // 12 tokens
    await new Promise((res) => setTimeout(res, 10));
    assert.equal(engine.kvCacheStats().activeSequences, 0);
  } finally {
    close();
  }
});

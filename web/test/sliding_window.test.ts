// The sliding-window rules of ARTIFACT.md ("Sliding-window models"), as the engine applies them:
// the window lives in the kernels, so the KV cache keeps every token (created without TVM's
// evicting window, no enable_sliding_window), popN rolls it back at any length, the context window
// bounds a sequence as for any model; and prefill chunks never cross the window edge.
import assert from "node:assert/strict";
import { test } from "node:test";
import { KV_BUILTINS, KV_PAGE_SIZE } from "../src/artifact.js";
import { ContextWindowExceededError } from "../src/errors.js";
import { kvCacheArgs, prefillChunkLength } from "../src/model_runtime.js";
import * as engineModule from "../src/engine.js";
import { chatConfig, fakeEngine, ids } from "./helpers.js";

const USER = [{ role: "user" as const, content: "hello world" }];
const PROMPT1 = [1, ...ids("user:hello world\nassistant:")]; // 9 tokens
const REPLY = "the cat sat."; // 6 tokens, then EOS

test("chunk rule: min(prefill_chunk_size, W - seq_len) below the window, 1 at and past it", () => {
  // [seq_len, prefill_chunk_size, W, expected]
  const cases: Array<[number, number, number, number]> = [
    [0, 8, -1, 8], // no window: always the chunk size
    [1000, 8, -1, 8],
    [0, 8, 0, 8], // 0 also means no window
    [0, 8, 32, 8], // window far away
    [24, 8, 32, 8], // the chunk ends exactly at the edge
    [25, 8, 32, 7], // it would cross: cut at the edge
    [31, 8, 32, 1],
    [32, 8, 32, 1], // at the edge: one token at a time
    [33, 8, 32, 1],
    [500, 8, 32, 1],
    [0, 512, 4096, 512],
    [4000, 512, 4096, 96],
  ];
  for (const [seqLen, chunk, w, want] of cases) {
    assert.equal(prefillChunkLength(seqLen, chunk, w), want, `seq_len=${seqLen} chunk=${chunk} W=${w}`);
  }
});

test("prefilling any prompt: chunks add up to it and none crosses the window edge", () => {
  for (const w of [1, 2, 5, 16, 17, 33]) {
    for (const chunk of [1, 3, 8, 16]) {
      for (const start of [0, 4, 20]) {
        let seq = start;
        const end = start + 50;
        while (seq < end) {
          const n = Math.min(prefillChunkLength(seq, chunk, w), end - seq);
          assert.ok(n >= 1 && n <= chunk);
          assert.ok(seq >= w || seq + n <= w, `W=${w} chunk=${chunk}: [${seq}, ${seq + n}) crosses the edge`);
          if (seq >= w) assert.equal(n, 1);
          seq += n;
        }
        assert.equal(seq, end);
      }
    }
  }
});

test("the KV cache is created the same with or without a window: whole context, no evicting window", () => {
  for (const w of [-1, 5, 16, 4096]) {
    const config = chatConfig({ sliding_window_size: w, context_window_size: 256, prefill_chunk_size: 32 });
    // create_tir_paged_kv_cache(max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window)
    assert.deepEqual(kvCacheArgs(config.context_window_size, config.prefill_chunk_size, 1), [1, 256, 32, KV_PAGE_SIZE, 0], `W=${w}`);
  }
  // TVM's per-sequence evicting window is gone from the contract and from the engine.
  assert.ok(!("enable_sliding_window" in KV_BUILTINS));
  assert.ok(!("kvSlidingWindowSize" in engineModule) && !("canPopKV" in engineModule));
});

test("the engine prefills a sliding-window model in window-respecting chunks", async () => {
  // W = 5, chunk 3, 9 prompt tokens: 3 (to 3), 2 (to the edge at 5), then 1, 1, 1, 1.
  const { engine, backend } = fakeEngine(REPLY, { sliding_window_size: 5, prefill_chunk_size: 3 });
  const r = await engine.chat.completions.create({ messages: USER });
  assert.equal(r.choices[0]!.message.content, REPLY);
  const prefills = backend.calls.filter((c) => c.op === "prefill");
  assert.deepEqual(prefills.map((c) => c.tokens!.length), [3, 2, 1, 1, 1, 1]);
  assert.deepEqual(prefills.map((c) => c.wantLogits), [false, false, false, false, false, true]);
  assert.deepEqual(prefills.flatMap((c) => c.tokens!), PROMPT1);

  // The same model without a window takes the prompt in plain chunks of 3.
  const plain = fakeEngine(REPLY, { sliding_window_size: -1, prefill_chunk_size: 3 });
  await plain.engine.chat.completions.create({ messages: USER });
  assert.deepEqual(plain.backend.calls.filter((c) => c.op === "prefill").map((c) => c.tokens!.length), [3, 3, 3]);

  // A window wider than the prompt changes nothing either.
  const wide = fakeEngine(REPLY, { sliding_window_size: 64, prefill_chunk_size: 8 });
  await wide.engine.chat.completions.create({ messages: USER });
  assert.deepEqual(wide.backend.calls.filter((c) => c.op === "prefill").map((c) => c.tokens!.length), [8, 1]);
});

test("a follow-up turn past the window continues one token at a time", async () => {
  const { engine, backend } = fakeEngine(REPLY, { sliding_window_size: 5, prefill_chunk_size: 3 });
  const r1 = await engine.chat.completions.create({ messages: USER });
  backend.calls.length = 0;
  const turn2 = [...USER, { role: "assistant" as const, content: r1.choices[0]!.message.content }, { role: "user" as const, content: "a b" }];
  await engine.chat.completions.create({ messages: turn2 });
  const prefills = backend.calls.filter((c) => c.op === "prefill");
  assert.ok(!backend.calls.some((c) => c.op === "reset" || c.op === "popN"), "an extension needs no rollback");
  assert.ok(prefills.length > 1 && prefills.every((c) => c.tokens!.length === 1));
});

test("a diverging turn pops back even when the cache holds more than the window", async () => {
  // 9 prompt + 6 reply tokens cached, W = 5: the cache keeps every token, so popN is exact.
  const { engine, backend } = fakeEngine(REPLY, { sliding_window_size: 5, prefill_chunk_size: 3 });
  await engine.chat.completions.create({ messages: USER });
  const cachedBefore = backend.seq.length;
  assert.equal(cachedBefore, 9 + 6); // the prompt and every reply token fed back (EOS is not)
  backend.calls.length = 0;
  // "user:hello world\nassistant:" shares "user:" (3 tokens with BOS) with "user:a b\nassistant:".
  await engine.chat.completions.create({ messages: [{ role: "user", content: "a b" }] });
  assert.deepEqual(backend.calls[0], { op: "popN", seqId: 0, n: cachedBefore - 3 });
  assert.ok(!backend.calls.some((c) => c.op === "reset"));
  const prompt = [1, ...ids("user:a b\nassistant:")];
  const prefills = backend.calls.filter((c) => c.op === "prefill");
  assert.deepEqual(prefills.flatMap((c) => c.tokens!), prompt.slice(3));
  // From seq_len 3 the chunk rule gives 2 (to the edge at 5), then one at a time.
  assert.deepEqual(prefills.map((c) => c.tokens!.length), [2, 1, 1, 1, 1]);
  assert.deepEqual(backend.seq.slice(0, prompt.length), prompt);
});

test("with nothing in common the cached sequence is freed and a new one filled, as for any model", async () => {
  const { engine, backend } = fakeEngine(REPLY, { sliding_window_size: 5, prefill_chunk_size: 3, chat_template: "{% for m in messages %}{{ m.content }}{% endfor %}", add_bos_token: false });
  await engine.chat.completions.create({ messages: USER });
  backend.calls.length = 0;
  await engine.chat.completions.create({ messages: [{ role: "user", content: "a b" }] });
  assert.deepEqual(backend.calls.slice(0, 2), [{ op: "remove", seqId: 0 }, { op: "add", seqId: 1 }]);
  assert.deepEqual(backend.calls.filter((c) => c.op === "prefill").flatMap((c) => c.tokens!), ids("a b"));
});

test("the context window bounds a sliding-window model like any other", async () => {
  // A prompt longer than the context window fails before any GPU work, even though W < ctx.
  const small = fakeEngine(REPLY, { sliding_window_size: 4, context_window_size: 8, prefill_chunk_size: 3 });
  await assert.rejects(small.engine.chat.completions.create({ messages: USER }), ContextWindowExceededError);
  assert.equal(small.backend.calls.length, 0);

  // Generation stops at the context window: 9 prompt tokens + 3 generated = 12, never more in the cache.
  const { engine, backend } = fakeEngine(REPLY, { sliding_window_size: 4, context_window_size: 12, prefill_chunk_size: 3 });
  const r = await engine.chat.completions.create({ messages: USER, max_tokens: 100 });
  assert.equal(r.choices[0]!.finish_reason, "length");
  assert.equal(r.usage!.completion_tokens, 3);
  assert.ok(backend.seq.length <= 12);
});

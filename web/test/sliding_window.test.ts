// The sliding-window rules of ARTIFACT.md ("Sliding-window models"), as the engine applies them:
// prefill chunks never cross the window edge, TVM is told W - 1, and the KV cache is only rolled
// back (popN) while no key has left the window.
import assert from "node:assert/strict";
import { test } from "node:test";
import { canPopKV, kvSlidingWindowSize, prefillChunkLength } from "../src/engine.js";
import { fakeEngine, ids } from "./helpers.js";

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

test("TVM keeps W - 1 keys; popN only while nothing has left the window", () => {
  assert.equal(kvSlidingWindowSize(32), 31);
  assert.equal(kvSlidingWindowSize(4096), 4095);
  assert.ok(canPopKV(10_000, -1));
  assert.ok(canPopKV(31, 32));
  assert.ok(!canPopKV(32, 32));
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

test("a diverging turn resets instead of popping once keys have left the window", async () => {
  // 9 prompt + 6 reply tokens cached: more than W - 1 = 4, so TVM has evicted keys.
  const { engine, backend } = fakeEngine(REPLY, { sliding_window_size: 5, prefill_chunk_size: 3 });
  await engine.chat.completions.create({ messages: USER });
  backend.calls.length = 0;
  await engine.chat.completions.create({ messages: [{ role: "user", content: "a b" }] });
  assert.equal(backend.calls[0]!.op, "reset");
  assert.ok(!backend.calls.some((c) => c.op === "popN"));
  const prompt = [1, ...ids("user:a b\nassistant:")];
  const prefills = backend.calls.filter((c) => c.op === "prefill");
  assert.deepEqual(prefills.flatMap((c) => c.tokens!), prompt);
  assert.equal(prompt.length, 9);
  assert.deepEqual(prefills.map((c) => c.tokens!.length), [3, 2, 1, 1, 1, 1]); // the chunk rule from seq_len 0

  // With a window the 15 cached tokens still fit in, popN is used as for any model.
  const wide = fakeEngine(REPLY, { sliding_window_size: 64, prefill_chunk_size: 8 });
  await wide.engine.chat.completions.create({ messages: USER });
  wide.backend.calls.length = 0;
  await wide.engine.chat.completions.create({ messages: [{ role: "user", content: "a b" }] });
  assert.equal(wide.backend.calls[0]!.op, "popN");
});

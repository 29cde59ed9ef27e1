// The scheduler (request_spec.json "scheduler", the native engine's compiler/scheduler.py):
// concurrent requests and n choices decoded in batches on the paged KV cache, each cancellable on
// its own through its AbortSignal, and the prefix cache across chat turns.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { ChatCompletionChunk } from "../src/protocol.js";
import { FAKE_KV_PAGES, fakeEngine } from "./helpers.js";

const USER = [{ role: "user" as const, content: "hello world" }];
const OTHER = [{ role: "user" as const, content: "a b" }];
const SAMPLED = { temperature: 1, top_p: 0.9, max_tokens: 12, return_token_ids: true } as const;

async function solo(messages: typeof USER, seed: number): Promise<number[]> {
  const { engine, backend } = fakeEngine("x", { max_batch_size: 4 });
  backend.uniform = true;
  const r = await engine.chat.completions.create({ messages, seed, ...SAMPLED });
  return r.choices[0]!.token_ids!;
}

async function drain(stream: AsyncIterable<ChatCompletionChunk>): Promise<number[]> {
  const ids: number[] = [];
  for await (const c of stream) ids.push(...(c.choices[0]?.token_ids ?? []));
  return ids;
}

test("two concurrent requests are decoded in one batch, and each equals its solo run", async () => {
  const { engine, backend } = fakeEngine("x", { max_batch_size: 4 });
  backend.uniform = true;
  const [a, b] = await Promise.all([
    engine.chat.completions.create({ messages: USER, seed: 11, ...SAMPLED }),
    engine.chat.completions.create({ messages: OTHER, seed: 12, ...SAMPLED }),
  ]);
  assert.deepEqual(a.choices[0]!.token_ids, await solo(USER, 11));
  assert.deepEqual(b.choices[0]!.token_ids, await solo(OTHER, 12));
  // Admission: request 1 prefills and decodes once alone, then request 2 prefills (one per turn);
  // from then on both decode together until the shorter ends.
  assert.deepEqual(backend.calls.slice(0, 5).map((c) => c.op), ["add", "prefill", "prefill", "decode", "add"]); // 9 prompt tokens: two chunks of at most 8
  const together = Math.min(a.choices[0]!.token_ids!.length - 1, b.choices[0]!.token_ids!.length) - 1;
  const batched = backend.calls.filter((c) => c.op === "decode" && c.seqIds!.length === 2);
  assert.ok(together >= 3 && batched.length === together, `${batched.length} two-sequence decode steps, expected ${together}`);
});

test("n choices run concurrently, choice i seeded seed + i", async () => {
  const { engine, backend } = fakeEngine("x", { max_batch_size: 4 });
  backend.uniform = true;
  const r = await engine.chat.completions.create({ messages: USER, seed: 5, n: 3, ...SAMPLED });
  assert.deepEqual(r.choices.map((c) => c.token_ids), [await solo(USER, 5), await solo(USER, 6), await solo(USER, 7)]);
  assert.ok(backend.calls.some((c) => c.op === "decode" && c.seqIds!.length === 3));
});

test("aborting one stream leaves the other's output unchanged and frees its KV sequence", async () => {
  const { engine, backend } = fakeEngine("x", { max_batch_size: 4 });
  backend.uniform = true;
  backend.delayMs = 1;
  const controller = new AbortController();
  const body = { seed: 21, ...SAMPLED, max_tokens: 40, stream: true as const };
  const aborted = await engine.chat.completions.create({ messages: USER, ...body }, { signal: controller.signal });
  const kept = await engine.chat.completions.create({ messages: OTHER, ...body, seed: 22 });
  const keptIds = drain(kept);
  let seen = 0;
  await assert.rejects(
    (async () => {
      for await (const _ of aborted) if (++seen === 3) controller.abort();
    })(),
    (e: unknown) => (e as Error).name === "AbortError",
  );
  // While the other still runs, the aborted request's sequence is gone.
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(engine.kvCacheStats().activeSequences, 1);
  assert.equal(backend.seqs.size, 1);
  const ids = await keptIds;
  const { engine: e2, backend: b2 } = fakeEngine("x", { max_batch_size: 4 });
  b2.uniform = true;
  const alone = await e2.chat.completions.create({ messages: OTHER, ...body, seed: 22, stream: false });
  assert.deepEqual(ids, alone.choices[0]!.token_ids);
  // Idle: nothing running; the finished request's sequence stays for prefix reuse.
  assert.deepEqual({ ...engine.kvCacheStats(), freePages: undefined }, { activeSequences: 0, cachedSequences: 1, freePages: undefined });
  assert.equal(engine.kvCacheStats().freePages, FAKE_KV_PAGES - Math.ceil(backend.seq.length / 16));
  await engine.resetChat();
  assert.deepEqual(engine.kvCacheStats(), { activeSequences: 0, cachedSequences: 0, freePages: FAKE_KV_PAGES });
});

test("a non-streaming request rejects with the signal's reason, before or during generation", async () => {
  const { engine, backend } = fakeEngine("a b a b a b a b a b a b a b a b", { max_batch_size: 2 });
  const early = new AbortController();
  early.abort(new Error("not wanted"));
  await assert.rejects(engine.chat.completions.create({ messages: USER }, { signal: early.signal }), /not wanted/);
  assert.deepEqual(backend.calls, []);

  backend.delayMs = 2;
  const late = new AbortController();
  const pending = engine.chat.completions.create({ messages: USER }, { signal: late.signal });
  setTimeout(() => late.abort(), 10);
  await assert.rejects(pending, (e: unknown) => (e as Error).name === "AbortError");
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(engine.kvCacheStats().activeSequences, 0);
  assert.equal(backend.seqs.size, 0, "a cancelled request's sequence is freed, not cached");
  const r = await engine.chat.completions.create({ messages: USER, max_tokens: 3 });
  assert.equal(r.choices[0]!.message.content, "a b");
});

test("more requests than max_batch_size wait their turn and all complete", async () => {
  const { engine, backend } = fakeEngine("the cat", { max_batch_size: 2 });
  const rs = await Promise.all([USER, OTHER, USER, OTHER, USER].map((messages) => engine.chat.completions.create({ messages })));
  assert.ok(rs.every((r) => r.choices[0]!.message.content === "the cat"));
  assert.ok(backend.calls.every((c) => c.op !== "decode" || c.seqIds!.length <= 2));
  assert.ok(backend.seqs.size <= 2, "running + cached sequences never pass max_batch_size");
});

test("interruptGenerate ends every request in flight with finish_reason abort", async () => {
  const { engine, backend } = fakeEngine("a b ".repeat(20), { max_batch_size: 2 });
  backend.delayMs = 1;
  const s1 = await engine.chat.completions.create({ messages: USER, stream: true });
  const s2 = await engine.chat.completions.create({ messages: OTHER, stream: true });
  const finishes = await Promise.all([s1, s2].map(async (s, k) => {
    let last: string | null = null;
    let n = 0;
    for await (const c of s) {
      last = c.choices[0]?.finish_reason ?? last;
      if (k === 0 && ++n === 4) engine.interruptGenerate();
    }
    return last;
  }));
  assert.deepEqual(finishes, ["abort", "abort"]);
  assert.equal(engine.kvCacheStats().activeSequences, 0);
});

test("an inexact paged prefill (WebGPU, head_dim >= 32): a non-empty sequence grows one token at a time, and a prefix is reused only to re-run the last prompt token", async () => {
  const { engine, backend } = fakeEngine("the cat sat.", { max_batch_size: 2 });
  backend.exactPagedPrefill = false;
  await engine.chat.completions.create({ messages: USER });
  backend.calls.length = 0;
  // A follow-up turn shares a long prefix, but reusing it would append several tokens to a
  // non-empty sequence: a new sequence is prefilled instead, in plain chunks from empty.
  const turn2 = [...USER, { role: "assistant" as const, content: "the cat sat." }, { role: "user" as const, content: "a b" }];
  await engine.chat.completions.create({ messages: turn2 });
  assert.ok(!backend.calls.some((c) => c.op === "popN"), "no reuse");
  const prefills = backend.calls.filter((c) => c.op === "prefill");
  // 8 (chunk on the empty sequence), then one token at a time
  assert.deepEqual(prefills.map((c) => c.tokens!.length), [8, ...Array(prefills.length - 1).fill(1)]);
  // The same prompt again: only its last token is re-run, which is exact, so the cache is used.
  backend.calls.length = 0;
  await engine.chat.completions.create({ messages: turn2 });
  assert.deepEqual(backend.calls.filter((c) => c.op === "prefill").map((c) => c.tokens!.length), [1]);
});

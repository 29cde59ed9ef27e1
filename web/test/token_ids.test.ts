// `return_token_ids` (extension): prompt and generated ids on responses and streams, so callers
// (and the browser tests) can compare ids with the native engine instead of only text.
import assert from "node:assert/strict";
import { test } from "node:test";
import { InvalidRequestError } from "../src/errors.js";
import type { ChatCompletionChunk, Completion } from "../src/protocol.js";
import { fakeEngine, ids } from "./helpers.js";

const USER = [{ role: "user" as const, content: "hello world" }];
const PROMPT1 = [1, ...ids("user:hello world\nassistant:")];
const REPLY_IDS = ids("the cat sat.");
const EOS = 2;

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

test("chat: prompt_token_ids and token_ids (EOS included), only when asked", async () => {
  const { engine } = fakeEngine("the cat sat.");
  const r = await engine.chat.completions.create({ messages: USER, return_token_ids: true });
  assert.deepEqual(r.prompt_token_ids, PROMPT1);
  assert.deepEqual(r.choices[0]!.token_ids, [...REPLY_IDS, EOS]);
  assert.equal(r.choices[0]!.token_ids!.length, r.usage.completion_tokens);

  const plain = await engine.chat.completions.create({ messages: USER });
  assert.ok(!("prompt_token_ids" in plain) && !("token_ids" in plain.choices[0]!));
});

test("chat stream: ids per delta, the rest on the finish chunk, prompt ids on the first", async () => {
  const { engine } = fakeEngine("the cat sat.");
  const chunks: ChatCompletionChunk[] = await collect(
    await engine.chat.completions.create({ messages: USER, stream: true, return_token_ids: true, max_tokens: 4 }),
  );
  assert.deepEqual(chunks[0]!.prompt_token_ids, PROMPT1);
  assert.ok(chunks.slice(1).every((c) => !("prompt_token_ids" in c)));
  const all = chunks.flatMap((c) => c.choices[0]?.token_ids ?? []);
  assert.deepEqual(all, REPLY_IDS.slice(0, 4));
  const last = chunks[chunks.length - 1]!;
  assert.equal(last.choices[0]!.finish_reason, "length");
  // Every content chunk's ids decode to its text.
  for (const c of chunks.slice(1, -1)) assert.ok(c.choices[0]!.token_ids!.length >= 1);
});

test("completions: raw and streamed, with echo", async () => {
  const { engine } = fakeEngine("the cat sat.");
  const prompt = [1, ...ids("a b")];
  const r = await engine.completions.create({ prompt, max_tokens: 40, temperature: 0, return_token_ids: true });
  assert.deepEqual(r.prompt_token_ids, prompt);
  assert.deepEqual(r.choices[0]!.token_ids, [...REPLY_IDS, EOS]);

  const chunks: Completion[] = await collect(
    await engine.completions.create({ prompt, max_tokens: 40, stream: true, echo: true, return_token_ids: true }),
  );
  assert.deepEqual(chunks[0]!.prompt_token_ids, prompt);
  assert.equal(chunks[0]!.choices[0]!.text, "a b"); // the echo chunk carries no generated ids
  assert.equal(chunks[0]!.choices[0]!.token_ids, undefined);
  assert.deepEqual(chunks.flatMap((c) => c.choices[0]?.token_ids ?? []), [...REPLY_IDS, EOS]);
  assert.equal(chunks.filter((c) => c.prompt_token_ids).length, 1);
});

test("return_token_ids must be a boolean", async () => {
  const { engine } = fakeEngine("the cat sat.");
  await assert.rejects(
    engine.chat.completions.create({ messages: USER, return_token_ids: "yes" as unknown as boolean }),
    (e: unknown) => e instanceof InvalidRequestError && e.field === "return_token_ids",
  );
});

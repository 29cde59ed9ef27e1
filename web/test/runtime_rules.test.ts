// The browser engine's forward-backend rules against tests/fixtures/runtime_cases.json (written by
// tests/fixtures/make_runtime_fixtures.py from ARTIFACT.md's "Sliding-window models");
// tests/test_runtime_rules.py holds the native engine's twins to the same file.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { kvCacheArgs, prefillChunkLength } from "../src/model_runtime.js";

const CASES = JSON.parse(readFileSync(new URL("../../../tests/fixtures/runtime_cases.json", import.meta.url), "utf8"));

test("runtime rules: prefill chunk length", () => {
  for (const c of CASES.chunk_length) {
    assert.equal(prefillChunkLength(c.seq_len, c.prefill_chunk_size, c.sliding_window_size), c.expected, JSON.stringify(c));
  }
});

test("runtime rules: whole prefill plans, chunk after chunk", () => {
  for (const c of CASES.prefill_plans) {
    const end = c.start + c.prompt_length;
    const chunks: number[] = [];
    for (let seq = c.start; seq < end; ) {
      const n = Math.min(prefillChunkLength(seq, c.prefill_chunk_size, c.sliding_window_size), end - seq);
      assert.ok(n >= 1, `${JSON.stringify(c)}: chunk ${n} after ${JSON.stringify(chunks)}`);
      chunks.push(n);
      seq += n;
    }
    assert.deepEqual(chunks, c.chunks, JSON.stringify(c));
  }
});

test("runtime rules: KV cache creation arguments", () => {
  for (const c of CASES.kv_cache_args) {
    assert.deepEqual(kvCacheArgs(c.context_window_size, c.prefill_chunk_size, c.max_batch_size), c.args, JSON.stringify(c));
  }
});

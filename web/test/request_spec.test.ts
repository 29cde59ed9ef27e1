// The browser engine against the request-spec conformance fixtures (tests/fixtures/*_cases.json,
// written by tests/fixtures/make_request_fixtures.py from the native engine; tests/test_request_spec.py
// holds the native engine to the same files). Floats are compared exactly: the two engines must
// agree bit for bit, so one seed gives one token stream.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { checkPrompts } from "../src/scheduler.js";
import { StopStringMatcher } from "../src/text_stream.js";
import { AAEError } from "../src/errors.js";
import { parseChatRequest, parseCompletionRequest, type ParsedChatRequest, type ParsedCompletionRequest } from "../src/protocol.js";
import { SPEC, type Endpoint } from "../src/request_spec.js";
import { Sampler, SplitMix64, nucleus, specExp, specLog, type SamplingParams } from "../src/sampling.js";
import { IncrementalDetokenizer, TextTokenizer } from "../src/tokenizer.js";

const load = (name: string): any => JSON.parse(readFileSync(new URL(`../../../tests/fixtures/${name}`, import.meta.url), "utf8"));
const SAMPLING = load("sampling_cases.json");
const VALIDATION = load("validation_cases.json");

/** The fixtures write non-finite floats as strings ("-Infinity"), which JSON lacks. */
const dec = (v: number | string): number => (typeof v === "string" ? Number(v) : v);
const enc = (x: number): number | string => (Number.isFinite(x) ? x : String(x));

test("the spec names every processor once", () => {
  assert.deepEqual([...SPEC.sampling.processors].sort(), Object.keys((SPEC.sampling as unknown as { processor_docs: object }).processor_docs).sort());
});

test("PRNG: SplitMix64 words and floats per seed", () => {
  for (const c of SAMPLING.prng) {
    const a = new SplitMix64(c.seed);
    const b = new SplitMix64(c.seed);
    assert.deepEqual(c.u64.map(() => `0x${a.nextU64().toString(16).padStart(16, "0")}`), c.u64, `seed ${c.seed}`);
    assert.deepEqual(c.floats.map(() => b.nextFloat()), c.floats, `seed ${c.seed}`);
  }
});

test("exp and log: the spec's bits", () => {
  for (const [x, e] of SAMPLING.exp) assert.equal(enc(specExp(dec(x))), e, `exp(${x})`);
  for (const [s, l] of SAMPLING.log) assert.equal(specLog(s), l, `log(${s})`);
});

test("top_p nucleus: the same ids and running sums", () => {
  for (const c of SAMPLING.nucleus) {
    const x = Float64Array.from(Float32Array.from(c.logits as number[]));
    let m = -Infinity;
    for (const v of x) m = Math.max(m, v);
    const w = x.map((v) => specExp((v - m) / c.temperature));
    let total = 0;
    for (const v of w) total += v;
    assert.equal(total, c.total);
    const n = nucleus(w, c.top_p, total);
    assert.deepEqual(n.ids, c.ids);
    assert.deepEqual(n.cum, c.cum);
  }
});

const DEFAULTS = { temperature: 1, top_p: 1, frequency_penalty: 0, presence_penalty: 0, repetition_penalty: 1 };

for (const c of SAMPLING.cases) {
  test(`sampling: ${c.name}`, () => {
    const p = { ...DEFAULTS, ...c.params };
    const params: SamplingParams = { ...p, logit_bias: new Map(Object.entries(p.logit_bias ?? {}).map(([k, v]) => [Number(k), v as number])) };
    const seed = p.seed ?? 0;
    const sampler = new Sampler(params, c.vocab_size, c.prompt_ids ?? [], c.eos_token_ids ?? [], seed);
    const logits = Float32Array.from(c.logits as number[]);
    c.expected.forEach((want: any, i: number) => {
      const processed = sampler.process(logits);
      const got = sampler.sample(logits);
      if (want.processed) assert.deepEqual(Array.from(processed, enc), want.processed, `step ${i}: processed logits`);
      assert.equal(got.tokenId, want.token, `step ${i}: token`);
      if (want.logprob !== undefined) {
        assert.equal(enc(got.logprob), want.logprob, `step ${i}: logprob`);
        assert.deepEqual(got.topLogprobs.map(([t, lp]) => [t, enc(lp)]), want.top_logprobs, `step ${i}: top_logprobs`);
      }
    });
  });
}

test("stop strings: what is emitted, held back and flushed", () => {
  for (const c of load("stop_cases.json").cases) {
    const m = new StopStringMatcher(c.stops);
    const emits: string[] = [];
    let finish: string | undefined;
    let final = "";
    for (const chunk of c.chunks) {
      const r = m.feed(chunk);
      emits.push(r.emit);
      if (r.stopped) {
        finish = "stop";
        break;
      }
    }
    if (finish === undefined) {
      const r = m.feed(c.end);
      [final, finish] = r.stopped ? [r.emit, "stop"] : [r.emit + m.flush(), "length"];
    }
    assert.deepEqual({ emits, final, finish }, c.expected, c.name);
  }
});

test("streaming detokenizer: leading space, byte fallback, split multi-byte characters", () => {
  const fixture = load("detokenizer_cases.json");
  const stories = new URL("../../../../shared/fixtures/stories260K/", import.meta.url);
  const json = (name: string) => JSON.parse(readFileSync(new URL(name, stories), "utf8"));
  const toks: Record<string, TextTokenizer> = {
    stories260K: new TextTokenizer(json("tokenizer.json"), json("tokenizer_config.json"), { bos: 1, eos: [2] }),
    byte_level: new TextTokenizer(fixture.tokenizers.byte_level, {}, { bos: null, eos: [0] }),
  };
  for (const c of fixture.cases) {
    const tok = toks[c.tokenizer]!;
    const d = new IncrementalDetokenizer(tok, c.prompt_ids);
    assert.deepEqual(c.ids.map((i: number) => d.push(i)), c.deltas, c.name);
    assert.equal(d.flush(), c.flush, c.name);
    assert.deepEqual(c.ids.map((i: number) => Array.from(tok.tokenBytes(i))), c.token_bytes, c.name);
  }
});

function errorShape(e: unknown): Record<string, unknown> {
  assert.ok(e instanceof AAEError, `expected an AAEError, got ${String(e)}`);
  return { type: e.details["type"], param: e.details["param"] ?? null, code: e.details["code"] ?? null, message: e.message };
}

/** The dict make_request_fixtures.normalized builds from the native engine's parsed request. */
function normalized(kind: Endpoint, r: ParsedChatRequest | ParsedCompletionRequest): Record<string, unknown> {
  const s = r.sampling;
  const out: Record<string, unknown> = {
    n: r.n, stream: r.stream, include_usage: r.includeUsage, return_token_ids: r.returnTokenIds, model: r.model ?? null,
    temperature: s.temperature ?? null, top_p: s.top_p ?? null, max_tokens: s.max_tokens ?? null, seed: s.seed ?? null, stop: s.stop,
    frequency_penalty: s.frequency_penalty ?? null, presence_penalty: s.presence_penalty ?? null, repetition_penalty: s.repetition_penalty ?? null,
    logit_bias: Object.fromEntries([...s.logit_bias].map(([k, v]) => [String(k), v])),
    ignore_eos: s.ignore_eos, logprobs: s.logprobs, top_logprobs: s.topLogprobs,
  };
  if (kind === "chat") {
    out["messages"] = (r as ParsedChatRequest).messages;
    const f = (r as ParsedChatRequest).responseFormat;
    out["response_format"] = f ? { kind: f.kind, schema: f.schema ?? null, grammar: f.grammar ?? null, name: f.name ?? null } : null;
    const t = (r as ParsedChatRequest).tools;
    out["tools"] = t ? { choice: t.choice, parallel: t.parallel, functions: t.functions.map((fn) => ({ name: fn.name, parameters: fn.parameters, description: fn.description })) } : null;
  } else Object.assign(out, { prompts: (r as ParsedCompletionRequest).prompts, echo: (r as ParsedCompletionRequest).echo });
  return out;
}

test("validation: the same acceptance, and the same error type, param, code and message", () => {
  for (const c of VALIDATION.cases) {
    const kind = c.endpoint as Endpoint;
    const parse = kind === "chat" ? parseChatRequest : parseCompletionRequest;
    const label = `${kind}: ${c.name}`;
    if (c.error) {
      assert.throws(() => parse(c.body), (e: unknown) => (assert.deepEqual(errorShape(e), c.error, label), true), label);
    } else {
      assert.deepEqual(normalized(kind, parse(c.body)), c.parsed, label);
    }
  }
});

test("model checks: vocabulary and the context-window rule", () => {
  const m = VALIDATION.model;
  for (const c of VALIDATION.model_cases) {
    const run = () => checkPrompts(c.endpoint, c.prompts, Object.keys(c.logit_bias).map(Number), m.vocab_size, m.context_window_size);
    if (c.error) assert.throws(run, (e: unknown) => (assert.deepEqual(errorShape(e), c.error, c.name), true), c.name);
    else assert.deepEqual(run(), c.max_new, c.name);
  }
});

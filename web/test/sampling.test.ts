import assert from "node:assert/strict";
import { test } from "node:test";
import { Sampler, SplitMix64, argmax, logSoftmax, topK, type SamplingParams } from "../src/sampling.js";

const params = (over: Partial<SamplingParams> = {}): SamplingParams => ({
  temperature: 1,
  top_p: 1,
  presence_penalty: 0,
  frequency_penalty: 0,
  repetition_penalty: 1,
  ...over,
});

/** Logits whose softmax is exactly `probs`. */
const fromProbs = (probs: number[]) => Float32Array.from(probs, (p) => (p > 0 ? Math.log(p) : -Infinity));

/** A sampler over `logits`' vocabulary with no prompt and no EOS. */
const sampler = (over: Partial<SamplingParams>, seed: number, vocab: number) => new Sampler(params(over), vocab, [], [], seed);

/** The ids of `n` draws from one sampler (penalties off: the draws are independent). */
const draws = (s: Sampler, logits: Float32Array, n: number) => Array.from({ length: n }, () => s.sample(logits).tokenId);

test("greedy at temperature 0 is argmax, ties to the lowest id", () => {
  assert.equal(sampler({ temperature: 0 }, 1, 4).sample(Float32Array.from([0.1, 3, -1, 3])).tokenId, 1);
  assert.equal(argmax(Float32Array.from([-5, -5])), 0);
  // Greedy ignores top_p and the seed entirely.
  const l = Float32Array.from([1, 2, 3, 2.9]);
  assert.equal(sampler({ temperature: 0, top_p: 0.1 }, 1, 4).sample(l).tokenId, 2);
  assert.equal(sampler({ temperature: 0, top_p: 0.1 }, 999, 4).sample(l).tokenId, 2);
});

test("the RNG is deterministic per seed and uniform-ish in [0, 1)", () => {
  const a = new SplitMix64(42);
  const b = new SplitMix64(42);
  const c = new SplitMix64(43);
  const xs = Array.from({ length: 1000 }, () => a.nextFloat());
  assert.deepEqual(xs, Array.from({ length: 1000 }, () => b.nextFloat()));
  assert.notDeepEqual(xs.slice(0, 10), Array.from({ length: 10 }, () => c.nextFloat()));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
  // Seeds differing only above 2^32 give different streams.
  assert.notEqual(new SplitMix64(1).nextFloat(), new SplitMix64(1 + 2 ** 32).nextFloat());
  // A negative seed is its 64-bit two's complement.
  assert.equal(new SplitMix64(-1).nextU64(), new SplitMix64(2n ** 64n - 1n).nextU64());
});

test("same seed, same samples; different seed, different samples", () => {
  const logits = new Float32Array(50).map((_, i) => Math.sin(i) * 2);
  const draw = (seed: number) => draws(sampler({ temperature: 1.2, top_p: 0.95 }, seed, 50), logits, 40);
  assert.deepEqual(draw(7), draw(7));
  assert.notDeepEqual(draw(7), draw(8));
});

test("top_p keeps the smallest nucleus reaching p", () => {
  const logits = fromProbs([0.5, 0.3, 0.1, 0.06, 0.04]);
  const seen = (topP: number) => [...new Set(draws(sampler({ top_p: topP }, 3, 5), logits, 2000))].sort();
  // (p is kept off the exact cumulative sums: at 0.8 = 0.5 + 0.3 rounding decides.)
  assert.deepEqual(seen(0.4), [0]);
  assert.deepEqual(seen(0.49), [0]);
  assert.deepEqual(seen(0.7), [0, 1]);
  assert.deepEqual(seen(0.85), [0, 1, 2]);
  assert.deepEqual(seen(1), [0, 1, 2, 3, 4]);
});

test("top_p sampling frequencies follow the renormalised nucleus", () => {
  const logits = fromProbs([0.5, 0.3, 0.1, 0.06, 0.04]);
  const s = sampler({ top_p: 0.75 }, 11, 5);
  const counts = [0, 0, 0, 0, 0];
  const n = 20000;
  for (let i = 0; i < n; i++) counts[s.sample(logits).tokenId]!++;
  // Nucleus {0, 1}: 0.5 / 0.8 and 0.3 / 0.8.
  assert.ok(Math.abs(counts[0]! / n - 0.625) < 0.02, String(counts));
  assert.ok(Math.abs(counts[1]! / n - 0.375) < 0.02, String(counts));
  assert.equal(counts[2]! + counts[3]! + counts[4]!, 0);
});

test("top_p over a large flat-tailed vocabulary still finds the exact nucleus", () => {
  // One dominant token plus 20k tiny ones: the threshold search must widen to the tail.
  const n = 20_000;
  const logits = new Float32Array(n).fill(0);
  logits[5] = Math.log(n); // p(5) = 0.5
  const s = sampler({ top_p: 0.9 }, 5, n);
  let others = 0;
  for (let i = 0; i < 400; i++) if (s.sample(logits).tokenId !== 5) others++;
  assert.ok(others > 120 && others < 200, `others=${others}`); // ~ 0.4 / 0.9 of 400
});

test("temperature sharpens and flattens", () => {
  const logits = fromProbs([0.6, 0.4]);
  const frac = (t: number) => draws(sampler({ temperature: t }, 1, 2), logits, 5000).filter((x) => x === 0).length / 5000;
  assert.ok(frac(0.2) > 0.85);
  assert.ok(Math.abs(frac(1) - 0.6) < 0.03);
  assert.ok(frac(5) < 0.56);
});

test("repetition penalty: divide positives, multiply negatives, once per token (prompt included)", () => {
  const s = new Sampler(params({ repetition_penalty: 2 }), 4, [0, 1, 1, 1], [], 0);
  assert.deepEqual(Array.from(s.process(Float32Array.from([2, -2, 2, 1]))), [1, -4, 2, 1]);
});

test("presence and frequency penalties: logit -= count * frequency + presence", () => {
  const s = sampler({ presence_penalty: 0.5, frequency_penalty: 0.25 }, 0, 3);
  s.generatedCounts.set(0, 1).set(2, 3);
  assert.deepEqual(Array.from(s.process(Float32Array.from([0, 0, 0]))), [-0.75, 0, -1.25]);
});

test("logit_bias bans and boosts", () => {
  const s = sampler({ logit_bias: new Map([[0, -100], [2, 0.5]]) }, 0, 3);
  assert.equal(argmax(s.process(Float32Array.from([5, 1, 1]))), 2);
});

test("ignore_eos masks every EOS id", () => {
  const s = new Sampler(params({ temperature: 0, ignore_eos: true }), 3, [], [1], 0);
  assert.equal(s.sample(Float32Array.from([0, 9, 1])).tokenId, 2);
  assert.equal(s.process(Float32Array.from([0, 9, 1]))[1], Number.NEGATIVE_INFINITY);
});

test("sampler applies penalties from its own history", () => {
  const s = sampler({ temperature: 0, frequency_penalty: 2 }, 0, 3);
  const logits = Float32Array.from([3, 2, 0]);
  assert.equal(s.sample(logits).tokenId, 0);
  assert.equal(s.sample(logits).tokenId, 1); // 3 - 2 = 1 < 2
  assert.equal(s.sample(logits).tokenId, 0); // 1 vs 0
  const r = new Sampler(params({ temperature: 0, repetition_penalty: 4 }), 3, [0], [], 0);
  assert.equal(r.sample(logits).tokenId, 1); // 3/4 < 2
});

test("logSoftmax and topK", () => {
  const lp = logSoftmax(fromProbs([0.5, 0.25, 0.25, 0]));
  assert.ok(Math.abs(lp[0]! - Math.log(0.5)) < 1e-6);
  assert.deepEqual(topK(Float32Array.from([0.1, 0.9, 0.5, 0.7]), 3), [1, 3, 2]);
  assert.deepEqual(topK(Float32Array.from([1]), 0), []);
  assert.deepEqual(topK(Float32Array.from([0.5, 0.9, 0.5, 0.9]), 3), [1, 3, 0]); // ties: lower id first
});

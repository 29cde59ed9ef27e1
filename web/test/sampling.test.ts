import assert from "node:assert/strict";
import { test } from "node:test";
import {
  Sampler,
  SeededRng,
  applyLogitBias,
  applyPresenceFrequencyPenalty,
  applyRepetitionPenalty,
  argmax,
  logSoftmax,
  sampleTopP,
  topK,
  type SamplingParams,
} from "../src/sampling.js";

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

test("greedy at temperature 0 is argmax, ties to the lowest id", () => {
  const s = new Sampler(params({ temperature: 0 }), 1);
  assert.equal(s.sample(Float32Array.from([0.1, 3, -1, 3]), []), 1);
  assert.equal(argmax(Float32Array.from([-5, -5])), 0);
  // Greedy ignores top_p and the seed entirely.
  const a = new Sampler(params({ temperature: 0, top_p: 0.1 }), 1);
  const b = new Sampler(params({ temperature: 0, top_p: 0.1 }), 999);
  const l = Float32Array.from([1, 2, 3, 2.9]);
  assert.equal(a.sample(l.slice(), []), 2);
  assert.equal(b.sample(l.slice(), []), 2);
});

test("the RNG is deterministic per seed and uniform-ish in [0, 1)", () => {
  const a = new SeededRng(42);
  const b = new SeededRng(42);
  const c = new SeededRng(43);
  const xs = Array.from({ length: 1000 }, () => a.nextFloat());
  assert.deepEqual(xs, Array.from({ length: 1000 }, () => b.nextFloat()));
  assert.notDeepEqual(xs.slice(0, 10), Array.from({ length: 10 }, () => c.nextFloat()));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
  // Seeds differing only above 2^32 give different streams.
  assert.notEqual(new SeededRng(1).nextFloat(), new SeededRng(1 + 2 ** 32).nextFloat());
});

test("same seed, same samples; different seed, different samples", () => {
  const logits = new Float32Array(50).map((_, i) => Math.sin(i) * 2);
  const draw = (seed: number) => {
    const s = new Sampler(params({ temperature: 1.2, top_p: 0.95 }), seed);
    return Array.from({ length: 40 }, () => s.pick(logits.slice()));
  };
  assert.deepEqual(draw(7), draw(7));
  assert.notDeepEqual(draw(7), draw(8));
});

test("top_p keeps the smallest nucleus reaching p", () => {
  const logits = fromProbs([0.5, 0.3, 0.1, 0.06, 0.04]);
  const seen = (topP: number) => {
    const rng = new SeededRng(3);
    const s = new Set<number>();
    for (let i = 0; i < 2000; i++) s.add(sampleTopP(logits, 1, topP, rng));
    return [...s].sort();
  };
  // (p is kept off the exact cumulative sums: at 0.8 = 0.5 + 0.3 float32 rounding decides.)
  assert.deepEqual(seen(0.4), [0]);
  assert.deepEqual(seen(0.49), [0]);
  assert.deepEqual(seen(0.7), [0, 1]);
  assert.deepEqual(seen(0.85), [0, 1, 2]);
  assert.deepEqual(seen(1), [0, 1, 2, 3, 4]);
});

test("top_p sampling frequencies follow the renormalised nucleus", () => {
  const logits = fromProbs([0.5, 0.3, 0.1, 0.06, 0.04]);
  const rng = new SeededRng(11);
  const counts = [0, 0, 0, 0, 0];
  const n = 20000;
  for (let i = 0; i < n; i++) counts[sampleTopP(logits, 1, 0.75, rng)]!++;
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
  const rng = new SeededRng(5);
  let others = 0;
  for (let i = 0; i < 400; i++) if (sampleTopP(logits, 1, 0.9, rng) !== 5) others++;
  assert.ok(others > 120 && others < 200, `others=${others}`); // ~ 0.4 / 0.9 of 400
});

test("temperature sharpens and flattens", () => {
  const logits = fromProbs([0.6, 0.4]);
  const frac = (t: number) => {
    const rng = new SeededRng(1);
    let zero = 0;
    for (let i = 0; i < 5000; i++) if (sampleTopP(logits, t, 1, rng) === 0) zero++;
    return zero / 5000;
  };
  assert.ok(frac(0.2) > 0.85);
  assert.ok(Math.abs(frac(1) - 0.6) < 0.03);
  assert.ok(frac(5) < 0.56);
});

test("repetition penalty: divide positives, multiply negatives, once per token", () => {
  const l = Float32Array.from([2, -2, 2, 1]);
  applyRepetitionPenalty(l, [0, 1, 1, 1], 2);
  assert.deepEqual(Array.from(l), [1, -4, 2, 1]);
});

test("presence and frequency penalties", () => {
  const l = Float32Array.from([0, 0, 0]);
  applyPresenceFrequencyPenalty(l, new Map([[0, 1], [2, 3]]), 0.5, 0.25);
  assert.deepEqual(Array.from(l), [-0.75, 0, -1.25]);
});

test("logit_bias bans and boosts", () => {
  const l = Float32Array.from([5, 1, 1]);
  applyLogitBias(l, new Map([[0, -100], [2, 0.5]]));
  assert.equal(argmax(l), 2);
});

test("sampler applies penalties from its own history", () => {
  const s = new Sampler(params({ temperature: 0, frequency_penalty: 2 }), 0);
  const logits = () => Float32Array.from([3, 2, 0]);
  assert.equal(s.sample(logits(), []), 0);
  assert.equal(s.sample(logits(), []), 1); // 3 - 2 = 1 < 2
  assert.equal(s.sample(logits(), []), 0); // 1 vs 0
  const r = new Sampler(params({ temperature: 0, repetition_penalty: 4 }), 0);
  assert.equal(r.sample(logits(), [0]), 1); // 3/4 < 2
});

test("logSoftmax and topK", () => {
  const lp = logSoftmax(fromProbs([0.5, 0.25, 0.25, 0]));
  assert.ok(Math.abs(lp[0]! - Math.log(0.5)) < 1e-6);
  assert.deepEqual(topK(Float32Array.from([0.1, 0.9, 0.5, 0.7]), 3), [1, 3, 2]);
  assert.deepEqual(topK(Float32Array.from([1]), 0), []);
});

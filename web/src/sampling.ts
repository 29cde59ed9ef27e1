/**
 * Token sampling on the CPU, from the float32 logits the model returns for the last position.
 *
 * Order of operations (matches the native engine and Hugging Face's processors):
 *   1. repetition penalty over every token in the context (prompt + generated), HF style;
 *   2. presence / frequency penalties over generated tokens only (OpenAI semantics);
 *   3. logit_bias (added last, so -100 reliably bans a token whatever the penalties did);
 *   4. temperature 0 -> argmax (greedy); otherwise softmax(logits / T), nucleus (top_p), draw.
 *
 * The random source is a seeded PRNG so `seed` gives reproducible output across runs and across
 * the page/worker boundary (no Math.random anywhere on the sampling path).
 */

export interface SamplingParams {
  temperature: number;
  top_p: number;
  presence_penalty: number;
  frequency_penalty: number;
  repetition_penalty: number;
  /** token id -> additive bias in [-100, 100] */
  logit_bias?: ReadonlyMap<number, number> | undefined;
}

/** Temperatures below this are treated as 0 (greedy): dividing by ~0 only produces inf/NaN. */
export const GREEDY_TEMPERATURE = 1e-5;

/**
 * xoshiro128** seeded through splitmix32: small, fast, good statistical quality, and fully
 * determined by a 53-bit integer seed (JS numbers), which is what an OpenAI `seed` can hold.
 */
export class SeededRng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    // Fold the high bits in so seeds that differ only above 2^32 still give different streams.
    const lo = seed >>> 0;
    const hi = Math.floor(Math.abs(seed) / 4294967296) >>> 0;
    let x = (lo ^ Math.imul(hi, 0x9e3779b9) ^ (seed < 0 ? 0x5bd1e995 : 0)) >>> 0;
    const split = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = split();
    this.s1 = split();
    this.s2 = split();
    this.s3 = split();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // all-zero state is a fixed point
  }

  /** Next 32-bit unsigned integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform float in [0, 1) with 53 bits of randomness. */
  nextFloat(): number {
    const a = this.nextU32() >>> 5; // 27 bits
    const b = this.nextU32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** A seed for requests that give none: unpredictable, but still one number so a run can be logged. */
export function randomSeed(): number {
  const buf = new Uint32Array(2);
  globalThis.crypto.getRandomValues(buf);
  return buf[0]! * 2097152 + (buf[1]! >>> 11); // 53 bits
}

/** HF repetition penalty: positive logits are divided, negative multiplied, once per distinct token. */
export function applyRepetitionPenalty(logits: Float32Array, tokens: Iterable<number>, penalty: number): void {
  if (penalty === 1) return;
  const seen = new Set<number>();
  for (const t of tokens) {
    if (t < 0 || t >= logits.length || seen.has(t)) continue;
    seen.add(t);
    const v = logits[t]!;
    logits[t] = v > 0 ? v / penalty : v * penalty;
  }
}

/** OpenAI penalties: logit -= presence * [count > 0] + frequency * count. */
export function applyPresenceFrequencyPenalty(
  logits: Float32Array,
  counts: ReadonlyMap<number, number>,
  presence: number,
  frequency: number,
): void {
  if (presence === 0 && frequency === 0) return;
  for (const [t, c] of counts) {
    if (t < 0 || t >= logits.length || c <= 0) continue;
    logits[t] = logits[t]! - presence - frequency * c;
  }
}

export function applyLogitBias(logits: Float32Array, bias: ReadonlyMap<number, number> | undefined): void {
  if (!bias) return;
  for (const [t, b] of bias) {
    if (t >= 0 && t < logits.length) logits[t] = logits[t]! + b;
  }
}

/** Index of the largest logit; ties go to the lowest index (stable, like numpy/torch argmax). */
export function argmax(logits: Float32Array): number {
  let best = 0;
  let bestVal = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > bestVal) {
      bestVal = v;
      best = i;
    }
  }
  return best;
}

/**
 * Draw from softmax(logits / temperature) restricted to the nucleus: the smallest set of most
 * likely tokens whose probability reaches top_p.
 *
 * Sorting the whole vocabulary (50k-250k entries) every token is the slow part, so candidates are
 * first filtered by a probability threshold that is lowered until the candidates alone hold top_p
 * of the mass; the nucleus is then guaranteed to lie inside them (it takes tokens in descending
 * order) and only they are sorted. The result is exact, not an approximation.
 */
export function sampleTopP(logits: Float32Array, temperature: number, topP: number, rng: SeededRng): number {
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i]! > max) max = logits[i]!;
  if (!Number.isFinite(max)) return argmax(logits); // everything banned or NaN: nothing sensible to draw

  const inv = 1 / temperature;
  const probs = new Float32Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const p = Math.exp((logits[i]! - max) * inv);
    probs[i] = p;
    total += p;
  }

  if (topP >= 1) {
    let r = rng.nextFloat() * total;
    for (let i = 0; i < n; i++) {
      r -= probs[i]!;
      if (r < 0) return i;
    }
    return argmax(logits); // float round-off left r >= 0: fall back to the mode
  }

  const target = topP * total;
  // The max token has probability exp(0) = 1 (unnormalised), so thresholds are relative to 1.
  let threshold = 1 / 64;
  let candidates: number[] = [];
  for (;;) {
    candidates = [];
    let mass = 0;
    for (let i = 0; i < n; i++) {
      if (probs[i]! >= threshold) {
        candidates.push(i);
        mass += probs[i]!;
      }
    }
    if (mass >= target || threshold === 0) break;
    // Lower in modest steps so the candidate set stays close to the nucleus (less to sort).
    threshold = threshold < 1e-30 ? 0 : threshold / 16;
  }
  // Descending probability, ties by ascending id, so the draw is deterministic for a given seed.
  candidates.sort((a, b) => probs[b]! - probs[a]! || a - b);
  let nucleusMass = 0;
  let size = 0;
  for (const i of candidates) {
    nucleusMass += probs[i]!;
    size++;
    if (nucleusMass >= target) break;
  }
  let r = rng.nextFloat() * nucleusMass;
  for (let k = 0; k < size; k++) {
    r -= probs[candidates[k]!]!;
    if (r < 0) return candidates[k]!;
  }
  return candidates[size - 1]!;
}

/** Log-probability of every token under softmax(logits) (the model's distribution, no temperature). */
export function logSoftmax(logits: Float32Array): Float32Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const lse = max + Math.log(sum);
  const out = new Float32Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i]! - lse;
  return out;
}

/** The k most likely token ids of a log-prob vector, most likely first. */
export function topK(logprobs: Float32Array, k: number): number[] {
  if (k <= 0) return [];
  const best: number[] = [];
  for (let i = 0; i < logprobs.length; i++) {
    const v = logprobs[i]!;
    if (best.length < k || v > logprobs[best[best.length - 1]!]!) {
      let j = best.length < k ? best.length : k - 1;
      best[j] = i;
      while (j > 0 && logprobs[best[j - 1]!]! < v) {
        best[j] = best[j - 1]!;
        best[j - 1] = i;
        j--;
      }
    }
  }
  return best;
}

/**
 * Per-request sampler: owns the RNG and the counts the penalties need. `logits` is modified in
 * place (penalties, bias), which is fine: each step gets a fresh copy from the GPU.
 */
export class Sampler {
  readonly params: SamplingParams;
  private readonly rng: SeededRng;
  /** generated token -> occurrences (presence/frequency penalties) */
  readonly generatedCounts = new Map<number, number>();

  constructor(params: SamplingParams, seed: number) {
    this.params = params;
    this.rng = new SeededRng(seed);
  }

  /** Apply penalties and bias to `logits` in place; `context` is prompt + generated tokens. */
  process(logits: Float32Array, context: Iterable<number>): void {
    const p = this.params;
    applyRepetitionPenalty(logits, context, p.repetition_penalty);
    applyPresenceFrequencyPenalty(logits, this.generatedCounts, p.presence_penalty, p.frequency_penalty);
    applyLogitBias(logits, p.logit_bias);
  }

  /** Pick a token from processed logits. */
  pick(logits: Float32Array): number {
    const p = this.params;
    if (p.temperature < GREEDY_TEMPERATURE) return argmax(logits);
    return sampleTopP(logits, p.temperature, p.top_p, this.rng);
  }

  /** Record a generated token (after it is chosen) for the penalties of later steps. */
  accept(token: number): void {
    this.generatedCounts.set(token, (this.generatedCounts.get(token) ?? 0) + 1);
  }

  /** process + pick + accept. */
  sample(logits: Float32Array, context: Iterable<number>): number {
    this.process(logits, context);
    const t = this.pick(logits);
    this.accept(t);
    return t;
  }
}

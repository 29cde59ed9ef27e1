/**
 * Token sampling on the CPU, from the float32 logits the model returns for the last position, as
 * REQUESTS.md and request_spec.json specify it (compiler/sampling.py is this module's twin).
 *
 * `Sampler` runs the spec's processors in the spec's order (`sampling.processors`: ignore_eos,
 * logit_bias, repetition penalty, frequency/presence penalties, the logprobs point, temperature,
 * top_p, the draw) in float64, one IEEE operation at a time in the spec's order, with the spec's
 * exp/log (Math.exp and numpy's exp differ in the last bit) and its PRNG (SplitMix64 on BigInt),
 * so one seed gives the native engine's token stream. No Math.random on the sampling path.
 */
import { SPEC } from "./request_spec.js";

export interface SamplingParams {
  temperature: number;
  top_p: number;
  presence_penalty: number;
  frequency_penalty: number;
  repetition_penalty: number;
  /** token id -> additive bias in [-100, 100] */
  logit_bias?: ReadonlyMap<number, number> | undefined;
  /** Mask EOS (processor ignore_eos). */
  ignore_eos?: boolean;
  /** Report log-probabilities (processor logprobs), with the top_logprobs best. */
  logprobs?: boolean;
  top_logprobs?: number;
}

/** Temperatures below this are treated as 0 (greedy): dividing by ~0 only produces inf/NaN. */
export const GREEDY_TEMPERATURE: number = SPEC.sampling.greedy_below_temperature;
/** The processors that only transform logits (what `Sampler.process` runs, in the spec's order). */
export const LOGIT_PROCESSORS: readonly string[] = ["ignore_eos", "grammar", "logit_bias", "repetition_penalty", "frequency_presence_penalty"];

// ---------------------------------------------------------------------------------------------
// The spec's arithmetic: PRNG, exp, log, sums

const PRNG = SPEC.sampling.prng;
const GAMMA = BigInt(PRNG.gamma);
const MIX1 = BigInt(PRNG.mix1);
const MIX2 = BigInt(PRNG.mix2);
const FLOAT_SHIFT = BigInt(64 - PRNG.float_bits);
const FLOAT_SCALE = 2 ** -PRNG.float_bits; // a power of two: exact

/** The request PRNG: SplitMix64 on BigInt, mod 2^64 (the Python engine uses masked ints). */
export class SplitMix64 {
  private state: bigint;

  constructor(seed: bigint | number) {
    this.state = BigInt.asUintN(64, BigInt(seed)); // two's complement for a negative seed
  }

  nextU64(): bigint {
    this.state = BigInt.asUintN(64, this.state + GAMMA);
    let z = this.state;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * MIX1);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * MIX2);
    return z ^ (z >> 31n);
  }

  /** Uniform in [0, 1): the top 53 bits, scaled exactly. */
  nextFloat(): number {
    return Number(this.nextU64() >> FLOAT_SHIFT) * FLOAT_SCALE;
  }
}

/** A seed for a request that gave none: 64 bits from the platform's random source. */
export function randomSeed(): bigint {
  const buf = new Uint32Array(2);
  globalThis.crypto.getRandomValues(buf);
  return (BigInt(buf[0]!) << 32n) | BigInt(buf[1]!);
}

const EXP = SPEC.sampling.exp;
const LOG = SPEC.sampling.log;
/** 1/j! and 1/(2j+1), computed as the Python side computes them (j! is exact below 2^53). */
const EXP_COEFFS: number[] = [];
for (let j = 0, f = 1; j <= EXP.terms; j++, f *= j) EXP_COEFFS.push(1 / f);
const LOG_COEFFS: number[] = Array.from({ length: LOG.terms + 1 }, (_, j) => 1 / (2 * j + 1));
/** 2^k for k in [-1022, 1023], by exact doubling/halving (Math.pow promises no exactness). */
const POW2 = new Float64Array(2046);
POW2[1022] = 1;
for (let k = 1; k <= 1023; k++) POW2[1022 + k] = POW2[1021 + k]! * 2;
for (let k = 1; k <= 1022; k++) POW2[1022 - k] = POW2[1023 - k]! * 0.5;

/** exp as the spec defines it (for inputs <= 0 here). */
export function specExp(x: number): number {
  if (x < EXP.underflow_below) return 0;
  const k = Math.floor(x * EXP.inv_ln2 + 0.5);
  const r = (x - k * EXP.ln2_hi) - k * EXP.ln2_lo;
  let p = EXP_COEFFS[EXP.terms]!;
  for (let j = EXP.terms - 1; j >= 0; j--) p = p * r + EXP_COEFFS[j]!;
  return p * POW2[k + 1022]!;
}

/** log as the spec defines it, for a softmax total s >= 1. */
export function specLog(s: number): number {
  let m = s;
  let e = 0;
  // frexp by exact halving/doubling: m in [0.5, 1).
  while (m >= 1) {
    m *= 0.5;
    e++;
  }
  while (m < 0.5) {
    m *= 2;
    e--;
  }
  if (m < LOG.sqrt_half) {
    m *= 2;
    e--;
  }
  const z = (m - 1) / (m + 1);
  const zz = z * z;
  let q = LOG_COEFFS[LOG.terms]!;
  for (let j = LOG.terms - 1; j >= 0; j--) q = q * zz + LOG_COEFFS[j]!;
  return e * EXP.ln2_hi + (e * EXP.ln2_lo + (2 * z) * q);
}

function maxOf(x: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i]! > m) m = x[i]!;
  return m;
}

/** Log-probability of every token under softmax(x) (the processed logits, no temperature). */
export function logSoftmax(x: ArrayLike<number>): Float64Array {
  const m = maxOf(x);
  let s = 0;
  for (let i = 0; i < x.length; i++) s += specExp(x[i]! - m);
  const lse = specLog(s);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = (x[i]! - m) - lse;
  return out;
}

/** Index of the largest value; ties (and an all -Infinity vector) go to the lowest index. */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  let bestVal = -Infinity;
  for (let i = 0; i < x.length; i++) {
    if (x[i]! > bestVal) {
      bestVal = x[i]!;
      best = i;
    }
  }
  return best;
}

/** The k highest entries' ids, best first, ties to the lower id. */
export function topK(values: ArrayLike<number>, k: number): number[] {
  const best: number[] = [];
  if (k <= 0) return best;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (best.length === k && !(v > values[best[k - 1]!]!)) continue;
    let j = best.length < k ? best.length : k - 1;
    // An equal value never passes an earlier (lower) id.
    while (j > 0 && values[best[j - 1]!]! < v) {
      best[j] = best[j - 1]!;
      j--;
    }
    best[j] = i;
  }
  return best;
}

/**
 * The top_p nucleus of weights `w` (left-to-right `total`): ids by weight descending, ties to the
 * lower id, with their running sums, up to the first whose sum reaches topP * total. Only ids
 * above a threshold are sorted, lowered until they reach the mass: they are the head of the full
 * sort, so the result is exactly the full sort's (and the Python engine's nucleus_order).
 */
export function nucleus(w: Float64Array, topP: number, total: number): { ids: number[]; cum: number[] } {
  const target = topP * total;
  // The largest weight is exp(0) = 1, so thresholds are relative to it.
  for (let threshold = 1 / 64; ; threshold = threshold < 1e-30 ? 0 : threshold / 16) {
    const ids: number[] = [];
    for (let i = 0; i < w.length; i++) if (w[i]! >= threshold) ids.push(i);
    ids.sort((a, b) => w[b]! - w[a]! || a - b);
    const cum: number[] = [];
    let run = 0;
    for (let j = 0; j < ids.length; j++) {
      run += w[ids[j]!]!;
      cum.push(run);
      if (run >= target) return { ids: ids.slice(0, j + 1), cum };
    }
    if (threshold === 0) return { ids, cum }; // rounding never reached the target: keep all
  }
}

// ---------------------------------------------------------------------------------------------
// The sampler

export interface SampledToken {
  tokenId: number;
  /** log-probability of tokenId (processor logprobs); 0 when not asked for */
  logprob: number;
  /** the top_logprobs most likely [id, logprob], best first */
  topLogprobs: Array<[number, number]>;
}

/** One token's pipeline state, passed from processor to processor. */
interface Step {
  x: Float64Array;
  /** what a structured-output grammar allows next (one bit per token, XGrammar's bitmask) */
  allowed?: Int32Array | undefined;
  logprobs?: Float64Array;
  weights?: Float64Array;
  /** the ids the draw chooses among (null: every id, in id order), with their running mass */
  ids?: ArrayLike<number> | null;
  cum?: ArrayLike<number>;
  token?: number;
}

type Stage = (step: Step) => void;

/** Per-request sampler: owns the PRNG and the counts the penalties need. */
export class Sampler {
  readonly params: SamplingParams;
  readonly vocabSize: number;
  readonly seed: bigint;
  private readonly rng: SplitMix64;
  /** generated token -> occurrences (frequency/presence penalties), in first-seen order */
  readonly generatedCounts = new Map<number, number>();
  /** prompt + generated ids (repetition penalty) */
  private readonly seen = new Set<number>();
  private readonly eos: number[];
  private readonly stages: Stage[];
  private readonly logitStages: Stage[];

  constructor(params: SamplingParams, vocabSize: number, promptIds: readonly number[], eosIds: readonly number[], seed: bigint | number) {
    this.params = params;
    this.vocabSize = vocabSize;
    this.seed = BigInt(seed);
    this.rng = new SplitMix64(this.seed);
    for (const t of promptIds) if (t >= 0 && t < vocabSize) this.seen.add(t);
    this.eos = [...new Set(eosIds)].filter((t) => t >= 0 && t < vocabSize);
    const table: Record<string, Stage> = {
      ignore_eos: (s) => this.ignoreEos(s),
      grammar: (s) => this.grammar(s),
      logit_bias: (s) => this.logitBias(s),
      repetition_penalty: (s) => this.repetitionPenalty(s),
      frequency_presence_penalty: (s) => this.frequencyPresencePenalty(s),
      logprobs: (s) => this.logprobStage(s),
      temperature: (s) => this.temperature(s),
      top_p: (s) => this.topP(s),
      draw: (s) => this.draw(s),
    };
    // The pipeline is the spec's list, read here: reordering it there reorders both engines.
    const stage = (name: string): Stage => {
      const f = table[name];
      if (!f) throw new Error(`request_spec.json names an unknown sampling processor "${name}"`);
      return f;
    };
    this.stages = SPEC.sampling.processors.map(stage);
    this.logitStages = SPEC.sampling.processors.filter((n) => LOGIT_PROCESSORS.includes(n)).map(stage);
  }

  private widen(logits: ArrayLike<number>): Float64Array {
    const x = new Float64Array(this.vocabSize);
    for (let i = 0; i < this.vocabSize; i++) x[i] = logits[i]!;
    return x;
  }

  /** The logit processors only: float64 logits with the mask, bias and penalties applied. */
  process(logits: ArrayLike<number>, allowed?: Int32Array): Float64Array {
    const step: Step = { x: this.widen(logits), allowed };
    for (const s of this.logitStages) s(step);
    return step.x;
  }

  /**
   * Pick the next token from one position's logits and record it for the penalties. `allowed`:
   * the tokens a structured-output grammar allows (structured.ts GrammarMatcher).
   */
  sample(logits: ArrayLike<number>, allowed?: Int32Array): SampledToken {
    const step: Step = { x: this.widen(logits), allowed };
    for (const s of this.stages) s(step);
    const token = step.token;
    if (token === undefined) throw new Error("request_spec.json's processors must end with the draw");
    this.generatedCounts.set(token, (this.generatedCounts.get(token) ?? 0) + 1);
    this.seen.add(token);
    const lp = step.logprobs;
    if (!lp) return { tokenId: token, logprob: 0, topLogprobs: [] };
    return { tokenId: token, logprob: lp[token]!, topLogprobs: topK(lp, this.params.top_logprobs ?? 0).map((i) => [i, lp[i]!]) };
  }

  // ---- the processors, by their names in request_spec.json

  private ignoreEos(step: Step): void {
    if (this.params.ignore_eos) for (const t of this.eos) step.x[t] = Number.NEGATIVE_INFINITY;
  }

  private grammar(step: Step): void {
    const bits = step.allowed;
    if (!bits) return;
    for (let t = 0; t < this.vocabSize; t++) if (((bits[t >>> 5]! >>> (t & 31)) & 1) === 0) step.x[t] = Number.NEGATIVE_INFINITY;
  }

  private logitBias(step: Step): void {
    for (const [t, b] of this.params.logit_bias ?? []) if (t >= 0 && t < this.vocabSize) step.x[t] = step.x[t]! + b;
  }

  private repetitionPenalty(step: Step): void {
    const r = this.params.repetition_penalty;
    if (r === 1) return;
    for (const t of this.seen) {
      const v = step.x[t]!;
      step.x[t] = v > 0 ? v / r : v * r;
    }
  }

  private frequencyPresencePenalty(step: Step): void {
    const f = this.params.frequency_penalty;
    const p = this.params.presence_penalty;
    if (f === 0 && p === 0) return;
    for (const [t, c] of this.generatedCounts) step.x[t] = step.x[t]! - (c * f + p);
  }

  private logprobStage(step: Step): void {
    if (this.params.logprobs) step.logprobs = logSoftmax(step.x);
  }

  private temperature(step: Step): void {
    const x = step.x;
    const m = maxOf(x);
    const t = this.params.temperature;
    if (t < GREEDY_TEMPERATURE || m === Number.NEGATIVE_INFINITY) {
      step.token = argmax(x);
      return;
    }
    const w = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) w[i] = specExp((x[i]! - m) / t);
    step.weights = w;
  }

  private topP(step: Step): void {
    if (step.token !== undefined) return;
    const w = step.weights;
    if (!w) throw new Error("request_spec.json's processors must put temperature before top_p");
    let total = 0;
    const cum = new Float64Array(w.length);
    for (let i = 0; i < w.length; i++) cum[i] = total += w[i]!;
    if (this.params.top_p < 1) {
      const n = nucleus(w, this.params.top_p, total);
      step.ids = n.ids;
      step.cum = n.cum;
    } else {
      step.ids = null;
      step.cum = cum;
    }
  }

  private draw(step: Step): void {
    if (step.token !== undefined) return;
    const { ids, cum } = step;
    if (ids === undefined || !cum) throw new Error("request_spec.json's processors must put top_p before the draw");
    const target = this.rng.nextFloat() * cum[cum.length - 1]!;
    let i = 0;
    while (i < cum.length - 1 && !(cum[i]! > target)) i++;
    step.token = ids ? ids[i]! : i;
  }
}

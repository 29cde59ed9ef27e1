/**
 * The scheduler: every choice of every request in flight, run on the paged KV cache in batches.
 * Twin of compiler/scheduler.py; request_spec.json "scheduler" holds the rules both follow.
 *
 * A loop runs while there is work: drop cancelled (and interrupted) choices, admit a waiting
 * choice (take a sequence, prefill its prompt, sample its first token), then one batched decode
 * step for every running choice, each sampled in admission order. A choice ends by EOS, a stop
 * string, max_tokens / the context window (its sequence then stays in the prefix cache, so the
 * next turn of a chat prefills only what is new), or by cancellation (its sequence is freed).
 * Outputs go to each request's sink as they are made; the front end (engine.ts) assembles them.
 * JavaScript runs one thing at a time, so where the native scheduler has a thread, this one is
 * an async loop, started by `submit` and ended when nothing is left to do.
 */
import type { ModelRuntime } from "./model_runtime.js";
import { ContextWindowExceededError } from "./errors.js";
import { specError, type FinishReason } from "./protocol.js";
import { SPEC, errorText, type Endpoint } from "./request_spec.js";
import { Sampler, randomSeed, type SampledToken, type SamplingParams } from "./sampling.js";
import type { GrammarMatcher } from "./structured.js";
import { TextStream } from "./text_stream.js";
import type { TextTokenizer } from "./tokenizer.js";

// ---------------------------------------------------------------------------------------------
// Request limits (request_spec.json "context_window")

/**
 * How many tokens each prompt leaves room for (context_window - its length), after the spec's
 * checks in the spec's order: logit_bias ids, then per prompt: empty, out-of-vocabulary ids, too
 * long (a prompt of context_window tokens or more leaves no room to generate).
 */
export function checkPrompts(kind: Endpoint, prompts: readonly number[][], biasIds: Iterable<number>, vocabSize: number, contextWindow: number): number[] {
  for (const t of biasIds) if (t >= vocabSize) throw specError("logit_bias_token", "logit_bias", { token: t, vocab_size: vocabSize });
  const param = SPEC.context_window.param[kind];
  return prompts.map((ids) => {
    if (ids.length === 0) throw specError("prompt_empty", param);
    const bad = ids.find((t) => t < 0 || t >= vocabSize);
    if (bad !== undefined) throw specError("prompt_token", "prompt", { token: bad, vocab_size: vocabSize });
    if (ids.length >= contextWindow) {
      const [message, code] = errorText("context_length", { context_window: contextWindow, prompt_tokens: ids.length });
      throw new ContextWindowExceededError(message, { prompt_tokens: ids.length, context_window_size: contextWindow, param, code, type: "invalid_request_error" });
    }
    return contextWindow - ids.length;
  });
}

// ---------------------------------------------------------------------------------------------
// What flows from the scheduler to the front end

/** What the scheduler sends after each step of one choice that made text, tokens or an end. */
export interface Output {
  index: number;
  text: string;
  /** content tokens with their logprobs, when asked for (EOS excluded) */
  tokens: SampledToken[];
  finishReason: FinishReason | null;
  /** ids generated since the last output, EOS included */
  tokenIds: number[];
  // Filled in the final output of a choice:
  completionTokens: number;
  /** prompt tokens actually prefilled (fewer than the prompt's when a cached prefix was reused) */
  prefillTokens: number;
  prefillS: number;
  decodeS: number;
  /** from admission to the first sampled token */
  firstTokenS: number;
}

export class Failure {
  constructor(readonly error: unknown) {}
}

export type SchedulerEvent = Output | Failure;

/** One choice's sampling, resolved against the model's defaults (Python's SamplingParams.resolved). */
export interface ChoiceParams {
  sampling: SamplingParams;
  /** choice i of a prompt is seeded seed + i; unseeded choices each draw one */
  seed: number | undefined;
  maxTokens: number | undefined;
  stop: string[];
}

/** One choice of one request: one KV sequence from admission to its end. */
export class Job {
  readonly text: TextStream;
  seqId: number | undefined;
  /** ids not yet sent with an output (their text is held back) */
  pendingIds: number[] = [];
  readonly generatedIds: number[] = [];
  lastToken = -1;
  prefillTokens = 0;
  prefillS = 0;
  decodeS = 0;
  firstTokenS = 0;
  admittedAt = 0;
  finished = false;
  /** structured output: what may come next */
  grammar: GrammarMatcher | undefined;

  constructor(
    readonly request: Request,
    readonly index: number,
    readonly promptIds: readonly number[],
    readonly sampler: Sampler,
    readonly maxNew: number,
    tokenizer: TextTokenizer,
    stop: readonly string[],
  ) {
    this.text = new TextStream(tokenizer, promptIds, stop);
  }
}

export class Request {
  readonly id: string;
  readonly created = Math.floor(Date.now() / 1000);
  readonly jobs: Job[] = [];
  /** the caller is gone (stream closed, signal aborted): its choices end silently */
  cancelled = false;
  /** interruptGenerate(): its choices end now with finish_reason "abort" */
  interrupted = false;

  constructor(
    readonly kind: Endpoint,
    readonly sink: (event: SchedulerEvent) => void,
  ) {
    this.id = randomId(SPEC.endpoints[kind].id_prefix);
  }
}

interface CachedSequence {
  seqId: number;
  /** what its KV holds */
  tokens: number[];
}

// ---------------------------------------------------------------------------------------------
// The scheduler

export class Scheduler {
  private waiting: Job[] = [];
  private running: Job[] = [];
  /** the prefix cache, oldest first */
  private cached: CachedSequence[] = [];
  private looping = false;
  private idleWaiters: Array<() => void> = [];
  private terminated: unknown;
  private readonly eos: Set<number>;

  constructor(
    readonly runtime: ModelRuntime,
    readonly tokenizer: TextTokenizer,
    private readonly eosIds: readonly number[],
    private readonly maxBatchSize: number,
  ) {
    this.eos = new Set(eosIds);
  }

  /** KV sequences of running choices (0 once every request ended or was cancelled). */
  get activeSequences(): number {
    return this.running.filter((j) => j.seqId !== undefined).length;
  }

  get cachedSequences(): number {
    return this.cached.length;
  }

  // ---- building requests

  makeJobs(request: Request, prompts: readonly number[][], params: ChoiceParams, n: number): void {
    const { sampling } = params;
    const vocab = this.runtime.vocabSize;
    const rooms = checkPrompts(request.kind, prompts, sampling.logit_bias?.keys() ?? [], vocab, this.runtime.sizes.contextWindowSize);
    prompts.forEach((ids, p) => {
      const maxNew = Math.min(params.maxTokens ?? Number.POSITIVE_INFINITY, rooms[p]!);
      for (let i = 0; i < n; i++) {
        const seed = params.seed !== undefined ? BigInt(params.seed) + BigInt(i) : randomSeed();
        const sampler = new Sampler(sampling, vocab, ids, this.eosIds, seed);
        request.jobs.push(new Job(request, p * n + i, ids, sampler, maxNew, this.tokenizer, params.stop));
      }
    });
  }

  // ---- control

  submit(request: Request): void {
    if (this.terminated !== undefined) throw this.terminated;
    this.waiting.push(...request.jobs);
    this.kick();
  }

  cancel(request: Request): void {
    request.cancelled = true;
  }

  /** End every request in flight with finish_reason "abort" (their text so far is kept). */
  interrupt(): void {
    for (const job of [...this.running, ...this.waiting]) job.request.interrupted = true;
  }

  /** Free the prefix cache (a new conversation starts from nothing). */
  dropPrefixCache(): void {
    while (this.cached.length) this.dropCached(0);
  }

  /** Fail everything in flight with `error`, refuse new requests, and wait for the loop to stop. */
  async terminate(error: unknown): Promise<void> {
    this.terminated = error;
    for (const request of distinctRequests([...this.running, ...this.waiting])) this.fail(request, error);
    await this.idle();
  }

  /** Resolves when the loop is not running. */
  idle(): Promise<void> {
    if (!this.looping) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  // ---- the loop

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      while (this.running.length || this.waiting.length) {
        this.reap();
        // Admit a few per turn, then one decode step for everyone: a long prompt delays the
        // running streams by one prefill, not by the whole queue.
        for (let a = 0; a < SPEC.scheduler.admissions_per_turn && this.waiting.length && this.running.length < this.maxBatchSize; a++) {
          await this.start(this.waiting.shift()!);
        }
        if (this.running.length) await this.decodeStep();
      }
    } catch (e) {
      for (const request of distinctRequests([...this.running, ...this.waiting])) this.fail(request, e);
    } finally {
      // No await between the loop's last check and here: a submit cannot slip in unseen.
      this.looping = false;
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private reap(): void {
    for (const job of this.running.filter((j) => j.request.cancelled)) this.release(job, false);
    this.waiting = this.waiting.filter((j) => !j.request.cancelled);
    for (const job of [...this.running, ...this.waiting].filter((j) => j.request.interrupted)) this.abort(job);
    this.waiting = this.waiting.filter((j) => !j.request.interrupted);
  }

  /** interruptGenerate: end the choice here, releasing its held-back text. */
  private abort(job: Job): void {
    const text = job.seqId !== undefined ? job.text.finish().text : "";
    const out = this.output(job, text, [], "abort");
    out.tokenIds = job.pendingIds;
    job.pendingIds = [];
    this.release(job, false);
    this.finalStats(job, out);
    this.send(job.request, out);
  }

  private async start(job: Job): Promise<void> {
    try {
      job.admittedAt = now();
      const reused = this.takeSequence(job);
      const rest = job.promptIds.slice(reused);
      // The grammar's first mask is computed while the prefill runs on the device.
      const [logits] = await Promise.all([this.runtime.prefill(job.seqId!, rest), job.grammar?.prepare()]);
      if (job.finished) return; // failed meanwhile (terminate)
      job.prefillTokens = rest.length;
      job.prefillS = (now() - job.admittedAt) / 1000;
      if (!this.step(job, logits)) this.running.push(job);
    } catch (e) {
      this.fail(job.request, e);
    }
  }

  /**
   * Give the job a sequence: the cached one sharing the longest prefix with its prompt (popped
   * back to it), else a new one. Returns how many prompt tokens the sequence already holds.
   */
  private takeSequence(job: Job): number {
    const prompt = job.promptIds;
    let best = -1;
    let bestLength = 0;
    // An inexact paged prefill (artifact_format.json) may only re-run the prompt's last token.
    const inexact = SPEC.scheduler.reuse_needs_exact_paged_prefill && !this.runtime.backend.exactPagedPrefill;
    this.cached.forEach((c, i) => {
      const p = Math.min(commonPrefixLength(c.tokens, prompt), prompt.length - 1);
      if (inexact && p !== prompt.length - 1) return;
      if (p >= SPEC.scheduler.min_prefix_tokens && p >= bestLength) [best, bestLength] = [i, p]; // ties: the newest
    });
    if (best >= 0) {
      const c = this.cached.splice(best, 1)[0]!;
      if (this.runtime.popTokens(c.seqId, c.tokens.length - bestLength)) {
        job.seqId = c.seqId;
        return bestLength;
      }
      this.runtime.removeSequence(c.seqId); // the backend cannot pop: start afresh
    }
    while (this.cached.length && this.cached.length + this.running.length + 1 > this.maxBatchSize) this.dropCached(0);
    job.seqId = this.runtime.addSequence();
    return 0;
  }

  private async decodeStep(): Promise<void> {
    const batch = [...this.running];
    let rows: Float32Array[];
    const t0 = now();
    try {
      // The next masks of grammar-constrained choices are computed while the step runs on the device.
      const step = this.runtime.decode(batch.map((j) => j.seqId!), batch.map((j) => j.lastToken));
      [rows] = await Promise.all([step, Promise.all(batch.map((j) => j.grammar?.prepare()))]);
    } catch (e) {
      for (const request of distinctRequests(batch)) this.fail(request, e);
      return;
    }
    const dt = (now() - t0) / 1000;
    batch.forEach((job, i) => {
      // finished: failed with an earlier choice of its request; interrupted: ends at the next turn
      if (job.finished || job.request.interrupted) return;
      job.decodeS += dt;
      try {
        this.step(job, rows[i]!);
      } catch (e) {
        this.fail(job.request, e);
      }
    });
  }

  /** Sample one token for `job` and send its text (request_spec.json's EOS, stop and context rules); true when it finished. */
  private step(job: Job, logits: Float32Array): boolean {
    const sampled = job.sampler.sample(logits, job.grammar?.allowed());
    const params = job.sampler.params;
    job.generatedIds.push(sampled.tokenId);
    job.pendingIds.push(sampled.tokenId);
    if (job.generatedIds.length === 1) job.firstTokenS = (now() - job.admittedAt) / 1000;
    let finish: FinishReason | null = null;
    let text: string;
    const tokens: SampledToken[] = [];
    if (this.eos.has(sampled.tokenId) && !params.ignore_eos) {
      text = job.text.finish().text; // EOS is not content: no text, no logprobs entry
      finish = "stop";
    } else {
      job.lastToken = sampled.tokenId;
      job.grammar?.accept(sampled.tokenId);
      if (params.logprobs) tokens.push(sampled);
      const r = job.text.push(sampled.tokenId);
      text = r.text;
      if (r.stopped) finish = "stop";
      else if (job.generatedIds.length >= job.maxNew) {
        const tail = job.text.finish();
        text += tail.text;
        finish = tail.stopped ? "stop" : "length";
      }
    }
    const out = this.output(job, text, tokens, finish);
    if (text || tokens.length || finish) {
      out.tokenIds = job.pendingIds;
      job.pendingIds = [];
    }
    if (finish !== null) {
      this.release(job, true);
      this.finalStats(job, out);
    }
    if (text || tokens.length || finish) this.send(job.request, out);
    return finish !== null;
  }

  private output(job: Job, text: string, tokens: SampledToken[], finishReason: FinishReason | null): Output {
    return { index: job.index, text, tokens, finishReason, tokenIds: [], completionTokens: 0, prefillTokens: 0, prefillS: 0, decodeS: 0, firstTokenS: 0 };
  }

  private finalStats(job: Job, out: Output): void {
    out.completionTokens = job.generatedIds.length;
    out.prefillTokens = job.prefillTokens;
    out.prefillS = job.prefillS;
    out.decodeS = job.decodeS;
    out.firstTokenS = job.firstTokenS;
  }

  /** End the job; `keep`: its sequence goes to the prefix cache (holding prompt + generated but the last). */
  private release(job: Job, keep: boolean): void {
    job.finished = true;
    job.grammar?.dispose();
    job.grammar = undefined;
    const at = this.running.indexOf(job);
    if (at >= 0) this.running.splice(at, 1);
    if (job.seqId === undefined) return;
    const seqId = job.seqId;
    job.seqId = undefined;
    const limit = SPEC.scheduler.prefix_cache_sequences;
    if (!keep || limit <= 0) {
      this.runtime.removeSequence(seqId);
      return;
    }
    this.cached.push({ seqId, tokens: [...job.promptIds, ...job.generatedIds.slice(0, -1)] });
    while (this.cached.length > limit) this.dropCached(0);
  }

  private dropCached(i: number): void {
    const [c] = this.cached.splice(i, 1);
    if (c) this.runtime.removeSequence(c.seqId);
  }

  private fail(request: Request, error: unknown): void {
    for (const job of request.jobs) {
      if (job.finished) continue;
      try {
        this.release(job, false);
      } catch {
        /* the runtime is already failing; the request's error says why */
      }
    }
    this.waiting = this.waiting.filter((j) => j.request !== request);
    this.send(request, new Failure(error));
  }

  private send(request: Request, event: SchedulerEvent): void {
    try {
      request.sink(event);
    } catch {
      request.cancelled = true; // the consumer is gone: stop generating for it
    }
  }
}

// ---------------------------------------------------------------------------------------------

function distinctRequests(jobs: readonly Job[]): Request[] {
  return [...new Set(jobs.map((j) => j.request))];
}

function commonPrefixLength(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export function now(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

function randomId(prefix: string): string {
  const b = new Uint8Array(12);
  globalThis.crypto.getRandomValues(b);
  return prefix + Array.from(b, (x) => x.toString(36).padStart(2, "0")).join("").slice(0, 24);
}

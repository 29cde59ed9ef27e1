/**
 * The in-page engine: loads a model folder (ARTIFACT.md) onto WebGPU through tvmjs and serves
 * OpenAI-shaped chat completions from it.
 *
 * Two layers:
 *  - `ForwardBackend` is the model itself: prefill / decode returning last-position logits, and
 *    KV-cache bookkeeping. `TVMBackend` implements it with the compiled VM functions and TVM's
 *    paged KV cache; tests implement it with a fake.
 *  - `Engine` is everything else: request validation, chat template, tokenization, KV reuse across
 *    turns, chunked prefill, the decode loop, sampling, stop strings, streaming, interrupt, stats.
 */
import tvmjs from "@mlc-ai/web-runtime";
import type { Instance, PackedFunc, Tensor, TVMObject, VirtualMachine } from "@mlc-ai/web-runtime";

import {
  CHAT_CONFIG_FILE,
  KV_BUILTINS,
  KV_PAGE_SIZE,
  TOKENIZER_CONFIG_FILE,
  TOKENIZER_FILE,
  VM_FUNCTIONS,
  fileUrl,
  modelLibFile,
  normalizeBaseUrl,
  parseChatConfig,
  parseManifest,
  type ChatConfig,
  type TensorManifest,
} from "./artifact.js";
import {
  ArtifactLoader,
  CacheApiStore,
  IndexedDBStore,
  deleteCachedFolder,
  isModelCached,
  type ByteStore,
  type LoadPhase,
  type LoadProgress,
} from "./cache.js";
import {
  ArtifactFormatError,
  ContextWindowExceededError,
  DeviceLostError,
  EngineNotLoadedError,
  FeatureNotSupportedError,
  InvalidRequestError,
  ModelNotFoundError,
  NetworkError,
  WebGPUNotAvailableError,
} from "./errors.js";
import {
  parseChatRequest,
  parseCompletionRequest,
  specError,
  type ChatCompletion,
  type ChatCompletionChunk,
  type ChatCompletionRequest,
  type ChatCompletionRequestNonStreaming,
  type ChatCompletionRequestStreaming,
  type ChatCompletionTokenLogprob,
  type Completion,
  type CompletionRequest,
  type CompletionRequestNonStreaming,
  type CompletionRequestStreaming,
  type CompletionLogprobs,
  type CompletionUsage,
  type FinishReason,
  type ParsedChatRequest,
  type ParsedCompletionRequest,
  type TopLogprob,
} from "./protocol.js";
import { SPEC, errorText, type Endpoint } from "./request_spec.js";
import { Sampler, randomSeed, type SampledToken, type SamplingParams } from "./sampling.js";
import { ChatTemplate } from "./template.js";
import { StreamingDetokenizer, TextTokenizer } from "./tokenizer.js";
import { kvCacheArgs, prefillChunkLength } from "./model_runtime.js";

// ---------------------------------------------------------------------------------------------
// Public configuration types

export interface ModelRecord {
  model_id: string;
  /** Base URL of the model folder (absolute, or relative to the page). */
  model_url: string;
  /** Optional URL of the .wasm when it is not in the folder (else chat config's model_lib.webgpu). */
  model_lib_url?: string;
  /** Anything else (size, description...) is carried along untouched, e.g. for a model picker. */
  [key: string]: unknown;
}

export interface AppConfig {
  model_list: ModelRecord[];
  /** Store model files in IndexedDB instead of the Cache API. */
  useIndexedDBCache?: boolean;
}

export interface InitProgressReport {
  /** 0..1 over the whole load (download then compile). */
  progress: number;
  /** Seconds since the load started. */
  timeElapsed: number;
  text: string;
  phase: LoadPhase;
  loadedBytes: number;
  totalBytes: number;
  loadedShards: number;
  totalShards: number;
  cachedBytes: number;
}
export type InitProgressCallback = (report: InitProgressReport) => void;

export interface EngineConfig {
  appConfig?: AppConfig;
  initProgressCallback?: InitProgressCallback;
  /** Passed to navigator.gpu.requestAdapter (e.g. {featureLevel: "compatibility"}). */
  requestAdapterOptions?: GPURequestAdapterOptions;
  /** The WebGPU entry point; default navigator.gpu. Lets Node (npm `webgpu`) run the engine. */
  gpu?: GPU;
  /** Where model files are cached; default Cache API (or IndexedDB per appConfig); null: none. */
  store?: ByteStore | null;
  /** Shards downloaded at once (default 4). */
  maxConcurrentDownloads?: number;
  /** Re-hash cached shards on load (default true). */
  verifyCachedShards?: boolean;
  logger?: (message: string) => void;
  fetch?: typeof fetch;
}

/** What both the in-page engine and the worker proxy offer. */
export interface EngineInterface {
  readonly chat: {
    readonly completions: {
      create(request: ChatCompletionRequestNonStreaming): Promise<ChatCompletion>;
      create(request: ChatCompletionRequestStreaming): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(request: ChatCompletionRequest): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
    };
  };
  readonly completions: {
    create(request: CompletionRequestNonStreaming): Promise<Completion>;
    create(request: CompletionRequestStreaming): Promise<AsyncIterable<Completion>>;
    create(request: CompletionRequest): Promise<Completion | AsyncIterable<Completion>>;
  };
  reload(modelId: string): Promise<void>;
  resetChat(): Promise<void>;
  interruptGenerate(): void;
  runtimeStatsText(): Promise<string>;
  unload(): Promise<void>;
  setInitProgressCallback(cb: InitProgressCallback | undefined): void;
}

// ---------------------------------------------------------------------------------------------
// The model backend

export interface ForwardBackend {
  readonly vocabSize: number;
  /**
   * Append `tokens` (at most prefill_chunk_size) to the sequence. Returns the logits of the last
   * position when `wantLogits`, else null (intermediate chunks skip the GPU->CPU copy).
   */
  prefill(tokens: readonly number[], wantLogits: boolean): Promise<Float32Array | null>;
  /** Append one token; returns its logits. */
  decode(token: number): Promise<Float32Array>;
  /** Drop the last n tokens from the KV cache; false when the runtime cannot (caller resets). */
  popN(n: number): boolean;
  /** Empty the KV cache. */
  reset(): void;
  statsText(): string;
  dispose(): void;
}

/** Everything a loaded model needs besides the backend. */
export interface LoadedModel {
  modelId: string;
  config: ChatConfig;
  tokenizer: TextTokenizer;
  template: ChatTemplate;
  backend: ForwardBackend;
}

// ---------------------------------------------------------------------------------------------
// WebGPU device

interface GPUSetup {
  device: GPUDevice;
  adapterDescription: string;
}

/**
 * A one-line description of the adapter for logs, errors and benchmarks. Browsers often blank
 * `info` fields (privacy); Chromium fills `description` under --enable-webgpu-developer-features.
 * A compatibility-mode adapter (no "core-features-and-limits") and a fallback (software) adapter
 * are flagged, since both change what a model build can expect.
 */
export function describeAdapter(adapter: GPUAdapter): string {
  const info = adapter.info as (GPUAdapterInfo & { isFallbackAdapter?: boolean }) | undefined;
  const parts = info ? [info.vendor, info.architecture, info.description].filter((x) => typeof x === "string" && x.length > 0) : [];
  let text = parts.join(" ") || "unknown adapter";
  const flags: string[] = [];
  if (info?.isFallbackAdapter) flags.push("fallback");
  if (!adapter.features.has("core-features-and-limits" as GPUFeatureName)) flags.push("compatibility mode");
  if (flags.length) text += ` [${flags.join(", ")}]`;
  return text;
}

async function requestDevice(gpu: GPU | undefined, requiredFeatures: readonly string[], adapterOptions?: GPURequestAdapterOptions): Promise<GPUSetup> {
  if (!gpu) {
    throw new WebGPUNotAvailableError(
      "WebGPU is not available here (navigator.gpu is missing). Use a browser with WebGPU " +
        "(Chrome/Edge 113+, Safari 26+, Firefox 141+ on Windows) and serve the page over https or localhost.",
    );
  }
  const adapter = await gpu.requestAdapter(adapterOptions ?? { powerPreference: "high-performance" });
  if (!adapter) {
    throw new WebGPUNotAvailableError(
      "WebGPU is present but no GPU adapter is available (blocklisted driver, or GPU access disabled).",
    );
  }
  const adapterDescription = describeAdapter(adapter);
  for (const f of requiredFeatures) {
    if (!adapter.features.has(f)) {
      throw new FeatureNotSupportedError(
        `This model needs the WebGPU feature "${f}", which this GPU/browser (${adapterDescription}) does not offer. ` +
          (f === "shader-f16" ? "Use a build of the model with an f32 quantization (e.g. q4f32_1)." : ""),
        { feature: f, adapter: adapterDescription },
      );
    }
  }
  // Also enable the optional features TVM's kernels may use when present; it costs nothing.
  const features = new Set<GPUFeatureName>(requiredFeatures as GPUFeatureName[]);
  for (const f of ["shader-f16", "subgroups"] as GPUFeatureName[]) if (adapter.features.has(f)) features.add(f);
  // Ask for the adapter's maxima: model kernels bind large weight buffers and big workgroups,
  // and defaults (128 MiB bindings, 256 invocations) are too small for real models.
  const l = adapter.limits as unknown as Record<string, number | undefined>;
  const requiredLimits: Record<string, number> = {};
  for (const k of [
    "maxBufferSize",
    "maxStorageBufferBindingSize",
    "maxComputeWorkgroupStorageSize",
    "maxStorageBuffersPerShaderStage",
    "maxComputeInvocationsPerWorkgroup",
    "maxComputeWorkgroupSizeX",
    "maxComputeWorkgroupSizeY",
    "maxComputeWorkgroupSizeZ",
  ]) {
    const v = l[k];
    if (typeof v === "number") requiredLimits[k] = v;
  }
  const device = await adapter.requestDevice({ requiredFeatures: [...features], requiredLimits });
  return { device, adapterDescription };
}

// ---------------------------------------------------------------------------------------------
// TVM backend

/** Give tvmjs' bundled Emscripten WASI shim the CommonJS globals it expects under Node (never in browsers). */
async function ensureNodeRequire(): Promise<void> {
  const g = globalThis as Record<string, unknown>;
  const proc = g["process"] as { versions?: { node?: string } } | undefined;
  if (proc?.versions?.node && typeof g["require"] === "undefined") {
    // Computed at run time so no bundler (ours or a page's) tries to resolve a Node builtin.
    const spec = ["node", "module"].join(":");
    const mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ spec)) as { createRequire(url: string): unknown };
    g["require"] = mod.createRequire(import.meta.url);
  }
  // The same shim reads __dirname (an ES module has none) to locate files it never loads.
  if (proc?.versions?.node && typeof g["__dirname"] === "undefined") {
    g["__dirname"] = (g["process"] as { cwd(): string }).cwd();
  }
}

function int64(v: number): unknown {
  // Integers must cross into TVM as int64 scalars: a bare JS number is passed as a float.
  return new tvmjs.Scalar(v, "int64");
}

export class TVMBackend implements ForwardBackend {
  readonly vocabSize: number;
  private readonly tvm: Instance;
  private readonly params: TVMObject;
  private readonly paramTensors: Tensor[];
  private readonly vm: VirtualMachine;
  private readonly fEmbed: PackedFunc;
  private readonly fPrefill: PackedFunc;
  private readonly fDecode: PackedFunc;
  private readonly fBegin: PackedFunc;
  private readonly fEnd: PackedFunc;
  private readonly fClear: PackedFunc;
  private readonly fAddSeq: PackedFunc;
  private readonly fPopN: PackedFunc | undefined;
  private readonly kv: TVMObject;
  private logitsCPU: Tensor | undefined;
  private disposed = false;

  private constructor(tvm: Instance, config: ChatConfig, paramTensors: Tensor[]) {
    this.tvm = tvm;
    this.vocabSize = config.model_config.vocab_size;
    this.paramTensors = paramTensors;
    const detach = <T extends { dispose(): void }>(x: T): T => tvm.detachFromCurrentScope(x);
    tvm.beginScope();
    try {
      this.params = detach(tvm.makeTVMArray(paramTensors));
      this.vm = detach(tvm.createVirtualMachine(tvm.webgpu()));
      this.fEmbed = detach(this.vm.getFunction(VM_FUNCTIONS.embed));
      this.fPrefill = detach(this.vm.getFunction(VM_FUNCTIONS.prefill));
      this.fDecode = detach(this.vm.getFunction(VM_FUNCTIONS.decode));
      this.fBegin = detach(tvm.getGlobalFunc(KV_BUILTINS.begin_forward));
      this.fEnd = detach(tvm.getGlobalFunc(KV_BUILTINS.end_forward));
      this.fClear = detach(tvm.getGlobalFunc(KV_BUILTINS.clear));
      this.fAddSeq = detach(tvm.getGlobalFunc(KV_BUILTINS.add_sequence));
      // PopN lets a new turn reuse the shared prefix of the KV cache; optional.
      this.fPopN = TVMBackend.optionalGlobal(tvm, KV_BUILTINS.popn);
      const fCreateKV = this.vm.getFunction(VM_FUNCTIONS.createKVCache);
      this.kv = detach(fCreateKV(...kvCacheArgs(config.context_window_size, config.prefill_chunk_size, 1).map((v) => tvm.makeShapeTuple([v]))) as TVMObject);
      this.addSequence();
    } finally {
      tvm.endScope();
    }
  }

  private static optionalGlobal(tvm: Instance, name: string): PackedFunc | undefined {
    try {
      return tvm.detachFromCurrentScope(tvm.getGlobalFunc(name));
    } catch {
      return undefined;
    }
  }

  private addSequence(): void {
    this.fAddSeq(this.kv, int64(0));
  }

  /**
   * Instantiate the model wasm, upload every weight (as shards arrive), compile the kernels.
   * `onPhase` reports "compile" progress; download progress comes from the loader.
   */
  static async load(args: {
    wasm: Uint8Array;
    wasmUrl: string;
    device: GPUDevice;
    config: ChatConfig;
    manifest: TensorManifest;
    baseUrl: string;
    loader: ArtifactLoader;
    logger: (msg: string) => void;
    onCompileProgress: (fraction: number, text: string) => void;
  }): Promise<TVMBackend> {
    const { config, manifest } = args;
    await ensureNodeRequire();
    const wasmBuffer = args.wasm.buffer.slice(args.wasm.byteOffset, args.wasm.byteOffset + args.wasm.byteLength) as ArrayBuffer;
    let tvm: Instance;
    try {
      tvm = await tvmjs.instantiate(wasmBuffer, tvmjs.createPolyfillWASI() as unknown as Record<string, unknown>, args.logger);
    } catch (e) {
      throw new ArtifactFormatError(
        `The model library (${args.wasmUrl}) could not be instantiated: ${(e as Error)?.message ?? String(e)}. ` +
          `Rebuild it with \`sphere_aae compile --device webgpu\` (it must match this engine's TVM runtime).`,
        { url: args.wasmUrl },
        { cause: e },
      );
    }
    try {
      tvm.initWebGPU(args.device);
      const dev = tvm.webgpu();
      const tensors: Tensor[] = new Array(manifest.tensors.length);
      const byShard: number[][] = manifest.shards.map(() => []);
      manifest.tensors.forEach((t, i) => byShard[t.shard]!.push(i));

      await args.loader.loadShards(args.baseUrl, manifest, (shardIndex, bytes) => {
        tvm.beginScope();
        try {
          for (const i of byShard[shardIndex]!) {
            const t = manifest.tensors[i]!;
            const gpu = tvm.detachFromCurrentScope(tvm.empty(t.shape, t.dtype, dev));
            const data = bytes.subarray(t.byte_offset, t.byte_offset + t.bytes);
            if (t.bytes % 4 === 0) {
              gpu.copyFromRawBytes(data);
            } else {
              // WebGPU writes need 4-byte sizes; odd-sized tensors go through a CPU staging tensor.
              const cpu = tvm.empty(t.shape, t.dtype, tvm.cpu());
              cpu.copyFromRawBytes(data);
              gpu.copyFrom(cpu);
            }
            tensors[i] = gpu;
          }
        } finally {
          tvm.endScope();
        }
      });
      await dev.sync();

      tvm.registerInitProgressCallback((r) => args.onCompileProgress(r.progress, r.text));
      const backend = new TVMBackend(tvm, config, tensors);
      // Compile every WGSL kernel now (asynchronously, in parallel) rather than on first use.
      await tvm.asyncLoadWebGPUPipelines(backend.vm.getInternalModule());
      args.onCompileProgress(1, "GPU kernels ready");
      return backend;
    } catch (e) {
      try {
        tvm.dispose();
      } catch {
        /* already gone */
      }
      throw e;
    }
  }

  /** Runs embed + (prefill|decode) for `tokens` inside one TVM scope; returns logits or null. */
  private async forward(tokens: readonly number[], fn: PackedFunc, wantLogits: boolean): Promise<Float32Array | null> {
    if (this.disposed) throw new EngineNotLoadedError("The model was unloaded");
    const tvm = this.tvm;
    const dev = tvm.webgpu();
    tvm.beginScope();
    try {
      const n = tokens.length;
      const ids = tvm.empty([n], "int32", dev);
      ids.copyFrom(Int32Array.from(tokens));
      const embed = this.fEmbed(ids, this.params) as Tensor;
      const embed3 = embed.view([1, n, embed.shape[embed.shape.length - 1]!]);
      this.fBegin(this.kv, tvm.makeShapeTuple([0]), tvm.makeShapeTuple([n]));
      const ret = fn(embed3, this.kv, this.params) as { get(i: number): unknown };
      this.fEnd(this.kv);
      if (!wantLogits) return null;
      const logits = ret.get(0) as Tensor;
      if (!this.logitsCPU) {
        this.logitsCPU = tvm.detachFromCurrentScope(tvm.empty(logits.shape, logits.dtype, tvm.cpu()));
      }
      this.logitsCPU.copyFrom(logits);
      // Wait inside the scope so the GPU logits buffer outlives the copy that reads it.
      await dev.sync();
      return this.logitsCPU.toArray() as Float32Array;
    } finally {
      tvm.endScope();
    }
  }

  prefill(tokens: readonly number[], wantLogits: boolean): Promise<Float32Array | null> {
    return this.forward(tokens, this.fPrefill, wantLogits);
  }

  async decode(token: number): Promise<Float32Array> {
    return (await this.forward([token], this.fDecode, true))!;
  }

  popN(n: number): boolean {
    if (!this.fPopN) return false;
    this.fPopN(this.kv, int64(0), int64(n));
    return true;
  }

  reset(): void {
    this.fClear(this.kv);
    this.addSequence();
  }

  statsText(): string {
    try {
      return this.tvm.runtimeStatsText();
    } catch {
      return "";
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const objs: Array<{ dispose(): void } | undefined> = [
      this.logitsCPU, this.kv, this.params, ...this.paramTensors, this.fEmbed, this.fPrefill, this.fDecode,
      this.fBegin, this.fEnd, this.fClear, this.fAddSeq, this.fPopN, this.vm,
    ];
    for (const o of objs) {
      try {
        o?.dispose();
      } catch {
        /* the device may already be lost; the instance dispose below frees everything anyway */
      }
    }
    try {
      this.tvm.dispose(); // also destroys the GPUDevice, releasing all GPU memory
    } catch {
      /* already disposed (device lost) */
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Stop strings

/**
 * Finds stop strings in streamed text. Text that could be the start of a stop string is held
 * back until it is known not to be one, so a stop string never leaks to the caller in pieces.
 */
export class StopMatcher {
  private readonly stops: readonly string[];
  private pending = "";

  constructor(stops: readonly string[]) {
    this.stops = stops;
  }

  /** Feed new text; returns text safe to emit and whether a stop string was hit. */
  push(text: string): { emit: string; stopped: boolean } {
    if (this.stops.length === 0) return { emit: text, stopped: false };
    const buf = this.pending + text;
    let cut = -1;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.pending = "";
      return { emit: buf.slice(0, cut), stopped: true };
    }
    // Hold back the longest suffix that is a proper prefix of some stop string.
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, buf.length); k > hold; k--) {
        if (buf.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    this.pending = buf.slice(buf.length - hold);
    return { emit: buf.slice(0, buf.length - hold), stopped: false };
  }

  /** End of generation: whatever was held back was not a stop string. */
  flush(): string {
    const p = this.pending;
    this.pending = "";
    return p;
  }
}

/** The detokenizer and stop matcher of one choice: request_spec.json's stop rules. */
export class TextStream {
  private readonly detok: StreamingDetokenizer;
  private readonly stopper: StopMatcher;

  constructor(tokenizer: TextTokenizer, promptIds: readonly number[], stops: readonly string[]) {
    this.detok = new StreamingDetokenizer(tokenizer, promptIds);
    this.stopper = new StopMatcher(stops);
  }

  /** Add one token: the text now safe to emit, and whether it hit a stop string. */
  push(id: number): { text: string; stopped: boolean } {
    const r = this.stopper.push(this.detok.push(id));
    return { text: r.emit, stopped: r.stopped };
  }

  /** The choice ends: release the held-back text, cut at a stop string it completes. */
  finish(): { text: string; stopped: boolean } {
    const r = this.stopper.push(this.detok.flush());
    return r.stopped ? { text: r.emit, stopped: true } : { text: r.emit + this.stopper.flush(), stopped: false };
  }
}

// ---------------------------------------------------------------------------------------------
// Engine

interface GenerationStep {
  text: string;
  /** Content tokens sampled since the previous step, with their logprobs when asked (EOS excluded). */
  tokens: SampledToken[];
  /** Ids generated since the previous step (a token whose text is held back waits for the next). */
  tokenIds: number[];
}

interface GenerationResult {
  finishReason: FinishReason;
  /** Every generated id, EOS included when it ended the generation (as completion_tokens counts it). */
  completionIds: number[];
  prefillTokens: number;
  prefillS: number;
  decodeSteps: number;
  decodeS: number;
  firstTokenS: number;
  totalS: number;
}

/** What the decode loop of one choice reports to `generate`. */
interface DecodeRun {
  finishReason: FinishReason;
  ids: number[];
  decodeSteps: number;
  decodeS: number;
  /** when the first token was sampled (now()) */
  tFirst: number;
}

/** One choice of one request: one prompt, one seed, one run of the decode loop (Python's _Job). */
interface Choice {
  index: number;
  promptIds: number[];
  sampling: SamplingParams;
  seed: bigint;
  /** min(max_tokens, context_window_size - prompt tokens): request_spec.json context_window */
  maxNew: number;
  stop: string[];
}

/** A validated, tokenized request: its choices, run one after the other (Python's _Prepared). */
interface RequestPlan {
  kind: Endpoint;
  /** Each prompt's ids (one for chat). */
  prompts: number[][];
  choices: Choice[];
  logprobs: boolean;
  returnTokenIds: boolean;
  /** Shared by the choices: interruptGenerate() ends the running one and skips the rest. */
  control: { interrupted: boolean };
}

function commonPrefixLength(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function now(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

function randomId(prefix: string): string {
  const b = new Uint8Array(12);
  globalThis.crypto.getRandomValues(b);
  return prefix + Array.from(b, (x) => x.toString(36).padStart(2, "0")).join("").slice(0, 24);
}

/** A simple FIFO mutex: generations, resets and unloads run one at a time. */
class Mutex {
  private tail: Promise<void> = Promise.resolve();
  async acquire(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((r) => (release = r));
    const prev = this.tail;
    this.tail = prev.then(() => next);
    await prev;
    return release;
  }
}

export class Engine implements EngineInterface {
  private config: EngineConfig;
  private model: LoadedModel | undefined;
  private loading: AbortController | undefined;
  private readonly mutex = new Mutex();
  /** Tokens whose keys/values are in the KV cache, in order (for prefix reuse across turns). */
  private kvTokens: number[] | null = [];
  private generation: { interrupted: boolean } | undefined;
  private deviceLost: string | undefined;
  private lastStats = { prefillTokensPerS: 0, decodeTokensPerS: 0, prefillTokens: 0, decodeTokens: 0 };
  private adapterDescription: string | undefined;
  private progressCallback: InitProgressCallback | undefined;

  readonly chat: EngineInterface["chat"];
  readonly completions: EngineInterface["completions"];

  constructor(config: EngineConfig = {}) {
    this.config = config;
    this.progressCallback = config.initProgressCallback;
    const chatCreate = (req: ChatCompletionRequest) => this.createChatCompletion(req);
    const completionCreate = (req: CompletionRequest) => this.createCompletion(req);
    this.chat = { completions: { create: chatCreate as EngineInterface["chat"]["completions"]["create"] } };
    this.completions = { create: completionCreate as EngineInterface["completions"]["create"] };
  }

  setInitProgressCallback(cb: InitProgressCallback | undefined): void {
    this.progressCallback = cb;
  }

  /** Merge options into the engine's configuration (they apply from the next reload). */
  updateConfig(partial: Partial<EngineConfig>): void {
    this.config = { ...this.config, ...partial };
    if ("initProgressCallback" in partial) this.progressCallback = partial.initProgressCallback;
  }

  /** Id of the loaded model, if any. */
  get modelId(): string | undefined {
    return this.model?.modelId;
  }

  /** The WebGPU adapter of the last load, as one line (vendor, architecture, description, mode). */
  get adapterInfo(): string | undefined {
    return this.adapterDescription;
  }

  /** The loaded model's chat config (context window, sampling defaults...). */
  get chatConfig(): ChatConfig | undefined {
    return this.model?.config;
  }

  private log(msg: string): void {
    (this.config.logger ?? ((m: string) => console.log(`[aae] ${m}`)))(msg);
  }

  private makeStore(): ByteStore | null {
    if (this.config.store !== undefined) return this.config.store;
    try {
      if (this.config.appConfig?.useIndexedDBCache) return new IndexedDBStore();
      if (typeof caches === "undefined") {
        this.log("Cache API unavailable (insecure context or Node): model files will not be cached");
        return null;
      }
      return new CacheApiStore();
    } catch (e) {
      this.log(`model cache unavailable: ${(e as Error).message}`);
      return null;
    }
  }

  /** Load `modelId` (from appConfig.model_list), replacing any loaded model. */
  async reload(modelId: string): Promise<void> {
    await this.unload();
    const record = findModel(this.config.appConfig, modelId);
    const abort = new AbortController();
    this.loading = abort;
    const started = now();
    const report = (phase: LoadPhase, fraction: number, text: string, p?: Partial<LoadProgress>) => {
      // Downloading is most of a first load; compiling kernels the rest.
      const overall = phase === "download" ? 0.9 * fraction : phase === "compile" ? 0.9 + 0.1 * fraction : 1;
      this.progressCallback?.({
        progress: overall,
        timeElapsed: (now() - started) / 1000,
        text,
        phase,
        loadedBytes: p?.loadedBytes ?? 0,
        totalBytes: p?.totalBytes ?? 0,
        loadedShards: p?.loadedShards ?? 0,
        totalShards: p?.totalShards ?? 0,
        cachedBytes: p?.cachedBytes ?? 0,
      });
    };
    let lastDownload: LoadProgress | undefined;
    const loaderOpts: ConstructorParameters<typeof ArtifactLoader>[0] = {
      store: this.makeStore(),
      signal: abort.signal,
      onProgress: (p) => {
        lastDownload = p;
        const mb = (b: number) => (b / 1048576).toFixed(1);
        const verb = p.cachedBytes >= p.loadedBytes && p.loadedBytes > 0 ? "Loading from cache" : "Downloading";
        report("download", p.progress, `${verb}: ${mb(p.loadedBytes)} / ${mb(p.totalBytes)} MB (${p.loadedShards}/${p.totalShards} shards)`, p);
      },
    };
    if (this.config.fetch) loaderOpts.fetch = this.config.fetch;
    if (this.config.maxConcurrentDownloads !== undefined) loaderOpts.maxConcurrency = this.config.maxConcurrentDownloads;
    if (this.config.verifyCachedShards !== undefined) loaderOpts.verifyCached = this.config.verifyCachedShards;
    const loader = new ArtifactLoader(loaderOpts);
    let ownedDevice: GPUDevice | undefined;

    try {
      const baseUrl = normalizeBaseUrl(record.model_url);
      report("download", 0, "Fetching model configuration");
      let rawConfig: unknown;
      try {
        rawConfig = await loader.fetchJson(fileUrl(baseUrl, CHAT_CONFIG_FILE));
      } catch (e) {
        if (e instanceof NetworkError && e.details["status"] === 404) {
          throw new ModelNotFoundError(`No ${CHAT_CONFIG_FILE} at ${baseUrl} (model "${modelId}"): is model_url right?`, { modelId, url: baseUrl });
        }
        throw e;
      }
      const config = parseChatConfig(rawConfig, fileUrl(baseUrl, CHAT_CONFIG_FILE));
      if (config.model_id !== modelId) {
        this.log(`model "${modelId}" points at a folder built as "${config.model_id}"`);
      }

      // Fail fast on the GPU before downloading anything large.
      const gpu = this.config.gpu ?? (typeof navigator !== "undefined" ? navigator.gpu : undefined);
      const setup = await requestDevice(gpu, config.required_features, this.config.requestAdapterOptions);
      const { device, adapterDescription } = setup;
      ownedDevice = device;
      this.log(`WebGPU adapter: ${adapterDescription}`);
      this.adapterDescription = adapterDescription;
      device.lost.then((info) => {
        // tvm.dispose() destroys the device on purpose; only an unexpected loss is an error.
        if (info.reason !== "destroyed") {
          this.deviceLost = `${info.reason}: ${info.message}`;
          this.log(`GPU device lost (${this.deviceLost})`);
        }
      });

      const manifest = parseManifest(await loader.fetchJson(fileUrl(baseUrl, config.manifest)), fileUrl(baseUrl, config.manifest));
      const tokenizerFiles = new Set(config.tokenizer_files);
      const tokJson = await loader.fetchJson(fileUrl(baseUrl, TOKENIZER_FILE));
      const tokConfig = tokenizerFiles.has(TOKENIZER_CONFIG_FILE) ? await loader.fetchJson(fileUrl(baseUrl, TOKENIZER_CONFIG_FILE)) : {};
      const tokenizer = new TextTokenizer(tokJson as object, tokConfig as object, { bos: config.bos_token_id, eos: config.eos_token_ids });
      const template = new ChatTemplate(config.chat_template, chatTemplateSpecials(tokenizer));

      const wasmUrl = record.model_lib_url ? new URL(record.model_lib_url, baseUrl).href : fileUrl(baseUrl, modelLibFile(config, "webgpu"));
      const wasm = await loader.fetchBytes(wasmUrl, {});

      const backend = await TVMBackend.load({
        wasm,
        wasmUrl,
        device,
        config,
        manifest,
        baseUrl,
        loader,
        logger: (m) => this.log(m),
        onCompileProgress: (f, text) => report("compile", f, text, lastDownload),
      });
      if (abort.signal.aborted) {
        backend.dispose();
        abort.signal.throwIfAborted();
      }
      this.model = { modelId, config, tokenizer, template, backend };
      this.kvTokens = [];
      this.deviceLost = undefined;
      report("ready", 1, `Ready: ${modelId}`, lastDownload);
    } catch (e) {
      // Do not keep a device (and whatever it allocated) for a model that failed to load.
      if (ownedDevice && !this.model) ownedDevice.destroy();
      throw e;
    } finally {
      if (this.loading === abort) this.loading = undefined;
    }
  }

  /** For tests and custom runtimes: install an already-built model (no download, no GPU). */
  installModel(model: LoadedModel): void {
    this.model = model;
    this.kvTokens = [];
    this.deviceLost = undefined;
  }

  interruptGenerate(): void {
    if (this.generation) this.generation.interrupted = true;
  }

  async resetChat(): Promise<void> {
    const release = await this.mutex.acquire();
    try {
      this.kvTokens = [];
      this.model?.backend.reset();
    } finally {
      release();
    }
  }

  async runtimeStatsText(): Promise<string> {
    const s = this.lastStats;
    return `prefill: ${s.prefillTokensPerS.toFixed(1)} tokens/sec, decoding: ${s.decodeTokensPerS.toFixed(1)} tokens/sec`;
  }

  async unload(): Promise<void> {
    this.loading?.abort();
    this.interruptGenerate();
    const release = await this.mutex.acquire();
    try {
      const m = this.model;
      this.model = undefined;
      this.kvTokens = [];
      m?.backend.dispose();
    } finally {
      release();
    }
  }

  private requireModel(): LoadedModel {
    if (this.deviceLost) {
      throw new DeviceLostError(`The GPU device was lost (${this.deviceLost}); call reload() to load the model again.`);
    }
    if (!this.model) throw new EngineNotLoadedError("No model is loaded: call reload(modelId) (or CreateEngine) first.");
    return this.model;
  }

  private checkModelField(model: LoadedModel, requested: string | undefined): void {
    if (requested !== undefined && requested !== model.modelId) {
      throw specError("model", "model", { requested, loaded: model.modelId });
    }
  }

  private encodePrompt(model: LoadedModel, text: string): number[] {
    const ids = model.tokenizer.encode(text);
    const bos = model.config.bos_token_id;
    if (model.config.add_bos_token && bos !== null && ids[0] !== bos) ids.unshift(bos);
    return ids;
  }

  /**
   * One choice: prefill, then the decode loop. Yields text deltas as they become final; returns
   * the finish reason and timings. Holds the engine mutex for its whole run (one at a time).
   */
  private async *generate(model: LoadedModel, plan: RequestPlan, choice: Choice): AsyncGenerator<GenerationStep, GenerationResult> {
    const release = await this.mutex.acquire();
    this.generation = plan.control;
    try {
      if (this.model !== model) throw new EngineNotLoadedError("The model was unloaded or replaced before this request ran.");
      this.requireModel();
      const t0 = now();
      if (plan.control.interrupted) return finished("abort", [], t0, { prefillTokens: 0, prefillS: 0, decodeSteps: 0, decodeS: 0, firstTokenS: 0 });
      const { logits, prefilled } = await this.prefillPrompt(model, choice.promptIds);
      const tPrefill = now();
      const run = yield* this.decodeLoop(model, plan, choice, logits);
      this.lastStats = {
        prefillTokensPerS: tPrefill > t0 ? prefilled / ((tPrefill - t0) / 1000) : 0,
        decodeTokensPerS: run.decodeS > 0 && run.decodeSteps > 0 ? run.decodeSteps / run.decodeS : 0,
        prefillTokens: prefilled,
        decodeTokens: run.decodeSteps,
      };
      const timing = { prefillTokens: prefilled, prefillS: (tPrefill - t0) / 1000, decodeSteps: run.decodeSteps, decodeS: run.decodeS, firstTokenS: (run.tFirst - t0) / 1000 };
      return finished(run.finishReason, run.ids, t0, timing);
    } finally {
      if (this.generation === plan.control) this.generation = undefined;
      release();
    }
  }

  /**
   * Prefill `promptIds`, reusing the KV cache for the prefix it shares with what is already
   * cached (multi-turn chat resends the whole history). At least one token is always prefilled,
   * since its logits are needed. A null kvTokens means a forward failed midway: the cache content
   * is unknown, so start over. Sliding-window models roll back like any other: their cache keeps
   * every token; prefillChunkLength applies their chunk rule.
   */
  private async prefillPrompt(model: LoadedModel, promptIds: number[]): Promise<{ logits: Float32Array; prefilled: number }> {
    const { backend, config } = model;
    const cached = this.kvTokens ?? [];
    let keep = this.kvTokens ? commonPrefixLength(cached, promptIds) : 0;
    if (keep === promptIds.length) keep -= 1;
    if (this.kvTokens === null || keep < cached.length) {
      if (keep === 0 || !backend.popN(cached.length - keep)) {
        backend.reset();
        keep = 0;
      }
      this.kvTokens = promptIds.slice(0, keep);
    }
    const toPrefill = promptIds.slice(keep);
    let logits: Float32Array | null = null;
    try {
      for (let i = 0; i < toPrefill.length; ) {
        const before = this.kvTokens!.length;
        const piece = toPrefill.slice(i, i + prefillChunkLength(before, config.prefill_chunk_size, config.sliding_window_size));
        i += piece.length;
        this.kvTokens = null; // unknown until the forward returns
        logits = await backend.prefill(piece, i >= toPrefill.length);
        this.kvTokens = promptIds.slice(0, before + piece.length);
      }
    } catch (e) {
      throw this.wrapRuntimeError(e);
    }
    if (!logits) throw new Error("internal: no logits");
    return { logits, prefilled: toPrefill.length };
  }

  /**
   * Sample, detokenize, match stop strings, decode: request_spec.json's EOS, stop and context
   * rules, as the native engine's _EngineCore._step applies them.
   */
  private async *decodeLoop(model: LoadedModel, plan: RequestPlan, choice: Choice, first: Float32Array): AsyncGenerator<GenerationStep, DecodeRun> {
    const { backend, config, tokenizer } = model;
    const eos = new Set(config.eos_token_ids);
    const sampler = new Sampler(choice.sampling, config.model_config.vocab_size, choice.promptIds, config.eos_token_ids, choice.seed);
    const text = new TextStream(tokenizer, choice.promptIds, choice.stop);
    const ids: number[] = [];
    let sent = 0;
    let tokens: SampledToken[] = [];
    let finishReason: FinishReason | undefined;
    let logits = first;
    let decodeSteps = 0;
    let tFirst = now();
    for (;;) {
      const s = sampler.sample(logits);
      ids.push(s.tokenId);
      if (ids.length === 1) tFirst = now();
      let out: string;
      if (eos.has(s.tokenId) && !choice.sampling.ignore_eos) {
        out = text.finish().text; // EOS is not content: no text, no logprobs entry
        finishReason = "stop";
      } else {
        if (plan.logprobs) tokens.push(s);
        const r = text.push(s.tokenId);
        out = r.text;
        if (r.stopped) finishReason = "stop";
        else if (ids.length >= choice.maxNew || plan.control.interrupted) {
          const tail = text.finish();
          out += tail.text;
          finishReason = tail.stopped ? "stop" : ids.length >= choice.maxNew ? "length" : "abort";
        }
      }
      if (out || tokens.length) {
        yield { text: out, tokens, tokenIds: ids.slice(sent) };
        sent = ids.length;
        tokens = [];
      }
      if (finishReason !== undefined) break;
      logits = await this.decodeOne(backend, ids, choice.promptIds);
      decodeSteps++;
      // The consumer may have interrupted while we awaited the GPU.
      if (plan.control.interrupted) {
        finishReason = "abort";
        const tail = text.finish().text;
        if (tail) yield { text: tail, tokens: [], tokenIds: ids.slice(sent) };
        break;
      }
    }
    return { finishReason: finishReason!, ids, decodeSteps, decodeS: (now() - tFirst) / 1000, tFirst };
  }

  /** Feed the newest generated token; the KV cache then holds prompt + generated. */
  private async decodeOne(backend: ForwardBackend, ids: number[], promptIds: number[]): Promise<Float32Array> {
    try {
      this.kvTokens = null;
      const logits = await backend.decode(ids[ids.length - 1]!);
      this.kvTokens = [...promptIds, ...ids];
      return logits;
    } catch (e) {
      throw this.wrapRuntimeError(e);
    }
  }

  private wrapRuntimeError(e: unknown): unknown {
    if (this.deviceLost) {
      return new DeviceLostError(`The GPU device was lost (${this.deviceLost}); call reload() to load the model again.`, {}, { cause: e });
    }
    return e;
  }

  // -- chat.completions.create ----------------------------------------------------------------

  private async createChatCompletion(request: ChatCompletionRequest): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>> {
    const parsed = parseChatRequest(request);
    const model = this.requireModel();
    this.checkModelField(model, parsed.model);
    const prompt = model.template.render(parsed.messages);
    const plan = planRequest(model, "chat", [this.encodePrompt(model, prompt)], parsed, parsed.sampling.logprobs);
    const meta = { id: randomId(SPEC.endpoints.chat.id_prefix), created: Math.floor(Date.now() / 1000), model: model.modelId };
    if (!parsed.stream) return this.completeChat(model, plan, meta);
    return this.streamChat(model, plan, meta, parsed.includeUsage);
  }

  /** Run one choice to its end, collecting its text and logprob tokens. */
  private async collect(model: LoadedModel, plan: RequestPlan, choice: Choice): Promise<{ text: string; tokens: SampledToken[]; result: GenerationResult }> {
    let text = "";
    const tokens: SampledToken[] = [];
    const it = this.generate(model, plan, choice);
    let r = await it.next();
    while (!r.done) {
      text += r.value.text;
      tokens.push(...r.value.tokens);
      r = await it.next();
    }
    return { text, tokens, result: r.value };
  }

  private async completeChat(model: LoadedModel, plan: RequestPlan, meta: ResponseMeta): Promise<ChatCompletion> {
    const choices: ChatCompletion["choices"] = [];
    const results: GenerationResult[] = [];
    for (const c of plan.choices) {
      const { text, tokens, result } = await this.collect(model, plan, c);
      results.push(result);
      const logprobs = plan.logprobs ? { content: tokens.map((t) => chatLogprob(model.tokenizer, t)) } : null;
      choices.push({ index: c.index, message: { role: "assistant", content: text }, finish_reason: result.finishReason, logprobs, ...idsOf(plan, result.completionIds) });
    }
    const out: ChatCompletion = { ...meta, object: "chat.completion", choices, usage: usageOf(plan, results) };
    if (plan.returnTokenIds) out.prompt_token_ids = plan.prompts[0]!.slice();
    return out;
  }

  private async *streamChat(model: LoadedModel, plan: RequestPlan, meta: ResponseMeta, includeUsage: boolean): AsyncGenerator<ChatCompletionChunk> {
    const base = { ...meta, object: "chat.completion.chunk" as const };
    const withUsage = (c: ChatCompletionChunk): ChatCompletionChunk => (includeUsage ? { ...c, usage: null } : c);
    // Every choice opens with a role-only delta, as OpenAI's streams (and the native engine's) do.
    for (const c of plan.choices) {
      const first: ChatCompletionChunk = { ...base, choices: [{ index: c.index, delta: { role: "assistant", content: "" }, finish_reason: null, logprobs: null }] };
      if (plan.returnTokenIds && c === plan.choices[0]) first.prompt_token_ids = plan.prompts[0]!.slice();
      yield withUsage(first);
    }
    const results: GenerationResult[] = [];
    for (const c of plan.choices) {
      const it = this.generate(model, plan, c);
      try {
        let sent = 0;
        let r = await it.next();
        while (!r.done) {
          sent += r.value.tokenIds.length;
          const logprobs = plan.logprobs ? { content: r.value.tokens.map((t) => chatLogprob(model.tokenizer, t)) } : null;
          yield withUsage({ ...base, choices: [{ index: c.index, delta: { content: r.value.text }, finish_reason: null, logprobs, ...idsOf(plan, r.value.tokenIds) }] });
          r = await it.next();
        }
        results.push(r.value);
        const rest = idsOf(plan, r.value.completionIds.slice(sent));
        yield withUsage({ ...base, choices: [{ index: c.index, delta: {}, finish_reason: r.value.finishReason, logprobs: null, ...rest }] });
      } finally {
        // A consumer that stops iterating early must not leave the generation holding the lock.
        await it.return?.(undefined as never);
      }
    }
    if (includeUsage) yield { ...base, choices: [], usage: usageOf(plan, results) };
  }

  // -- completions.create (raw prompt, no chat template) --------------------------------------

  private async createCompletion(request: CompletionRequest): Promise<Completion | AsyncIterable<Completion>> {
    const parsed = parseCompletionRequest(request);
    const model = this.requireModel();
    this.checkModelField(model, parsed.model);
    const prompts = parsed.prompts.map((p) => (typeof p === "string" ? this.encodePrompt(model, p) : p.slice()));
    const plan = planRequest(model, "completion", prompts, parsed, parsed.logprobs !== undefined);
    // echo: the prompt as given, or the decoded ids (as the native engine does).
    const echo = parsed.echo ? parsed.prompts.map((p) => (typeof p === "string" ? p : model.tokenizer.decode(p))) : null;
    const meta = { id: randomId(SPEC.endpoints.completion.id_prefix), created: Math.floor(Date.now() / 1000), model: model.modelId };
    if (!parsed.stream) return this.completeText(model, plan, meta, echo);
    return this.streamText(model, plan, meta, echo, parsed.includeUsage);
  }

  private async completeText(model: LoadedModel, plan: RequestPlan, meta: ResponseMeta, echo: string[] | null): Promise<Completion> {
    const choices: Completion["choices"] = [];
    const results: GenerationResult[] = [];
    for (const c of plan.choices) {
      const { text, tokens, result } = await this.collect(model, plan, c);
      results.push(result);
      const head = echo ? echo[promptOf(plan, c)]! : "";
      const logprobs = plan.logprobs ? completionLogprobs(model.tokenizer, tokens, codePoints(head)) : null;
      choices.push({ index: c.index, text: head + text, finish_reason: result.finishReason, logprobs, ...idsOf(plan, result.completionIds) });
    }
    const out: Completion = { ...meta, object: "text_completion", choices, usage: usageOf(plan, results) };
    if (plan.returnTokenIds) out.prompt_token_ids = promptIdsField(plan);
    return out;
  }

  private async *streamText(model: LoadedModel, plan: RequestPlan, meta: ResponseMeta, echo: string[] | null, includeUsage: boolean): AsyncGenerator<Completion> {
    const base = { ...meta, object: "text_completion" as const };
    let promptPending = plan.returnTokenIds;
    // prompt_token_ids ride on the first chunk only.
    const withPrompt = (c: Completion): Completion => {
      if (!promptPending) return c;
      promptPending = false;
      return { ...c, prompt_token_ids: promptIdsField(plan) };
    };
    if (echo) for (const c of plan.choices) yield withPrompt({ ...base, choices: [{ index: c.index, text: echo[promptOf(plan, c)]!, finish_reason: null, logprobs: null }] });
    const results: GenerationResult[] = [];
    for (const c of plan.choices) {
      const it = this.generate(model, plan, c);
      try {
        let sent = 0;
        let offset = 0; // the native engine's streamed offsets count the generated text only
        let r = await it.next();
        while (!r.done) {
          sent += r.value.tokenIds.length;
          const logprobs = plan.logprobs ? completionLogprobs(model.tokenizer, r.value.tokens, offset) : null;
          offset += codePoints(r.value.text);
          yield withPrompt({ ...base, choices: [{ index: c.index, text: r.value.text, finish_reason: null, logprobs, ...idsOf(plan, r.value.tokenIds) }] });
          r = await it.next();
        }
        results.push(r.value);
        const rest = idsOf(plan, r.value.completionIds.slice(sent));
        yield withPrompt({ ...base, choices: [{ index: c.index, text: "", finish_reason: r.value.finishReason, logprobs: null, ...rest }] });
      } finally {
        await it.return?.(undefined as never);
      }
    }
    if (includeUsage) yield { ...base, choices: [], usage: usageOf(plan, results) };
  }
}

// ---------------------------------------------------------------------------------------------
// Request planning and response pieces (the native engine's make_jobs and _Assembler)

interface ResponseMeta {
  id: string;
  created: number;
  model: string;
}

/**
 * How many tokens each prompt leaves room for (context_window - its length), after
 * request_spec.json's checks in the native engine's order (its check_prompts): logit_bias ids,
 * then per prompt: empty, out-of-vocabulary ids, too long.
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

/** Split a checked, tokenized request into choices: choice i of each prompt is seeded seed + i. */
function planRequest(model: LoadedModel, kind: Endpoint, prompts: number[][], parsed: ParsedChatRequest | ParsedCompletionRequest, logprobs: boolean): RequestPlan {
  const { config } = model;
  const s = parsed.sampling;
  const rooms = checkPrompts(kind, prompts, s.logit_bias.keys(), config.model_config.vocab_size, config.context_window_size);
  const d = config.sampling;
  const sampling: SamplingParams = {
    temperature: s.temperature ?? d.temperature,
    top_p: s.top_p ?? d.top_p,
    presence_penalty: s.presence_penalty ?? d.presence_penalty,
    frequency_penalty: s.frequency_penalty ?? d.frequency_penalty,
    repetition_penalty: s.repetition_penalty ?? d.repetition_penalty,
    logit_bias: s.logit_bias,
    ignore_eos: s.ignore_eos,
    logprobs,
    top_logprobs: s.topLogprobs,
  };
  const choices: Choice[] = [];
  prompts.forEach((ids, p) => {
    const maxNew = Math.min(s.max_tokens ?? Number.POSITIVE_INFINITY, rooms[p]!);
    for (let i = 0; i < parsed.n; i++) {
      // Unseeded choices each draw a seed from the platform's random source.
      const seed = s.seed !== undefined ? BigInt(s.seed) + BigInt(i) : randomSeed();
      choices.push({ index: p * parsed.n + i, promptIds: ids, sampling, seed, maxNew, stop: s.stop });
    }
  });
  return { kind, prompts, choices, logprobs, returnTokenIds: parsed.returnTokenIds, control: { interrupted: false } };
}

function finished(finishReason: FinishReason, completionIds: number[], t0: number, t: Omit<GenerationResult, "finishReason" | "completionIds" | "totalS">): GenerationResult {
  return { finishReason, completionIds, ...t, totalS: (now() - t0) / 1000 };
}

/** The prompt a choice continues (n choices per prompt). */
function promptOf(plan: RequestPlan, c: Choice): number {
  return Math.floor(c.index / (plan.choices.length / plan.prompts.length));
}

/** return_token_ids' prompt_token_ids: the prompt's ids, or a list per prompt when several. */
function promptIdsField(plan: RequestPlan): number[] | number[][] {
  return plan.prompts.length === 1 ? plan.prompts[0]!.slice() : plan.prompts.map((p) => p.slice());
}

/** `token_ids` for a choice or chunk: spreads to nothing when the request did not ask for ids. */
function idsOf(plan: RequestPlan, ids: number[]): { token_ids?: number[] } {
  return plan.returnTokenIds ? { token_ids: ids } : {};
}

/** Length in code points, as the native engine (Python str) counts text offsets. */
function codePoints(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

function usageOf(plan: RequestPlan, results: GenerationResult[]): CompletionUsage {
  const sum = (f: (r: GenerationResult) => number) => results.reduce((a, r) => a + f(r), 0);
  const promptTokens = plan.prompts.reduce((a, p) => a + p.length, 0);
  const completionTokens = sum((r) => r.completionIds.length);
  const prefillS = sum((r) => r.prefillS);
  const decodeS = sum((r) => r.decodeS);
  const prefillTps = prefillS > 0 ? sum((r) => r.prefillTokens) / prefillS : 0;
  const decodeTps = decodeS > 0 ? sum((r) => r.decodeSteps) / decodeS : 0;
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prefill_tokens_per_s: prefillTps,
    decode_tokens_per_s: decodeTps,
    extra: {
      prefill_tokens_per_s: prefillTps,
      decode_tokens_per_s: decodeTps,
      time_to_first_token_s: results[0]?.firstTokenS ?? 0,
      e2e_latency_s: sum((r) => r.totalS),
    },
  };
}

function logprobEntry(tokenizer: TextTokenizer, id: number, logprob: number): TopLogprob {
  return { token: tokenizer.tokenString(id), logprob, bytes: Array.from(tokenizer.tokenBytes(id)) };
}

function chatLogprob(tokenizer: TextTokenizer, t: SampledToken): ChatCompletionTokenLogprob {
  return { ...logprobEntry(tokenizer, t.tokenId, t.logprob), top_logprobs: t.topLogprobs.map(([i, lp]) => logprobEntry(tokenizer, i, lp)) };
}

/** The completions API's logprobs of `tokens`, whose text starts at code point `offset`. */
function completionLogprobs(tokenizer: TextTokenizer, tokens: SampledToken[], offset: number): CompletionLogprobs {
  const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  for (const t of tokens) {
    const text = tokenizer.tokenString(t.tokenId);
    out.tokens.push(text);
    out.token_logprobs.push(t.logprob);
    out.top_logprobs.push(Object.fromEntries(t.topLogprobs.map(([i, lp]) => [tokenizer.tokenString(i), lp])));
    out.text_offset.push(offset);
    offset += codePoints(text);
  }
  return out;
}

function chatTemplateSpecials(tok: TextTokenizer): Record<string, string | null> {
  const out: Record<string, string | null> = { bos_token: tok.bosToken, eos_token: tok.eosToken };
  for (const k of ["unk_token", "pad_token", "sep_token", "cls_token", "mask_token"]) {
    const v = tok.config[k];
    if (typeof v === "string") out[k] = v;
    else if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") out[k] = (v as { content: string }).content;
  }
  return out;
}

export function findModel(appConfig: AppConfig | undefined, modelId: string): ModelRecord {
  const list = appConfig?.model_list ?? [];
  const rec = list.find((m) => m.model_id === modelId);
  if (!rec) {
    const known = list.map((m) => m.model_id);
    throw new ModelNotFoundError(
      `Model "${modelId}" is not in appConfig.model_list` + (known.length ? ` (known: ${known.join(", ")})` : " (the list is empty)"),
      { modelId, known },
    );
  }
  return rec;
}

/** WebLLM-style factory: construct an engine and load `modelId`. */
export async function CreateEngine(modelId: string, config: EngineConfig = {}): Promise<Engine> {
  const engine = new Engine(config);
  await engine.reload(modelId);
  return engine;
}


// ---------------------------------------------------------------------------------------------
// Cache management (page or worker: the Cache API and IndexedDB are shared per origin)

function defaultStore(appConfig: AppConfig | undefined): ByteStore {
  return appConfig?.useIndexedDBCache ? new IndexedDBStore() : new CacheApiStore();
}

/** True when every file of `modelId` is in the browser cache (a load would fetch nothing). */
export async function hasModelInCache(modelId: string, appConfig: AppConfig, store?: ByteStore): Promise<boolean> {
  const rec = findModel(appConfig, modelId);
  const base = normalizeBaseUrl(rec.model_url);
  const lib = rec.model_lib_url ? new URL(rec.model_lib_url, base).href : undefined;
  return isModelCached(store ?? defaultStore(appConfig), base, lib);
}

/** Remove every cached file of `modelId`; returns how many entries were deleted. */
export async function deleteModelFromCache(modelId: string, appConfig: AppConfig, store?: ByteStore): Promise<number> {
  const rec = findModel(appConfig, modelId);
  const base = normalizeBaseUrl(rec.model_url);
  const extra = rec.model_lib_url ? [new URL(rec.model_lib_url, base).href] : [];
  return deleteCachedFolder(store ?? defaultStore(appConfig), base, extra);
}

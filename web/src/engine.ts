/**
 * The in-page engine's front end: loads a model folder (ARTIFACT.md) onto WebGPU through tvmjs
 * and serves OpenAI-shaped chat completions and completions from it. Twin of compiler/engine.py.
 *
 * The files, each the twin of a native one:
 *  - tokenizer.ts (tokenizer + incremental detokenizer), template.ts (chat template),
 *    text_stream.ts (stop strings over the detokenized text);
 *  - model_runtime.ts: the forward backend (KV cache sequences, prefill chunks, sliding-window
 *    rule, batched decode) over the compiled functions;
 *  - scheduler.ts: every request's choices on the paged KV cache, admitted one at a time and
 *    decoded in batches, each cancellable on its own; the prefix cache across chat turns;
 *  - assembler.ts: the scheduler's outputs as OpenAI chunks or objects;
 *  - this file: loading, request validation and tokenization, and the public API.
 */
import {
  CHAT_CONFIG_FILE,
  TOKENIZER_CONFIG_FILE,
  TOKENIZER_FILE,
  fileUrl,
  modelLibFile,
  normalizeBaseUrl,
  parseChatConfig,
  parseManifest,
  type ChatConfig,
  type TensorManifest,
} from "./artifact.js";
import { Assembler } from "./assembler.js";
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
import { DeviceLostError, EngineNotLoadedError, FeatureNotSupportedError, ModelNotFoundError, NetworkError } from "./errors.js";
import { ModelRuntime, TVMBackend, type ForwardBackend, type LibraryDevice } from "./model_runtime.js";
import {
  parseChatRequest,
  parseCompletionRequest,
  specError,
  type ChatCompletion,
  type ChatCompletionChunk,
  type ChatCompletionRequest,
  type ChatCompletionRequestNonStreaming,
  type ChatCompletionRequestStreaming,
  type Completion,
  type CompletionRequest,
  type CompletionRequestNonStreaming,
  type CompletionRequestStreaming,
  type ParsedSampling,
} from "./protocol.js";
import type { Endpoint } from "./request_spec.js";
import type { SamplingParams } from "./sampling.js";
import { Failure, Request, Scheduler, now, type SchedulerEvent } from "./scheduler.js";
import { GrammarCompiler, isConstrained, type ResponseFormat } from "./structured.js";
import { ChatTemplate } from "./template.js";
import { forTemplate, planActive, type CallFormat, type ToolPlan } from "./tools.js";
import { TextTokenizer } from "./tokenizer.js";
import { checkDeviceFit, deviceCandidates, isWebGPUFallbackReason, requestDevice, type DevicePreference } from "./webgpu.js";

// ---------------------------------------------------------------------------------------------
// Public configuration types

export interface ModelRecord {
  model_id: string;
  /** Base URL of the model folder (absolute, or relative to the page). */
  model_url: string;
  /**
   * Optional URL of the WebGPU .wasm when it is not in the folder (else chat config's
   * model_lib.webgpu). The CPU library (model_lib.wasm) is always read from the folder.
   */
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
  /** On the "ready" report only: where the model runs ("webgpu", or "wasm": its CPU library) and on which adapter. */
  device?: LibraryDevice;
  adapter?: string;
}
export type InitProgressCallback = (report: InitProgressReport) => void;

export interface EngineConfig {
  appConfig?: AppConfig;
  initProgressCallback?: InitProgressCallback;
  /** Passed to navigator.gpu.requestAdapter (e.g. {featureLevel: "compatibility"}). */
  requestAdapterOptions?: GPURequestAdapterOptions;
  /** The WebGPU entry point; default navigator.gpu. Lets Node (npm `webgpu`) run the engine. */
  gpu?: GPU;
  /**
   * Where the model runs: "webgpu", "wasm" (the folder's CPU library, model_lib.wasm: no GPU
   * needed, much slower), or "auto" (default): WebGPU when the page has it and it can run the
   * model (adapter, features, binding sizes), else the CPU library when the folder has one.
   */
  device?: DevicePreference;
  /** Where model files are cached; default Cache API (or IndexedDB per appConfig); null: none. */
  store?: ByteStore | null;
  /** Shards downloaded at once (default 4). */
  maxConcurrentDownloads?: number;
  /** Re-hash cached shards on load (default true). */
  verifyCachedShards?: boolean;
  logger?: (message: string) => void;
  fetch?: typeof fetch;
  /**
   * Sequences decoded together (concurrent requests and n choices); default the chat config's
   * max_batch_size. The KV cache holds this many whole context windows.
   */
  maxBatchSize?: number;
  /**
   * A chat template's Jinja text, replacing the chat config's (e.g. one that renders tools, for
   * function calling). Native: the chat_template engine option (which also takes a name).
   */
  chatTemplate?: string;
  /**
   * Threads for the CPU library's kernels, the engine's own included (default: every logical
   * core). More than one needs SharedArrayBuffer and workers: Node, or a cross-origin isolated
   * page (COOP same-origin + COEP require-corp, as `aae-web serve` sends); elsewhere it is one.
   */
  threads?: number;
}

function threadsText(n: number): string {
  return n === 1 ? "1 thread" : `${n} threads`;
}

/** Per-call options, as the OpenAI JS client's second argument. */
export interface RequestOptions {
  /** Aborting ends this request alone: its promise or stream rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** What both the in-page engine and the worker proxy offer. */
export interface EngineInterface {
  readonly chat: {
    readonly completions: {
      create(request: ChatCompletionRequestNonStreaming, options?: RequestOptions): Promise<ChatCompletion>;
      create(request: ChatCompletionRequestStreaming, options?: RequestOptions): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(request: ChatCompletionRequest, options?: RequestOptions): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
    };
  };
  readonly completions: {
    create(request: CompletionRequestNonStreaming, options?: RequestOptions): Promise<Completion>;
    create(request: CompletionRequestStreaming, options?: RequestOptions): Promise<AsyncIterable<Completion>>;
    create(request: CompletionRequest, options?: RequestOptions): Promise<Completion | AsyncIterable<Completion>>;
  };
  reload(modelId: string): Promise<void>;
  resetChat(): Promise<void>;
  interruptGenerate(): void;
  runtimeStatsText(): Promise<string>;
  unload(): Promise<void>;
  setInitProgressCallback(cb: InitProgressCallback | undefined): void;
}

/** Everything a loaded model is: its config, tokenizer, template and forward backend. */
export interface LoadedModel {
  modelId: string;
  config: ChatConfig;
  tokenizer: TextTokenizer;
  template: ChatTemplate;
  backend: ForwardBackend;
  /** The folder's tokenizer.json, which structured output builds its vocabulary from. */
  tokenizerJson?: Record<string, unknown>;
}

/** A model in use: what was loaded, its runtime and its scheduler. */
interface Active {
  model: LoadedModel;
  runtime: ModelRuntime;
  scheduler: Scheduler;
  /** structured output's grammars, compiled against this model's vocabulary */
  grammars: GrammarCompiler | undefined;
}

/** A validated, tokenized request, ready to submit (Python's _Prepared). */
interface Prepared {
  kind: Endpoint;
  prompts: number[][];
  sampling: ParsedSampling;
  wantLogprobs: boolean;
  topLogprobs: number;
  n: number;
  stream: boolean;
  includeUsage: boolean;
  echoTexts: string[];
  returnTokenIds: boolean;
  responseFormat?: ResponseFormat | undefined;
  /** function calling: the calls to parse out of each choice */
  toolCalls?: { plan: ToolPlan; format: CallFormat } | undefined;
}

/** Events of one request, as they come from the scheduler, awaited one at a time. */
class EventQueue {
  private readonly items: SchedulerEvent[] = [];
  private waiter: ((e: SchedulerEvent) => void) | undefined;

  push = (e: SchedulerEvent): void => {
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w(e);
    } else this.items.push(e);
  };

  next(): Promise<SchedulerEvent> {
    const e = this.items.shift();
    if (e !== undefined) return Promise.resolve(e);
    return new Promise((resolve) => (this.waiter = resolve));
  }
}

// ---------------------------------------------------------------------------------------------
// Engine

export class Engine implements EngineInterface {
  private config: EngineConfig;
  private active: Active | undefined;
  private loading: AbortController | undefined;
  private deviceLost: string | undefined;
  private lastStats = { prefillTokensPerS: 0, decodeTokensPerS: 0 };
  private adapterDescription: string | undefined;
  private libraryDevice: LibraryDevice | undefined;
  private progressCallback: InitProgressCallback | undefined;

  readonly chat: EngineInterface["chat"];
  readonly completions: EngineInterface["completions"];

  constructor(config: EngineConfig = {}) {
    this.config = config;
    this.progressCallback = config.initProgressCallback;
    const chatCreate = (req: ChatCompletionRequest, options?: RequestOptions) => this.create("chat", req, options);
    const completionCreate = (req: CompletionRequest, options?: RequestOptions) => this.create("completion", req, options);
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
    return this.active?.model.modelId;
  }

  /** The WebGPU adapter of the last load, as one line (vendor, architecture, description, mode). */
  get adapterInfo(): string | undefined {
    return this.adapterDescription;
  }

  /** Where the last loaded model runs: "webgpu", or "wasm" (its CPU library). */
  get device(): LibraryDevice | undefined {
    return this.libraryDevice;
  }

  /** The loaded model's chat config (context window, sampling defaults...). */
  get chatConfig(): ChatConfig | undefined {
    return this.active?.model.config;
  }

  /**
   * The KV cache now: sequences of running requests (0 when idle), sequences kept for prefix
   * reuse, and free pages when the runtime can tell. Tests use it to show that cancelling frees.
   */
  kvCacheStats(): { activeSequences: number; cachedSequences: number; freePages: number | undefined } {
    const a = this.active;
    if (!a) return { activeSequences: 0, cachedSequences: 0, freePages: undefined };
    return { activeSequences: a.scheduler.activeSequences, cachedSequences: a.scheduler.cachedSequences, freePages: a.runtime.freePages() };
  }

  private log(msg: string): void {
    (this.config.logger ?? ((m: string) => console.log(`[aae] ${m}`)))(msg);
  }

  private maxBatchSize(config: ChatConfig): number {
    return Math.max(1, this.config.maxBatchSize ?? config.max_batch_size ?? 1);
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
    const report = this.progressReporter(now());
    let lastDownload: LoadProgress | undefined;
    const loader = this.makeLoader(abort.signal, (p) => {
      lastDownload = p;
      const mb = (b: number) => (b / 1048576).toFixed(1);
      const verb = p.cachedBytes >= p.loadedBytes && p.loadedBytes > 0 ? "Loading from cache" : "Downloading";
      report("download", p.progress, `${verb}: ${mb(p.loadedBytes)} / ${mb(p.totalBytes)} MB (${p.loadedShards}/${p.totalShards} shards)`, p);
    });
    let ownedDevice: GPUDevice | undefined;

    try {
      const baseUrl = normalizeBaseUrl(record.model_url);
      report("download", 0, "Fetching model configuration");
      const config = await this.fetchChatConfig(loader, baseUrl, modelId);
      const fetchManifest = async () => parseManifest(await loader.fetchJson(fileUrl(baseUrl, config.manifest)), fileUrl(baseUrl, config.manifest));
      let manifest: TensorManifest | undefined;
      // WebGPU first when it may serve (deviceCandidates); the CPU library when it cannot.
      const candidates = deviceCandidates(this.config.device ?? "auto", config.model_lib, this.gpuEntry() !== undefined, modelId);
      let device: GPUDevice | null = null;
      let libDevice: LibraryDevice = "wasm";
      for (const [i, candidate] of candidates.entries()) {
        if (candidate === "wasm") break;
        try {
          // Fail fast on the GPU before downloading anything large.
          ownedDevice = await this.openDevice(config);
          manifest ??= await fetchManifest();
          // Device fit: refused here, before the library or any weight is downloaded.
          checkDeviceFit((ownedDevice as unknown as { limits?: Partial<Record<string, number>> }).limits, config, manifest, this.maxBatchSize(config));
          device = ownedDevice;
          libDevice = "webgpu";
          break;
        } catch (e) {
          ownedDevice?.destroy();
          ownedDevice = undefined;
          if (i === candidates.length - 1 || !isWebGPUFallbackReason(e)) throw e;
          this.log(`WebGPU cannot run ${modelId} (${(e as Error).message}); using its CPU library (wasm)`);
        }
      }
      manifest ??= await fetchManifest();
      const { tokenizer, template, tokenizerJson } = await fetchTokenizer(loader, baseUrl, config);

      const wasmUrl =
        libDevice === "webgpu" && record.model_lib_url ? new URL(record.model_lib_url, baseUrl).href : fileUrl(baseUrl, modelLibFile(config, libDevice));
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
        maxBatchSize: this.maxBatchSize(config),
        threads: this.config.threads,
      });
      if (libDevice === "wasm") this.adapterDescription = `CPU (WebAssembly, ${threadsText(backend.threadCount)})`;
      if (abort.signal.aborted) {
        backend.dispose();
        abort.signal.throwIfAborted();
      }
      this.installModel({ modelId, config, tokenizer, template, backend, tokenizerJson });
      this.libraryDevice = libDevice;
      report("ready", 1, `Ready: ${modelId}`, lastDownload, { device: libDevice, adapter: this.adapterDescription ?? "" });
    } catch (e) {
      // Do not keep a device (and whatever it allocated) for a model that failed to load.
      if (ownedDevice && !this.active) ownedDevice.destroy();
      throw e;
    } finally {
      if (this.loading === abort) this.loading = undefined;
    }
  }

  /** Load progress as InitProgressReports: downloading is most of a first load, compiling kernels the rest. */
  private progressReporter(
    started: number,
  ): (phase: LoadPhase, fraction: number, text: string, p?: Partial<LoadProgress>, where?: { device: LibraryDevice; adapter: string }) => void {
    return (phase, fraction, text, p, where) => {
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
        ...where,
      });
    };
  }

  private makeLoader(signal: AbortSignal, onProgress: (p: LoadProgress) => void): ArtifactLoader {
    const options: ConstructorParameters<typeof ArtifactLoader>[0] = { store: this.makeStore(), signal, onProgress };
    if (this.config.fetch) options.fetch = this.config.fetch;
    if (this.config.maxConcurrentDownloads !== undefined) options.maxConcurrency = this.config.maxConcurrentDownloads;
    if (this.config.verifyCachedShards !== undefined) options.verifyCached = this.config.verifyCachedShards;
    return new ArtifactLoader(options);
  }

  private async fetchChatConfig(loader: ArtifactLoader, baseUrl: string, modelId: string): Promise<ChatConfig> {
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
    return config;
  }

  /** The WebGPU device for `config` (its required features), watched for an unexpected loss. */
  private gpuEntry(): GPU | undefined {
    return this.config.gpu ?? (typeof navigator !== "undefined" ? navigator.gpu : undefined);
  }

  private async openDevice(config: ChatConfig): Promise<GPUDevice> {
    const gpu = this.gpuEntry();
    const { device, adapterDescription } = await requestDevice(gpu, config.required_features, this.config.requestAdapterOptions);
    this.log(`WebGPU adapter: ${adapterDescription}`);
    this.adapterDescription = adapterDescription;
    device.lost.then((info) => {
      // tvm.dispose() destroys the device on purpose; only an unexpected loss is an error.
      if (info.reason !== "destroyed") {
        this.deviceLost = `${info.reason}: ${info.message}`;
        this.log(`GPU device lost (${this.deviceLost})`);
      }
    });
    return device;
  }

  /**
   * For tests and custom runtimes: install an already-built model (no download, no GPU). The
   * chatTemplate option, when set, replaces the model's template here (reload comes through here too).
   */
  installModel(model: LoadedModel): void {
    if (this.config.chatTemplate) model = { ...model, template: new ChatTemplate(this.config.chatTemplate, chatTemplateSpecials(model.tokenizer)) };
    const { config } = model;
    const maxBatchSize = this.maxBatchSize(config);
    const runtime = new ModelRuntime(model.backend, {
      contextWindowSize: config.context_window_size,
      prefillChunkSize: config.prefill_chunk_size,
      maxBatchSize,
      slidingWindowSize: config.sliding_window_size,
    });
    const scheduler = new Scheduler(runtime, model.tokenizer, config.eos_token_ids, maxBatchSize);
    const grammars = model.tokenizerJson ? new GrammarCompiler(model.tokenizerJson, config.model_config.vocab_size, config.eos_token_ids) : undefined;
    this.active = { model, runtime, scheduler, grammars };
    this.deviceLost = undefined;
  }

  /** End every request in flight with finish_reason "abort" (WebLLM's interruptGenerate). */
  interruptGenerate(): void {
    this.active?.scheduler.interrupt();
  }

  /** Forget the conversation: the next request prefills its whole prompt. */
  async resetChat(): Promise<void> {
    this.active?.scheduler.dropPrefixCache();
  }

  async runtimeStatsText(): Promise<string> {
    const s = this.lastStats;
    return `prefill: ${s.prefillTokensPerS.toFixed(1)} tokens/sec, decoding: ${s.decodeTokensPerS.toFixed(1)} tokens/sec`;
  }

  /** Free the model; requests in flight fail with EngineNotLoadedError. */
  async unload(): Promise<void> {
    this.loading?.abort();
    const a = this.active;
    this.active = undefined;
    if (!a) return;
    await a.scheduler.terminate(new EngineNotLoadedError("The model was unloaded or replaced before this request finished."));
    a.model.backend.dispose();
  }

  private requireActive(): Active {
    if (this.deviceLost) {
      throw new DeviceLostError(`The GPU device was lost (${this.deviceLost}); call reload() to load the model again.`);
    }
    if (!this.active) throw new EngineNotLoadedError("No model is loaded: call reload(modelId) (or CreateEngine) first.");
    return this.active;
  }

  // -- chat.completions.create and completions.create -------------------------------------------

  private async create(kind: Endpoint, body: ChatCompletionRequest | CompletionRequest, options?: RequestOptions): Promise<unknown> {
    const signal = options?.signal;
    signal?.throwIfAborted();
    const active = this.requireActive();
    const prepared = this.prepare(active.model, kind, body);
    const events = new EventQueue();
    const { request, assembler } = await this.submit(active, prepared, events.push);
    const onAbort = () => {
      active.scheduler.cancel(request);
      events.push(new Failure(signal!.reason));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    const cleanup = () => {
      signal?.removeEventListener("abort", onAbort);
      if (!assembler.done) active.scheduler.cancel(request);
      else {
        const usage = assembler.usage();
        this.lastStats = { prefillTokensPerS: usage.prefill_tokens_per_s, decodeTokensPerS: usage.decode_tokens_per_s };
      }
    };
    if (prepared.stream) return this.stream(assembler, events, cleanup);
    try {
      while (!assembler.done) assembler.add(this.checkDevice(await events.next()));
    } finally {
      cleanup();
    }
    return assembler.result();
  }

  private async *stream(assembler: Assembler, events: EventQueue, cleanup: () => void): AsyncGenerator<ChatCompletionChunk | Completion> {
    try {
      yield* assembler.openingChunks();
      while (!assembler.done) yield* assembler.chunksFor(assembler.add(this.checkDevice(await events.next())));
      yield* assembler.closingChunks();
    } finally {
      // Also when the consumer stops iterating early: its sequences are freed at the next turn.
      cleanup();
    }
  }

  /** A runtime failure after the GPU device was lost is reported as that. */
  private checkDevice(event: SchedulerEvent): SchedulerEvent {
    if (event instanceof Failure && this.deviceLost && !(event.error instanceof DOMException)) {
      return new Failure(new DeviceLostError(`The GPU device was lost (${this.deviceLost}); call reload() to load the model again.`, {}, { cause: event.error }));
    }
    return event;
  }

  /** Validate and tokenize (Python's _Base._prepare). */
  private prepare(model: LoadedModel, kind: Endpoint, body: ChatCompletionRequest | CompletionRequest): Prepared {
    if (kind === "chat") {
      const chat = parseChatRequest(body as ChatCompletionRequest);
      this.checkModelField(model, chat.model);
      const template = model.template;
      let responseFormat = chat.responseFormat;
      let toolCalls: Prepared["toolCalls"];
      if (chat.tools !== undefined && planActive(chat.tools)) {
        if (template.callFormat === null) throw specError("tools_template", "tools", { why: template.noToolsReason });
        toolCalls = { plan: chat.tools, format: template.callFormat };
        responseFormat = { kind: "tool_calls", tools: chat.tools, callFormat: template.callFormat };
      }
      const tools = chat.tools !== undefined ? forTemplate(chat.tools) : null;
      const ids = this.encodePrompt(model, template.render(chat.messages, true, tools));
      return {
        kind, prompts: [ids], sampling: chat.sampling, wantLogprobs: chat.sampling.logprobs, topLogprobs: chat.sampling.topLogprobs,
        n: chat.n, stream: chat.stream, includeUsage: chat.includeUsage, echoTexts: [], returnTokenIds: chat.returnTokenIds,
        responseFormat, toolCalls,
      };
    }
    const comp = parseCompletionRequest(body as CompletionRequest);
    this.checkModelField(model, comp.model);
    const prompts = comp.prompts.map((p) => (typeof p === "string" ? this.encodePrompt(model, p) : p.slice()));
    // echo: the prompt as given, or the decoded ids (as the native engine does).
    const echoTexts = comp.echo ? comp.prompts.map((p) => (typeof p === "string" ? p : model.tokenizer.decode(p))) : [];
    return {
      kind, prompts, sampling: comp.sampling, wantLogprobs: comp.logprobs !== undefined, topLogprobs: comp.sampling.topLogprobs,
      n: comp.n, stream: comp.stream, includeUsage: comp.includeUsage, echoTexts, returnTokenIds: comp.returnTokenIds,
    };
  }

  /** Make the request's choices and hand them to the scheduler (Python's _Base._submit). */
  private async submit(active: Active, p: Prepared, sink: (e: SchedulerEvent) => void): Promise<{ request: Request; assembler: Assembler }> {
    const { model, scheduler } = active;
    const s = p.sampling;
    const d = model.config.sampling;
    const sampling: SamplingParams = {
      temperature: s.temperature ?? d.temperature,
      top_p: s.top_p ?? d.top_p,
      presence_penalty: s.presence_penalty ?? d.presence_penalty,
      frequency_penalty: s.frequency_penalty ?? d.frequency_penalty,
      repetition_penalty: s.repetition_penalty ?? d.repetition_penalty,
      logit_bias: s.logit_bias,
      ignore_eos: s.ignore_eos,
      logprobs: p.wantLogprobs,
      top_logprobs: p.topLogprobs,
    };
    const request = new Request(p.kind, sink);
    scheduler.makeJobs(request, p.prompts, { sampling, seed: s.seed, maxTokens: s.max_tokens, stop: s.stop }, p.n);
    if (isConstrained(p.responseFormat)) {
      // Compiled before the request is queued: a schema XGrammar cannot take is the caller's error.
      if (!active.grammars) throw new FeatureNotSupportedError("This model was installed without its tokenizer.json: structured output needs it.", { feature: "response_format" });
      const compiled = await active.grammars.compile(p.responseFormat);
      for (const job of request.jobs) job.grammar = await active.grammars.matcher(compiled);
    }
    const assembler = new Assembler(request, p.kind, {
      modelId: model.modelId,
      tokenizer: model.tokenizer,
      numChoices: request.jobs.length,
      promptTokens: p.prompts.reduce((a, x) => a + x.length, 0),
      includeUsage: p.includeUsage,
      wantLogprobs: p.wantLogprobs,
      echoTexts: p.echoTexts,
      n: p.n,
      promptIds: p.returnTokenIds ? p.prompts : null,
      toolCalls: p.toolCalls ?? null,
    });
    scheduler.submit(request);
    return { request, assembler };
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
}

// ---------------------------------------------------------------------------------------------
// Loading helpers

/** The model's tokenizer and chat template, from the folder's tokenizer files. */
async function fetchTokenizer(loader: ArtifactLoader, baseUrl: string, config: ChatConfig): Promise<{ tokenizer: TextTokenizer; template: ChatTemplate; tokenizerJson: Record<string, unknown> }> {
  const tokJson = await loader.fetchJson(fileUrl(baseUrl, TOKENIZER_FILE));
  const hasConfig = config.tokenizer_files.includes(TOKENIZER_CONFIG_FILE);
  const tokConfig = hasConfig ? await loader.fetchJson(fileUrl(baseUrl, TOKENIZER_CONFIG_FILE)) : {};
  const tokenizer = new TextTokenizer(tokJson as object, tokConfig as object, { bos: config.bos_token_id, eos: config.eos_token_ids });
  return { tokenizer, template: new ChatTemplate(config.chat_template, chatTemplateSpecials(tokenizer)), tokenizerJson: tokJson as Record<string, unknown> };
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

/**
 * Running the engine in a Web Worker, so tokenization, sampling and the GPU command submission
 * never block the page's main thread.
 *
 * Worker side (e.g. worker.js, loaded with `new Worker(url, {type: "module"})`):
 *
 *     import { WebWorkerEngineHandler } from "/web/dist/index.js";
 *     const handler = new WebWorkerEngineHandler();
 *     self.onmessage = (msg) => handler.onmessage(msg);
 *
 * Page side:
 *
 *     const engine = await CreateWebWorkerEngine(worker, modelId, { appConfig, initProgressCallback });
 *
 * The proxy implements the same EngineInterface as Engine. Messages are plain objects (structured
 * clone); typed errors are serialized by name and rebuilt on the page, so `instanceof` still works.
 */
import {
  Engine,
  type AppConfig,
  type EngineConfig,
  type EngineInterface,
  type InitProgressCallback,
  type InitProgressReport,
  type RequestOptions,
} from "./engine.js";
import type { DevicePreference } from "./webgpu.js";
import { deserializeError, serializeError, type SerializedError } from "./errors.js";
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  Completion,
  CompletionRequest,
} from "./protocol.js";

// ---------------------------------------------------------------------------------------------
// Wire protocol

/** Options that can cross to the worker (no functions, no GPU objects). */
export interface WorkerEngineOptions {
  appConfig?: AppConfig;
  requestAdapterOptions?: GPURequestAdapterOptions;
  /** EngineConfig.device: "auto" (default), "webgpu", or "wasm" (the model's CPU library). */
  device?: DevicePreference;
  maxConcurrentDownloads?: number;
  verifyCachedShards?: boolean;
  maxBatchSize?: number;
  /** A chat template's Jinja text, replacing the chat config's (EngineConfig.chatTemplate). */
  chatTemplate?: string;
  /** EngineConfig.threads: the CPU library's threads (default: every logical core). */
  threads?: number;
}

type Method = "configure" | "reload" | "resetChat" | "runtimeStatsText" | "unload" | "chatCompletion" | "completion";

export type ToWorker =
  | { kind: "call"; id: number; method: Method; args: unknown[] }
  | { kind: "interrupt" }
  /** The page aborted a request (its signal, or it stopped reading a stream). */
  | { kind: "cancel"; id: number };

export type FromWorker =
  | { kind: "result"; id: number; value: unknown; stream?: boolean }
  | { kind: "error"; id: number; error: SerializedError }
  | { kind: "chunk"; id: number; chunk: unknown }
  | { kind: "streamEnd"; id: number }
  | { kind: "progress"; report: InitProgressReport };

const PROTOCOL_TAG = "aae-engine-v1";
interface Envelope<T> {
  tag: typeof PROTOCOL_TAG;
  msg: T;
}

function wrap<T>(msg: T): Envelope<T> {
  return { tag: PROTOCOL_TAG, msg };
}

function unwrap<T>(data: unknown): T | undefined {
  // Ignore foreign messages: the page or worker may use the same channel for other things.
  if (data && typeof data === "object" && (data as Envelope<T>).tag === PROTOCOL_TAG) return (data as Envelope<T>).msg;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Worker side

export interface WebWorkerEngineHandlerOptions {
  /** How to answer the page; default the worker global's postMessage. */
  postMessage?: (message: unknown) => void;
  /** Build the engine; lets tests (or custom runtimes) substitute their own. */
  createEngine?: (config: EngineConfig) => Engine;
  /** An engine shared with other handlers (a service worker's pages); its progress reports are the owner's to forward. */
  engine?: Engine;
  /** Shared with the other handlers of `engine`: a reload of the model it already holds, with the same options, is answered at once. */
  loaded?: LoadedModel;
}

/** What a shared engine holds: the model and the options it was loaded with, and how many loads it took. */
export class LoadedModel {
  key: string | undefined;
  options = "{}";
  loads = 0;
}

/** The result of a reload call: whether the model was already loaded (a service worker's engine outlives its pages). */
export interface ReloadResult {
  reused: boolean;
  loads: number;
}

export class WebWorkerEngineHandler {
  readonly engine: Engine;
  private readonly post: (message: unknown) => void;
  /** One per request in flight, aborted when the page cancels it. */
  private readonly controllers = new Map<number, AbortController>();

  private readonly loaded: LoadedModel;

  constructor(options: WebWorkerEngineHandlerOptions = {}) {
    const g = globalThis as unknown as { postMessage?: (m: unknown) => void };
    this.post = options.postMessage ?? ((m) => g.postMessage!(m));
    const config: EngineConfig = { initProgressCallback: (report) => this.sendProgress(report) };
    this.engine = options.engine ?? (options.createEngine ? options.createEngine(config) : new Engine(config));
    this.loaded = options.loaded ?? new LoadedModel();
  }

  sendProgress(report: InitProgressReport): void {
    this.send({ kind: "progress", report });
  }

  private send(msg: FromWorker): void {
    this.post(wrap(msg));
  }

  /** Feed every message the worker receives (`self.onmessage = (m) => handler.onmessage(m)`). */
  onmessage(event: { data: unknown }): void {
    const msg = unwrap<ToWorker>(event.data);
    if (!msg) return;
    if (msg.kind === "interrupt") {
      // Not queued behind the running generation: it has to reach it while it runs.
      this.engine.interruptGenerate();
      return;
    }
    if (msg.kind === "cancel") {
      this.controllers.get(msg.id)?.abort(new DOMException("The request was cancelled by the page", "AbortError"));
      return;
    }
    void this.handleCall(msg.id, msg.method, msg.args);
  }

  private async handleCall(id: number, method: Method, args: unknown[]): Promise<void> {
    try {
      switch (method) {
        case "configure": {
          const o = (args[0] ?? {}) as WorkerEngineOptions;
          this.engine.updateConfig(o);
          this.loaded.options = JSON.stringify(o);
          this.send({ kind: "result", id, value: undefined });
          return;
        }
        case "reload": {
          const modelId = String(args[0]);
          const key = modelId + "\n" + this.loaded.options;
          const reused = this.loaded.key === key && this.engine.modelId === modelId;
          if (!reused) {
            this.loaded.key = undefined; // a failed load leaves nothing to reuse
            await this.engine.reload(modelId);
            this.loaded.key = key;
            this.loaded.loads += 1;
          }
          this.send({ kind: "result", id, value: { reused, loads: this.loaded.loads } satisfies ReloadResult });
          return;
        }
        case "resetChat":
          await this.engine.resetChat();
          this.send({ kind: "result", id, value: undefined });
          return;
        case "runtimeStatsText":
          this.send({ kind: "result", id, value: await this.engine.runtimeStatsText() });
          return;
        case "unload":
          await this.engine.unload();
          this.send({ kind: "result", id, value: undefined });
          return;
        case "chatCompletion":
        case "completion": {
          const req = args[0] as { stream?: boolean | null };
          const controller = new AbortController();
          this.controllers.set(id, controller);
          try {
            const options = { signal: controller.signal };
            const res =
              method === "chatCompletion"
                ? await this.engine.chat.completions.create(args[0] as ChatCompletionRequest, options)
                : await this.engine.completions.create(args[0] as CompletionRequest, options);
            if (!req.stream) {
              this.send({ kind: "result", id, value: res });
              return;
            }
            this.send({ kind: "result", id, value: undefined, stream: true });
            await this.pump(id, res as AsyncIterable<unknown>);
          } finally {
            this.controllers.delete(id);
          }
          return;
        }
        default:
          throw new Error(`unknown method ${String(method)}`);
      }
    } catch (e) {
      this.send({ kind: "error", id, error: serializeError(e) });
    }
  }

  /** Forward a stream's chunks until it ends or fails (a cancelled one fails with AbortError). */
  private async pump(id: number, stream: AsyncIterable<unknown>): Promise<void> {
    for await (const chunk of stream) this.send({ kind: "chunk", id, chunk });
    this.send({ kind: "streamEnd", id });
  }
}

// ---------------------------------------------------------------------------------------------
// Page side

/** A Worker, a MessagePort, or anything with the same two methods. */
export interface WorkerLike {
  postMessage(message: unknown): void;
  addEventListener(type: "message", listener: (ev: MessageEvent) => void): void;
  addEventListener(type: "error", listener: (ev: Event) => void): void;
  /** MessagePort needs start() when listened to with addEventListener. */
  start?: () => void;
}

interface Pending {
  resolve: (v: { value: unknown; stream?: boolean }) => void;
  reject: (e: unknown) => void;
}

/** Chunks of one stream, buffered until the page's for-await pulls them. */
class ChunkQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting: Array<{ resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }> = [];
  private done = false;
  private error: unknown;
  private readonly onCancel: () => void;
  private readonly onEnd: () => void;

  /** `onCancel`: the page stopped reading; `onEnd`: the stream is over, either way. */
  constructor(onCancel: () => void, onEnd: () => void = () => {}) {
    this.onCancel = onCancel;
    this.onEnd = onEnd;
  }

  push(item: T): void {
    const w = this.waiting.shift();
    if (w) w.resolve({ value: item, done: false });
    else this.items.push(item);
  }

  end(error?: unknown): void {
    if (this.done && this.waiting.length === 0) return;
    this.done = true;
    this.onEnd();
    this.error = error;
    for (const w of this.waiting.splice(0)) {
      if (error !== undefined) w.reject(error);
      else w.resolve({ value: undefined as never, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        const item = this.items.shift();
        if (item !== undefined) return Promise.resolve({ value: item, done: false });
        if (this.done) {
          if (this.error !== undefined) {
            const e = this.error;
            this.error = undefined;
            return Promise.reject(e);
          }
          return Promise.resolve({ value: undefined as never, done: true });
        }
        return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
      },
      return: () => {
        // The page stopped reading (break in for-await): stop the worker's generation too.
        if (!this.done) {
          this.done = true;
          this.items = [];
          this.onEnd();
          this.onCancel();
        }
        return Promise.resolve({ value: undefined as never, done: true });
      },
    };
  }
}

export class WebWorkerEngine implements EngineInterface {
  private readonly worker: WorkerLike;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly streams = new Map<number, ChunkQueue<unknown>>();
  private progressCallback: InitProgressCallback | undefined;

  readonly chat: EngineInterface["chat"];
  readonly completions: EngineInterface["completions"];

  constructor(worker: WorkerLike, options: { initProgressCallback?: InitProgressCallback } = {}) {
    this.worker = worker;
    this.progressCallback = options.initProgressCallback;
    worker.addEventListener("message", (ev: MessageEvent) => this.onMessage(ev.data));
    worker.addEventListener("error", (ev: Event) => {
      // The worker script failed (syntax error, bad import): nothing pending will ever answer.
      const msg = (ev as ErrorEvent).message || "the engine worker failed to start or crashed";
      this.failAll(new Error(`Engine worker error: ${msg}`));
    });
    worker.start?.();
    const chatCreate = (req: ChatCompletionRequest, options?: RequestOptions) => this.create("chatCompletion", req, options);
    const completionCreate = (req: CompletionRequest, options?: RequestOptions) => this.create("completion", req, options);
    this.chat = { completions: { create: chatCreate as EngineInterface["chat"]["completions"]["create"] } };
    this.completions = { create: completionCreate as EngineInterface["completions"]["create"] };
  }

  /** The connection is gone (a stopped service worker): everything pending fails with `err`. */
  disconnect(err: Error): void {
    this.failAll(err);
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const q of this.streams.values()) q.end(err);
    this.streams.clear();
  }

  private onMessage(data: unknown): void {
    const msg = unwrap<FromWorker>(data);
    if (!msg) return;
    switch (msg.kind) {
      case "progress":
        this.progressCallback?.(msg.report);
        return;
      case "result": {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (!msg.stream) this.streams.delete(msg.id);
        p?.resolve(msg.stream ? { value: msg.value, stream: true } : { value: msg.value });
        return;
      }
      case "error": {
        const err = deserializeError(msg.error);
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (p) {
          this.streams.delete(msg.id);
          p.reject(err);
        } else {
          this.streams.get(msg.id)?.end(err);
          this.streams.delete(msg.id);
        }
        return;
      }
      case "chunk":
        this.streams.get(msg.id)?.push(msg.chunk);
        return;
      case "streamEnd":
        this.streams.get(msg.id)?.end();
        this.streams.delete(msg.id);
        return;
    }
  }

  private call(method: Method, args: unknown[], streamQueue?: (id: number) => ChunkQueue<unknown>): Promise<{ value: unknown; stream?: boolean; id: number }> {
    const id = this.nextId++;
    // Register the stream before sending: chunks may arrive right behind the result.
    if (streamQueue) this.streams.set(id, streamQueue(id));
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: (v) => resolve({ ...v, id }), reject });
      try {
        this.worker.postMessage(wrap<ToWorker>({ kind: "call", id, method, args }));
      } catch (e) {
        this.pending.delete(id);
        this.streams.delete(id);
        reject(e);
      }
    });
  }

  private async create(method: "chatCompletion" | "completion", req: ChatCompletionRequest | CompletionRequest, options?: RequestOptions): Promise<unknown> {
    const signal = options?.signal;
    signal?.throwIfAborted();
    const streaming = !!(req && typeof req === "object" && req.stream === true);
    const id = this.nextId; // the id call() is about to take
    const onAbort = () => {
      // The worker's engine ends this request alone; the page sees the signal's reason.
      const p = this.pending.get(id);
      this.pending.delete(id);
      p?.reject(signal!.reason);
      this.streams.get(id)?.end(signal!.reason);
      this.cancel(id);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const r = await this.call(method, [req], streaming ? (qid) => new ChunkQueue(() => this.cancel(qid), () => signal?.removeEventListener("abort", onAbort)) : undefined);
      if (!r.stream) return r.value as ChatCompletion | Completion;
      const q = this.streams.get(r.id);
      if (!q) throw new Error("internal: stream queue missing");
      return q as AsyncIterable<ChatCompletionChunk>;
    } finally {
      if (!streaming) signal?.removeEventListener("abort", onAbort);
    }
  }

  private cancel(id: number): void {
    this.streams.delete(id);
    this.worker.postMessage(wrap<ToWorker>({ kind: "cancel", id }));
  }

  /** Send the cloneable options (appConfig...) to the worker's engine. */
  async configure(options: WorkerEngineOptions): Promise<void> {
    await this.call("configure", [options]);
  }

  setInitProgressCallback(cb: InitProgressCallback | undefined): void {
    this.progressCallback = cb;
  }

  /** Load `modelId` in the worker's engine; a shared engine that holds it already answers at once (`reused`). */
  async reload(modelId: string): Promise<void> {
    await this.reloadModel(modelId);
  }

  async reloadModel(modelId: string): Promise<ReloadResult> {
    const { value } = await this.call("reload", [modelId]);
    return (value as ReloadResult | undefined) ?? { reused: false, loads: 1 };
  }

  async resetChat(): Promise<void> {
    await this.call("resetChat", []);
  }

  interruptGenerate(): void {
    this.worker.postMessage(wrap<ToWorker>({ kind: "interrupt" }));
  }

  async runtimeStatsText(): Promise<string> {
    return String((await this.call("runtimeStatsText", [])).value);
  }

  async unload(): Promise<void> {
    await this.call("unload", []);
  }
}

/**
 * Create a proxy to an engine running in `worker` (which runs WebWorkerEngineHandler) and load
 * `modelId` there. Options other than initProgressCallback must be structured-cloneable.
 */
export async function CreateWebWorkerEngine(
  worker: WorkerLike,
  modelId: string,
  config: WorkerEngineOptions & { initProgressCallback?: InitProgressCallback } = {},
): Promise<WebWorkerEngine> {
  const { initProgressCallback, ...options } = config;
  const engine = new WebWorkerEngine(worker, initProgressCallback ? { initProgressCallback } : {});
  await engine.configure(options);
  await engine.reload(modelId);
  return engine;
}

/**
 * Running the engine in a Service Worker, so a loaded model outlives the page: reloading the page
 * or opening another tab of the origin reuses it (no weight fetch, no load time), and all of them
 * share one engine (their requests are batched by its scheduler like any concurrent requests).
 *
 * Service worker side (e.g. sw.js, registered with `{type: "module"}`):
 *
 *     import { ServiceWorkerEngineHandler } from "/web/dist/index.js";
 *     new ServiceWorkerEngineHandler().listen(self);
 *
 * Page side:
 *
 *     await navigator.serviceWorker.register("/sw.js", { type: "module" });
 *     const engine = await CreateServiceWorkerEngine(modelId, { appConfig, initProgressCallback });
 *
 * Each page connects over its own MessageChannel and speaks the Web Worker protocol (worker.ts)
 * on it. The browser may stop an idle service worker, which drops the engine: the page pings the
 * worker before each call and every `keepAliveMs` (the messages also keep it from idling), and a
 * ping left unanswered means a stopped worker: the page connects to the new instance, which loads
 * the model again (from the shard cache), and fails the requests that were in flight.
 */
import { Engine, type EngineConfig, type EngineInterface, type InitProgressCallback, type RequestOptions } from "./engine.js";
import type { ChatCompletionRequest, CompletionRequest } from "./protocol.js";
import { LoadedModel, WebWorkerEngine, WebWorkerEngineHandler, type ReloadResult, type WorkerEngineOptions } from "./worker.js";

const SW_TAG = "aae-service-worker-v1";

interface SwMessage {
  tag: typeof SW_TAG;
  kind: "connect" | "ping" | "pong";
  id?: number;
}

function swMessage(data: unknown): SwMessage | undefined {
  return data && typeof data === "object" && (data as SwMessage).tag === SW_TAG ? (data as SwMessage) : undefined;
}

// ---------------------------------------------------------------------------------------------
// Service worker side

/** The parts of ServiceWorkerGlobalScope the handler uses. */
export interface ServiceWorkerScopeLike {
  addEventListener(type: string, listener: (event: never) => void): void;
  skipWaiting(): Promise<void>;
  clients: { claim(): Promise<void> };
}

interface ExtendableEventLike {
  waitUntil(p: Promise<unknown>): void;
}

export class ServiceWorkerEngineHandler {
  readonly engine: Engine;
  /** The model the engine holds, shared by every page's connection. */
  readonly loaded = new LoadedModel();
  private readonly connections = new Set<WebWorkerEngineHandler>();

  constructor(options: { createEngine?: (config: EngineConfig) => Engine } = {}) {
    // Progress goes to every connected page: the one that asked for the load and any waiting on it.
    const config: EngineConfig = { initProgressCallback: (report) => this.connections.forEach((c) => c.sendProgress(report)) };
    this.engine = options.createEngine ? options.createEngine(config) : new Engine(config);
  }

  /** Take over the origin's pages at once (install, activate) and accept their connections. */
  listen(scope: ServiceWorkerScopeLike): void {
    scope.addEventListener("install", (e: ExtendableEventLike) => e.waitUntil(scope.skipWaiting()));
    scope.addEventListener("activate", (e: ExtendableEventLike) => e.waitUntil(scope.clients.claim()));
    scope.addEventListener("message", (e: { data: unknown; ports?: readonly MessagePort[] }) => this.onmessage(e));
  }

  /** A page's `connect` message carries the port its engine proxy talks on. */
  onmessage(event: { data: unknown; ports?: readonly MessagePort[] }): void {
    const msg = swMessage(event.data);
    const port = event.ports?.[0];
    if (msg?.kind === "connect" && port) this.connect(port);
  }

  connect(port: MessagePort): void {
    const handler = new WebWorkerEngineHandler({ postMessage: (m) => port.postMessage(m), engine: this.engine, loaded: this.loaded });
    this.connections.add(handler);
    port.addEventListener("message", (ev: MessageEvent) => {
      const msg = swMessage(ev.data);
      if (msg?.kind === "ping") port.postMessage({ tag: SW_TAG, kind: "pong", ...(msg.id !== undefined ? { id: msg.id } : {}) } satisfies SwMessage);
      else handler.onmessage(ev);
    });
    port.start();
  }
}

// ---------------------------------------------------------------------------------------------
// Page side

export interface ServiceWorkerEngineOptions extends WorkerEngineOptions {
  initProgressCallback?: InitProgressCallback;
  /** Default navigator.serviceWorker. */
  serviceWorker?: ServiceWorkerContainer;
  /** How often the page pings the worker while the engine lives (default 10 s; the browser stops a worker idle for 30 s). */
  keepAliveMs?: number;
  /** How long a ping may go unanswered before the worker counts as stopped (default 5 s). */
  pingTimeoutMs?: number;
  /** How long to wait for a service worker to control the page (default 10 s). */
  controllerTimeoutMs?: number;
}

export class ServiceWorkerEngine implements EngineInterface {
  readonly chat: EngineInterface["chat"];
  readonly completions: EngineInterface["completions"];
  /** How the last load went: `reused` when the worker already held the model. */
  lastLoad: ReloadResult | undefined;

  private proxy!: WebWorkerEngine;
  private port!: MessagePort;
  private modelId: string | undefined;
  private nextPing = 1;
  private readonly pongs = new Map<number, () => void>();
  private readonly keepAlive: ReturnType<typeof setInterval>;
  private reconnecting: Promise<void> | undefined;

  constructor(
    private readonly container: ServiceWorkerContainer,
    private options: ServiceWorkerEngineOptions,
  ) {
    this.connect();
    this.keepAlive = setInterval(() => void this.ensureAlive().catch(() => {}), options.keepAliveMs ?? 10_000);
    const chatCreate = async (req: ChatCompletionRequest, o?: RequestOptions) => {
      await this.ensureAlive();
      return this.proxy.chat.completions.create(req as never, o);
    };
    const completionCreate = async (req: CompletionRequest, o?: RequestOptions) => {
      await this.ensureAlive();
      return this.proxy.completions.create(req as never, o);
    };
    this.chat = { completions: { create: chatCreate as EngineInterface["chat"]["completions"]["create"] } };
    this.completions = { create: completionCreate as EngineInterface["completions"]["create"] };
  }

  private connect(): void {
    const worker = this.container.controller;
    if (!worker) throw new Error("No service worker controls this page: register one running ServiceWorkerEngineHandler (its activate handler claims the page).");
    const channel = new MessageChannel();
    this.port = channel.port1;
    this.port.addEventListener("message", (ev: MessageEvent) => {
      const msg = swMessage(ev.data);
      if (msg?.kind === "pong" && msg.id !== undefined) this.pongs.get(msg.id)?.();
    });
    const { initProgressCallback } = this.options;
    this.proxy = new WebWorkerEngine(this.port, initProgressCallback ? { initProgressCallback } : {});
    worker.postMessage({ tag: SW_TAG, kind: "connect" } satisfies SwMessage, [channel.port2]);
  }

  private ping(): Promise<boolean> {
    const id = this.nextPing++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pongs.delete(id);
        resolve(false);
      }, this.options.pingTimeoutMs ?? 5_000);
      this.pongs.set(id, () => {
        clearTimeout(timer);
        this.pongs.delete(id);
        resolve(true);
      });
      this.port.postMessage({ tag: SW_TAG, kind: "ping", id } satisfies SwMessage);
    });
  }

  /** The worker answers, or its new instance is connected and holds the model again. */
  private async ensureAlive(): Promise<void> {
    if (this.reconnecting) return this.reconnecting;
    if (await this.ping()) return;
    this.reconnecting ??= (async () => {
      this.proxy.disconnect(new Error("The engine's service worker was stopped by the browser; the model is being loaded again."));
      this.connect();
      await this.proxy.configure(this.configOptions());
      if (this.modelId !== undefined) this.lastLoad = await this.proxy.reloadModel(this.modelId);
    })().finally(() => (this.reconnecting = undefined));
    return this.reconnecting;
  }

  private configOptions(): WorkerEngineOptions {
    const { initProgressCallback: _p, serviceWorker: _s, keepAliveMs: _k, pingTimeoutMs: _t, controllerTimeoutMs: _c, ...rest } = this.options;
    return rest;
  }

  async configure(): Promise<void> {
    await this.proxy.configure(this.configOptions());
  }

  async reload(modelId: string): Promise<void> {
    await this.ensureAlive();
    this.modelId = modelId;
    this.lastLoad = await this.proxy.reloadModel(modelId);
  }

  async resetChat(): Promise<void> {
    await this.ensureAlive();
    await this.proxy.resetChat();
  }

  interruptGenerate(): void {
    this.proxy.interruptGenerate();
  }

  setInitProgressCallback(cb: InitProgressCallback | undefined): void {
    const { initProgressCallback: _old, ...rest } = this.options;
    this.options = cb ? { ...rest, initProgressCallback: cb } : rest;
    this.proxy.setInitProgressCallback(cb);
  }

  async runtimeStatsText(): Promise<string> {
    await this.ensureAlive();
    return this.proxy.runtimeStatsText();
  }

  /** Unload the model in the worker (for every page sharing it) and stop pinging. */
  async unload(): Promise<void> {
    clearInterval(this.keepAlive);
    this.modelId = undefined;
    await this.proxy.unload();
  }

  /** Stop pinging and leave the model loaded in the worker for the origin's other pages. */
  close(): void {
    clearInterval(this.keepAlive);
    this.port.close();
  }
}

/**
 * Connect to the engine in the service worker that controls this page (it runs
 * ServiceWorkerEngineHandler) and load `modelId` there, or reuse it if the worker holds it.
 */
export async function CreateServiceWorkerEngine(modelId: string, options: ServiceWorkerEngineOptions = {}): Promise<ServiceWorkerEngine> {
  const container = options.serviceWorker ?? (globalThis as { navigator?: { serviceWorker?: ServiceWorkerContainer } }).navigator?.serviceWorker;
  if (!container) throw new Error("Service workers are not available here (they need a secure context: https or http://localhost / 127.0.0.1).");
  await container.ready;
  if (!container.controller) {
    // A first visit: the worker claims the page when it activates.
    const timeout = options.controllerTimeoutMs ?? 10_000;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`No service worker took control of the page within ${timeout} ms.`)), timeout);
      container.addEventListener("controllerchange", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }
  const engine = new ServiceWorkerEngine(container, options);
  await engine.configure();
  await engine.reload(modelId);
  return engine;
}

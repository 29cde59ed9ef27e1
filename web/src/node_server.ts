/**
 * A small OpenAI-compatible HTTP server over an Engine, on node:http (no framework): the routes,
 * response shapes and error bodies of the native server (compiler/serve/app.py).
 *
 *   POST /v1/chat/completions, POST /v1/completions: JSON, or server-sent events with
 *        `"stream": true` (`data: {chunk}\n\n` ..., then `data: [DONE]\n\n`);
 *   GET /v1/models, GET /health.
 *
 * Errors are OpenAI error objects, `{"error": {"message", "type", "param", "code"}}`: 400 for a
 * request the engine refuses (its InvalidRequestError's param and code) or a body that is not
 * JSON, 413 for a body over `maxBodyBytes`, 404 for an unknown route, 405 for a wrong method, 500
 * when the engine fails. A client that disconnects cancels its request (the engine's
 * `create(body, {signal})`), streaming or not, so it stops taking decode slots.
 *
 * Errors are told apart by `name`, not `instanceof`, so this module works with any copy of the
 * engine (dist/index.js, or the sources under test).
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { EngineInterface, RequestOptions } from "./index.js";

/** What the server needs of an engine: Engine and WebWorkerEngine both fit. */
export interface ServedEngine {
  readonly chat: { readonly completions: { create(request: never, options?: RequestOptions): Promise<unknown> } };
  readonly completions: { create(request: never, options?: RequestOptions): Promise<unknown> };
  readonly modelId?: string | undefined;
  kvCacheStats?(): { activeSequences: number };
}

export interface ServerOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 8000 (0: any free port). */
  port?: number;
  /** The id /v1/models reports; default the engine's modelId. */
  modelId?: string;
  /** Largest request body accepted (default 16 MiB); larger: 413. */
  maxBodyBytes?: number;
  /** Extra fields for GET /health (e.g. cache statistics). */
  healthInfo?: () => Record<string, unknown>;
  logger?: (message: string) => void;
}

export interface RunningServer {
  server: Server;
  host: string;
  port: number;
  /** http://host:port */
  url: string;
  close(): Promise<void>;
}

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

const ROUTES: Record<string, string> = {
  "/v1/chat/completions": "POST",
  "/v1/completions": "POST",
  "/v1/models": "GET",
  "/health": "GET",
};

/** Engine errors that are the request's fault (400), by name. */
const CLIENT_ERRORS = new Set(["InvalidRequestError", "ContextWindowExceededError", "FeatureNotSupportedError"]);

function errorBody(message: string, type = "invalid_request_error", param: string | null = null, code: string | null = null): ErrorBody {
  return { error: { message, type, param, code } };
}

/** An engine error as (status, OpenAI error body). */
export function engineErrorResponse(e: unknown): { status: number; body: ErrorBody } {
  const err = e as { name?: string; message?: string; details?: Record<string, unknown> } | null;
  const name = err?.name ?? "Error";
  const details = err?.details ?? {};
  const str = (v: unknown): string | null => (typeof v === "string" && v !== "" ? v : null);
  if (CLIENT_ERRORS.has(name)) {
    const param = str(details["param"]) ?? str(details["field"]) ?? (name === "FeatureNotSupportedError" ? str(details["feature"]) : null);
    return { status: 400, body: errorBody(err?.message ?? name, str(details["type"]) ?? "invalid_request_error", param, str(details["code"])) };
  }
  if (name === "EngineNotLoadedError" || name === "DeviceLostError") {
    return { status: 503, body: errorBody(err?.message ?? name, "server_error") };
  }
  return { status: 500, body: errorBody(`The server failed to run the request: ${err?.message ?? String(e)}`, "server_error") };
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.destroyed || res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Write one piece of a stream, waiting for the socket to drain; false once the client is gone. */
function write(res: ServerResponse, data: string): Promise<boolean> {
  if (res.destroyed || res.writableEnded) return Promise.resolve(false);
  if (res.write(data)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      res.off("drain", onDrain);
      res.off("close", onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    res.on("drain", onDrain);
    res.on("close", onClose);
  });
}

const sse = (payload: unknown): string => `data: ${typeof payload === "string" ? payload : JSON.stringify(payload)}\n\n`;

class BodyTooLarge extends Error {}

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const declared = Number(req.headers["content-length"]);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new BodyTooLarge());
      return;
    }
    req.on("data", (c: Buffer) => {
      size += c.byteLength;
      if (size > limit) {
        req.removeAllListeners("data");
        req.resume();
        reject(new BodyTooLarge());
      } else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

/** The request handler of the server, for `http.createServer` or a test. */
export function createHandler(engine: ServedEngine, options: ServerOptions = {}): (req: IncomingMessage, res: ServerResponse) => void {
  const created = Math.floor(Date.now() / 1000);
  const maxBody = options.maxBodyBytes ?? 16 * 1024 * 1024;
  const log = options.logger ?? (() => {});
  const modelId = () => options.modelId ?? engine.modelId ?? "unknown";

  const run = async (req: IncomingMessage, res: ServerResponse, kind: "chat" | "completion"): Promise<void> => {
    let raw: Buffer;
    try {
      raw = await readBody(req, maxBody);
    } catch (e) {
      if (e instanceof BodyTooLarge) {
        sendJson(res, 413, errorBody(`The request body is larger than ${maxBody} bytes.`, "invalid_request_error", null, "413"), { connection: "close" });
      }
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
    } catch (e) {
      sendJson(res, 400, errorBody(`We could not parse the JSON body of your request: ${(e as Error).message}. The body must be a JSON object.`));
      return;
    }

    // A client that goes away cancels its request (streaming or not).
    const abort = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) {
        log(`client disconnected: cancelling ${req.method} ${req.url}`);
        abort.abort(new DOMException("The client disconnected.", "AbortError"));
      }
    };
    res.on("close", onClose);
    const options: RequestOptions = { signal: abort.signal };

    let result: unknown;
    try {
      const create = kind === "chat" ? engine.chat.completions.create : engine.completions.create;
      result = await (create as (b: unknown, o: RequestOptions) => Promise<unknown>)(body, options);
    } catch (e) {
      if (abort.signal.aborted) return; // nobody is listening
      const { status, body: err } = engineErrorResponse(e);
      if (status >= 500) log(`request failed: ${(e as Error)?.stack ?? String(e)}`);
      sendJson(res, status, err);
      return;
    }
    if (!isAsyncIterable(result)) {
      sendJson(res, 200, result);
      return;
    }
    res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", "x-accel-buffering": "no" });
    res.flushHeaders();
    const iterator = result[Symbol.asyncIterator]();
    try {
      for (;;) {
        const step = await iterator.next();
        if (step.done) break;
        if (!(await write(res, sse(step.value)))) return;
      }
    } catch (e) {
      if (abort.signal.aborted) return;
      // Headers are sent: the error goes in-band, as the native server does.
      const { status, body: err } = engineErrorResponse(e);
      if (status >= 500) log(`generation failed: ${(e as Error)?.stack ?? String(e)}`);
      if (!(await write(res, sse(err)))) return;
    } finally {
      // Leaving early (client gone) ends the engine's stream, which frees the request.
      if (abort.signal.aborted) await iterator.return?.().catch(() => undefined);
    }
    if (await write(res, sse("[DONE]"))) res.end();
  };

  return (req, res) => {
    const path = (req.url ?? "/").split("?")[0]!;
    const method = req.method ?? "GET";
    const allowed = ROUTES[path];
    if (allowed === undefined) {
      req.resume();
      sendJson(res, 404, errorBody(`Unknown endpoint ${method} ${path}.`, "invalid_request_error", null, "404"));
      return;
    }
    if (method !== allowed) {
      req.resume();
      sendJson(res, 405, errorBody(`Method ${method} is not allowed on ${path}.`, "invalid_request_error", null, "405"), { allow: allowed });
      return;
    }
    if (path === "/v1/models") {
      req.resume();
      sendJson(res, 200, { object: "list", data: [{ id: modelId(), object: "model", created, owned_by: "sphere_aae" }] });
      return;
    }
    if (path === "/health") {
      req.resume();
      sendJson(res, 200, { status: "ok", model: modelId(), active_sequences: engine.kvCacheStats?.().activeSequences ?? 0, ...options.healthInfo?.() });
      return;
    }
    run(req, res, path === "/v1/chat/completions" ? "chat" : "completion").catch((e: unknown) => {
      log(`request failed: ${(e as Error)?.stack ?? String(e)}`);
      sendJson(res, 500, errorBody(`The server failed to run the request: ${(e as Error)?.message ?? String(e)}`, "server_error"));
      if (!res.writableEnded) res.destroy();
    });
  };
}

function isAsyncIterable(v: unknown): v is AsyncIterable<unknown> {
  return typeof v === "object" && v !== null && typeof (v as Record<symbol, unknown>)[Symbol.asyncIterator] === "function";
}

/** An http.Server serving `engine` (not listening yet). */
export function createServer(engine: ServedEngine | EngineInterface, options: ServerOptions = {}): Server {
  return createHttpServer(createHandler(engine as ServedEngine, options));
}

/** Serve `engine` on options.host:options.port (127.0.0.1:8000); resolves once listening. */
export async function serve(engine: ServedEngine | EngineInterface, options: ServerOptions = {}): Promise<RunningServer> {
  const server = createServer(engine, options);
  const host = options.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 8000, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const shown = host.includes(":") ? `[${host}]` : host;
  return {
    server,
    host,
    port,
    url: `http://${shown}:${port}`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((e) => (e ? reject(e) : resolve()));
        server.closeAllConnections();
      }),
  };
}

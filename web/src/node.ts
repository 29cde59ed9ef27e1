/**
 * The engine under Node (`import { CreateNodeEngine } from "@astro/aae-web/node"`): the same
 * Engine as in a page, with WebGPU from Dawn (npm `webgpu`) or the model's CPU library (wasm, no
 * Dawn needed), a fetch that also reads local folders, and model files cached in a directory
 * (FsStore) instead of the Cache API.
 *
 * Built to dist/node.js, which imports the engine from dist/index.js (one copy of every class, so
 * `instanceof` on errors works across both); never imported by the browser bundle.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, readFile, readdir, rename, unlink } from "node:fs/promises";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { CreateEngine, WebGPUNotAvailableError, type ByteStore, type DevicePreference, type Engine, type EngineConfig, type EntryMeta } from "./index.js";

export type { Engine, EngineConfig, InitProgressReport } from "./index.js";

// ---------------------------------------------------------------------------------------------
// Filesystem store

/** What an FsStore did since it was created: lets a server (and tests) show cache behaviour. */
export interface FsStoreStats {
  /** get() calls that found an entry (whether or not the loader then accepted it). */
  hits: number;
  /** get() calls that found nothing (or an unreadable entry). */
  misses: number;
  writes: number;
  /** delete() calls that removed an entry: the loader drops corrupt or stale entries this way. */
  deletes: number;
}

interface StoredMeta extends EntryMeta {
  key: string;
}

/**
 * A ByteStore in a directory, for Node. Each key (an absolute URL) maps to a file name made of a
 * hash of the key and a readable tail of it (`files/<hash>-<dir>_<file>`); its size, hash and key
 * go in `meta/<same name>.json`. The loader's integrity rules apply unchanged (cache.ts): an entry
 * whose body does not match the recorded size, or whose bytes no longer hash to the manifest's
 * sha256, is deleted and fetched again.
 *
 * Writes are atomic: each file is written to a temporary file in its own directory, flushed, then
 * renamed over the old one. A put first removes the entry's metadata and writes it last, so an
 * interrupted put leaves a body without metadata, which reads as absent (as an entry without our
 * headers does in the Cache API store), never a partial body that looks complete.
 */
export class FsStore implements ByteStore {
  readonly dir: string;
  readonly stats: FsStoreStats = { hits: 0, misses: 0, writes: 0, deletes: 0 };
  private ready: Promise<void> | undefined;

  constructor(dir: string = defaultCacheDir()) {
    this.dir = resolve(dir);
  }

  /** The file name an entry's body and metadata use (without directory). */
  static fileName(key: string): string {
    const hash = createHash("sha256").update(key).digest("hex").slice(0, 24);
    let path = key;
    try {
      path = new URL(key).pathname;
    } catch {
      // not a URL: use the key itself
    }
    const tail = path
      .split("/")
      .filter(Boolean)
      .slice(-2)
      .join("_")
      .replace(/[^A-Za-z0-9._-]/g, "_")
      .slice(-100);
    return tail ? `${hash}-${tail}` : hash;
  }

  /** Where the bytes of `key` live (whether or not it is cached). */
  bodyPath(key: string): string {
    return join(this.dir, "files", FsStore.fileName(key));
  }

  /** Where the metadata of `key` lives. */
  metaPath(key: string): string {
    return join(this.dir, "meta", FsStore.fileName(key) + ".json");
  }

  private init(): Promise<void> {
    this.ready ??= Promise.all([mkdir(join(this.dir, "files"), { recursive: true }), mkdir(join(this.dir, "meta"), { recursive: true })]).then(() => undefined);
    return this.ready;
  }

  private async readMeta(key: string): Promise<StoredMeta | undefined> {
    let text: string;
    try {
      text = await readFile(this.metaPath(key), "utf8");
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
    try {
      const m = JSON.parse(text) as Partial<StoredMeta>;
      // Unreadable metadata, or another key's (a hash-prefix collision): absent.
      if (m.key !== key || typeof m.size !== "number" || !Number.isSafeInteger(m.size)) return undefined;
      return typeof m.sha256 === "string" ? { key, size: m.size, sha256: m.sha256 } : { key, size: m.size };
    } catch {
      return undefined;
    }
  }

  async meta(key: string): Promise<EntryMeta | undefined> {
    const m = await this.readMeta(key);
    return m ? publicMeta(m) : undefined;
  }

  async get(key: string): Promise<{ bytes: Uint8Array; meta: EntryMeta } | undefined> {
    const m = await this.readMeta(key);
    if (!m) {
      this.stats.misses++;
      return undefined;
    }
    let buf: Buffer;
    try {
      buf = await readFile(this.bodyPath(key));
    } catch (e) {
      if (!isNotFound(e)) throw e;
      this.stats.misses++;
      return undefined; // metadata without a body: absent
    }
    this.stats.hits++;
    return { bytes: new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), meta: publicMeta(m) };
  }

  async put(key: string, bytes: Uint8Array, meta: EntryMeta): Promise<void> {
    await this.init();
    try {
      await unlinkIfPresent(this.metaPath(key));
      await writeAtomic(this.bodyPath(key), bytes);
      const stored: StoredMeta = meta.sha256 ? { key, size: meta.size, sha256: meta.sha256 } : { key, size: meta.size };
      await writeAtomic(this.metaPath(key), new TextEncoder().encode(JSON.stringify(stored)));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException | null)?.code;
      if (code === "ENOSPC" || code === "EDQUOT") {
        // The loader turns an error of this name into QuotaExceededError.
        const err = new Error(`No space left in ${this.dir} for ${key} (${bytes.byteLength} bytes)`, { cause: e });
        err.name = "QuotaExceededError";
        throw err;
      }
      throw e;
    }
    this.stats.writes++;
  }

  async delete(key: string): Promise<boolean> {
    const hadMeta = await unlinkIfPresent(this.metaPath(key));
    const hadBody = await unlinkIfPresent(this.bodyPath(key));
    if (hadMeta || hadBody) this.stats.deletes++;
    return hadMeta;
  }

  async keys(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(join(this.dir, "meta"));
    } catch (e) {
      if (isNotFound(e)) return [];
      throw e;
    }
    const out: string[] = [];
    for (const name of names) {
      if (name.startsWith(".") || !name.endsWith(".json")) continue; // temporary files
      try {
        const m = JSON.parse(await readFile(join(this.dir, "meta", name), "utf8")) as Partial<StoredMeta>;
        if (typeof m.key === "string" && FsStore.fileName(m.key) + ".json" === name) out.push(m.key);
      } catch {
        // vanished or unreadable: not an entry
      }
    }
    return out;
  }
}

function publicMeta(m: StoredMeta): EntryMeta {
  return m.sha256 !== undefined ? { size: m.size, sha256: m.sha256 } : { size: m.size };
}

function isNotFound(e: unknown): boolean {
  return (e as NodeJS.ErrnoException | null)?.code === "ENOENT";
}

async function unlinkIfPresent(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (e) {
    if (isNotFound(e)) return false;
    throw e;
  }
}

/** Write `bytes` to `path` through a temporary file in the same directory, flushed, then renamed. */
async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const slash = path.lastIndexOf("/");
  const tmp = `${path.slice(0, slash + 1)}.tmp-${process.pid}-${randomBytes(6).toString("hex")}-${path.slice(slash + 1)}`;
  const fh = await open(tmp, "w", 0o644);
  try {
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

/** $XDG_CACHE_HOME/aae-web, else ~/.cache/aae-web. */
export function defaultCacheDir(env: Record<string, string | undefined> = process.env): string {
  const xdg = env["XDG_CACHE_HOME"];
  return xdg && xdg.startsWith("/") ? join(xdg, "aae-web") : join(homedir(), ".cache", "aae-web");
}

// ---------------------------------------------------------------------------------------------
// fetch that also reads local files

/**
 * globalThis.fetch, plus file: URLs read from disk (Node's fetch has none): 200 with the bytes,
 * 404 when the file is missing. Honours `init.signal`.
 */
export const nodeFetch: typeof fetch = async (input, init) => {
  const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
  if (!url.startsWith("file:")) return globalThis.fetch(input, init);
  init?.signal?.throwIfAborted();
  try {
    const bytes = await readFile(fileURLToPath(url), init?.signal ? { signal: init.signal } : {});
    return new Response(bytes as unknown as BodyInit, { status: 200, headers: { "content-length": String(bytes.byteLength) } });
  } catch (e) {
    if ((e as { name?: string }).name === "AbortError") throw e;
    const code = (e as NodeJS.ErrnoException).code;
    const status = code === "ENOENT" || code === "ENOTDIR" ? 404 : code === "EACCES" ? 403 : 500;
    return new Response(`${url}: ${code ?? (e as Error).message}`, { status });
  }
};

/** A model location as a URL: http(s) and file: URLs as they are, anything else a local path. */
export function modelUrlOf(location: string, cwd: string = process.cwd()): string {
  if (/^(https?|file):/i.test(location)) return location.endsWith("/") ? location : location + "/";
  return pathToFileURL(resolve(cwd, location) + "/").href;
}

// ---------------------------------------------------------------------------------------------
// WebGPU from Dawn

const NO_ADAPTER_HINT =
  "Dawn (npm `webgpu`) found no GPU adapter. It needs a Vulkan driver on Linux (Metal on macOS, D3D12 on " +
  "Windows); without a GPU, point VK_ICD_FILENAMES at a software Vulkan driver, e.g. " +
  "VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json (SwiftShader, from Chromium) or " +
  "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json (lavapipe, Mesa's mesa-vulkan-drivers).";

/**
 * A WebGPU entry point from Dawn for Node (npm `webgpu`), with its globals (GPUBufferUsage & co.,
 * which tvmjs reads) installed. `options`: Dawn toggles such as "backend=vulkan"; default
 * $AAE_DAWN_OPTIONS, comma-separated.
 */
export async function nodeGPU(options?: string[]): Promise<GPU> {
  let webgpu: { create(options: string[]): GPU; globals: Record<string, unknown> };
  try {
    // A variable specifier: bundlers leave it alone, and the package stays optional.
    const name = "webgpu";
    webgpu = (await import(name)) as typeof webgpu;
  } catch (e) {
    throw new WebGPUNotAvailableError(
      "Node has no WebGPU of its own: the engine runs on Dawn for Node. Install it with `npm i webgpu`.",
      { package: "webgpu" },
      { cause: e },
    );
  }
  Object.assign(globalThis, webgpu.globals);
  return webgpu.create(options ?? (process.env["AAE_DAWN_OPTIONS"] ?? "").split(",").filter(Boolean));
}

/**
 * The WebGPU entry point CreateNodeEngine hands the engine for `device`: "wasm" loads nothing (the
 * CPU library needs no Dawn); "webgpu" loads Dawn and fails if it cannot; "auto" loads Dawn when it
 * is installed and otherwise runs without WebGPU (`missing` says why), so the engine picks the
 * model's CPU library. A Dawn without an adapter is the engine's to handle: under "auto" it too
 * falls back to the CPU library (deviceCandidates / isWebGPUFallbackReason).
 */
export async function nodeGPUFor(device: DevicePreference, load: () => Promise<GPU> = nodeGPU): Promise<{ gpu: GPU | undefined; missing?: Error }> {
  if (device === "wasm") return { gpu: undefined };
  if (device === "webgpu") return { gpu: await load() };
  try {
    return { gpu: await load() };
  } catch (e) {
    return { gpu: undefined, missing: e as Error };
  }
}

// ---------------------------------------------------------------------------------------------
// CreateNodeEngine

export interface NodeEngineConfig extends EngineConfig {
  /**
   * Directory of the file cache (FsStore) when `store` is not given; default
   * $XDG_CACHE_HOME/aae-web or ~/.cache/aae-web. null: no cache.
   */
  cacheDir?: string | null;
  /** Dawn toggles for nodeGPU when `gpu` is not given; default $AAE_DAWN_OPTIONS. */
  dawnOptions?: string[];
}

/**
 * Load a model in Node and return the Engine. `model` is a model id of `config.appConfig`
 * (whose model_url may be a local path), or, without an appConfig, the model folder itself:
 * a path, a file: URL or an http(s) URL; its id is then the chat config's model_id.
 * Defaults: `gpu` from Dawn (nodeGPU), `fetch` nodeFetch, `store` an FsStore in `cacheDir`.
 * `device` (EngineConfig): "wasm" runs the model's CPU library and never loads Dawn; "webgpu"
 * needs Dawn; "auto" (default) uses Dawn when it is installed and gives an adapter able to run
 * the model, else the CPU library (nodeGPUFor).
 */
export async function CreateNodeEngine(model: string, config: NodeEngineConfig = {}): Promise<Engine> {
  const { cacheDir, dawnOptions, ...engineConfig } = config;
  const fetchImpl = config.fetch ?? nodeFetch;
  let modelId = model;
  let appConfig = config.appConfig;
  if (appConfig) {
    // Local paths in model_url become file: URLs.
    appConfig = {
      ...appConfig,
      model_list: appConfig.model_list.map((m) => (/^[a-z][a-z0-9+.-]*:/i.test(m.model_url) ? m : { ...m, model_url: modelUrlOf(m.model_url) })),
    };
  } else {
    const url = modelUrlOf(model);
    modelId = await folderModelId(url, fetchImpl);
    appConfig = { model_list: [{ model_id: modelId, model_url: url }] };
  }
  const { gpu, missing } = config.gpu ? { gpu: config.gpu, missing: undefined } : await nodeGPUFor(config.device ?? "auto", () => nodeGPU(dawnOptions));
  if (missing) (config.logger ?? ((m: string) => console.log(`[aae] ${m}`)))(`no WebGPU (${missing.message}); the CPU library (wasm) can run the model`);
  const store = config.store !== undefined ? config.store : cacheDir === null ? null : new FsStore(cacheDir ?? defaultCacheDir());
  try {
    return await CreateEngine(modelId, { ...engineConfig, appConfig, ...(gpu ? { gpu } : {}), store, fetch: fetchImpl });
  } catch (e) {
    // "auto" without Dawn on a model without a CPU library: say that Dawn is missing.
    if (missing && (e as { name?: string }).name === "WebGPUNotAvailableError") throw missing;
    if ((e as { name?: string }).name === "WebGPUNotAvailableError") {
      throw new WebGPUNotAvailableError(`${(e as Error).message} ${NO_ADAPTER_HINT}`, { vkIcdFilenames: process.env["VK_ICD_FILENAMES"] ?? null }, { cause: e });
    }
    throw e;
  }
}

/** The model_id of the folder at `baseUrl` (its chat config), else the folder's name. */
async function folderModelId(baseUrl: string, fetchImpl: typeof fetch): Promise<string> {
  try {
    const resp = await fetchImpl(new URL("aae-chat-config.json", baseUrl).href);
    if (resp.ok) {
      const id = ((await resp.json()) as { model_id?: unknown }).model_id;
      if (typeof id === "string" && id) return id;
    }
  } catch {
    // the load itself reports an unreachable folder properly
  }
  return decodeURIComponent(new URL(baseUrl).pathname.split("/").filter(Boolean).pop() ?? "model");
}

export { createHandler, createServer, engineErrorResponse, serve, type RunningServer, type ServedEngine, type ServerOptions } from "./node_server.js";

/**
 * Downloading and caching model files.
 *
 * Shards are fetched with a concurrency limit, verified with SHA-256 (crypto.subtle) before they
 * are stored, retried with exponential backoff on transient failures, and stored in the Cache API
 * (default) or IndexedDB. Every stored entry records its size and hash, so a truncated or corrupt
 * entry (a crash mid-write, a stale build at the same URL, disk damage) is detected on read,
 * dropped, and fetched again instead of being fed to the GPU.
 *
 * Everything the loader touches is injectable (fetch, the store, sleep, the storage estimate),
 * which is what lets test/cache.test.ts run it in Node with fakes.
 */
import { CHAT_CONFIG_FILE, fileUrl, modelLibFile, parseChatConfig, parseManifest, type ChatConfig, type TensorManifest } from "./artifact.js";
import { NetworkError, QuotaExceededError } from "./errors.js";

// ---------------------------------------------------------------------------------------------
// Stores

/** What a store remembers about an entry besides its bytes. */
export interface EntryMeta {
  size: number;
  /** Lowercase hex SHA-256 of the bytes, when known (shards always; small JSON files not). */
  sha256?: string;
}

/** Minimal key -> bytes store. Keys are absolute URLs. */
export interface ByteStore {
  /** Metadata only, without reading the body: cheap presence check. */
  meta(key: string): Promise<EntryMeta | undefined>;
  get(key: string): Promise<{ bytes: Uint8Array; meta: EntryMeta } | undefined>;
  put(key: string, bytes: Uint8Array, meta: EntryMeta): Promise<void>;
  delete(key: string): Promise<boolean>;
  keys(): Promise<string[]>;
}

/** The subset of the Cache API (window.caches) this module uses; a fake implements it in tests. */
export interface CacheStorageLike {
  open(name: string): Promise<CacheLike>;
}
export interface CacheLike {
  match(key: string): Promise<Response | undefined>;
  put(key: string, response: Response): Promise<void>;
  delete(key: string): Promise<boolean>;
  keys(): Promise<ReadonlyArray<{ url: string }>>;
}

const SIZE_HEADER = "x-aae-size";
const SHA_HEADER = "x-aae-sha256";
export const DEFAULT_CACHE_NAME = "aae-models";

/** Cache API store. Size and hash ride along as response headers. */
export class CacheApiStore implements ByteStore {
  private cache: Promise<CacheLike>;

  constructor(storage: CacheStorageLike = globalThis.caches as unknown as CacheStorageLike, name = DEFAULT_CACHE_NAME) {
    if (!storage) throw new Error("The Cache API is not available here (it needs a secure context: https or localhost)");
    this.cache = storage.open(name);
  }

  private static metaFrom(resp: Response): EntryMeta | undefined {
    const size = Number(resp.headers.get(SIZE_HEADER));
    // An entry without our size header was not written by us (or lost its headers): treat as absent.
    if (!Number.isSafeInteger(size) || resp.headers.get(SIZE_HEADER) === null) return undefined;
    const sha = resp.headers.get(SHA_HEADER);
    return sha ? { size, sha256: sha } : { size };
  }

  async meta(key: string): Promise<EntryMeta | undefined> {
    const resp = await (await this.cache).match(key);
    return resp ? CacheApiStore.metaFrom(resp) : undefined;
  }

  async get(key: string): Promise<{ bytes: Uint8Array; meta: EntryMeta } | undefined> {
    const resp = await (await this.cache).match(key);
    if (!resp) return undefined;
    const meta = CacheApiStore.metaFrom(resp);
    if (!meta) return undefined;
    try {
      return { bytes: new Uint8Array(await resp.arrayBuffer()), meta };
    } catch {
      // A body that cannot be read back is as good as missing.
      return undefined;
    }
  }

  async put(key: string, bytes: Uint8Array, meta: EntryMeta): Promise<void> {
    const headers: Record<string, string> = {
      "content-type": "application/octet-stream",
      "content-length": String(bytes.byteLength),
      [SIZE_HEADER]: String(meta.size),
    };
    if (meta.sha256) headers[SHA_HEADER] = meta.sha256;
    await (await this.cache).put(key, new Response(bytes as BodyInit, { status: 200, headers }));
  }

  async delete(key: string): Promise<boolean> {
    return (await this.cache).delete(key);
  }

  async keys(): Promise<string[]> {
    return (await (await this.cache).keys()).map((r) => r.url);
  }
}

/**
 * IndexedDB store, for pages that prefer it (WebLLM's `useIndexedDBCache`). Metadata lives in its
 * own object store so presence checks never load a 32 MB value.
 */
export class IndexedDBStore implements ByteStore {
  private db: Promise<IDBDatabase>;

  constructor(name = DEFAULT_CACHE_NAME, factory: IDBFactory = globalThis.indexedDB) {
    if (!factory) throw new Error("IndexedDB is not available here");
    this.db = new Promise((resolve, reject) => {
      const req = factory.open(name, 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (!db.objectStoreNames.contains("files")) db.createObjectStore("files");
        if (!db.objectStoreNames.contains("meta")) db.createObjectStore("meta");
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  private async tx<T>(stores: string[], mode: IDBTransactionMode, fn: (t: IDBTransaction) => IDBRequest<T> | undefined): Promise<T | undefined> {
    const db = await this.db;
    return new Promise((resolve, reject) => {
      const t = db.transaction(stores, mode);
      const req = fn(t);
      // Resolve on transaction completion, not request success: only then is a write durable.
      t.oncomplete = () => resolve(req ? req.result : undefined);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error ?? new Error("IndexedDB transaction aborted"));
    });
  }

  async meta(key: string): Promise<EntryMeta | undefined> {
    return (await this.tx<EntryMeta>(["meta"], "readonly", (t) => t.objectStore("meta").get(key))) ?? undefined;
  }

  async get(key: string): Promise<{ bytes: Uint8Array; meta: EntryMeta } | undefined> {
    const db = await this.db;
    return new Promise((resolve, reject) => {
      const t = db.transaction(["files", "meta"], "readonly");
      const f = t.objectStore("files").get(key);
      const m = t.objectStore("meta").get(key);
      t.oncomplete = () => {
        const buf = f.result as ArrayBuffer | undefined;
        const meta = m.result as EntryMeta | undefined;
        resolve(buf && meta ? { bytes: new Uint8Array(buf), meta } : undefined);
      };
      t.onerror = () => reject(t.error);
    });
  }

  async put(key: string, bytes: Uint8Array, meta: EntryMeta): Promise<void> {
    // Copy into a standalone ArrayBuffer: the input may be a view into a larger buffer.
    const buf = bytes.slice().buffer;
    const db = await this.db;
    await new Promise<void>((resolve, reject) => {
      const t = db.transaction(["files", "meta"], "readwrite");
      t.objectStore("files").put(buf, key);
      t.objectStore("meta").put(meta, key);
      t.oncomplete = () => resolve();
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error ?? new Error("IndexedDB transaction aborted"));
    });
  }

  async delete(key: string): Promise<boolean> {
    const existed = (await this.meta(key)) !== undefined;
    const db = await this.db;
    await new Promise<void>((resolve, reject) => {
      const t = db.transaction(["files", "meta"], "readwrite");
      t.objectStore("files").delete(key);
      t.objectStore("meta").delete(key);
      t.oncomplete = () => resolve();
      t.onerror = () => reject(t.error);
    });
    return existed;
  }

  async keys(): Promise<string[]> {
    const keys = await this.tx<IDBValidKey[]>(["meta"], "readonly", (t) => t.objectStore("meta").getAllKeys());
    return (keys ?? []).map(String);
  }
}

// ---------------------------------------------------------------------------------------------
// Hashing and small helpers

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", bytes as BufferSource);
  const out = new Uint8Array(digest);
  let hex = "";
  for (let i = 0; i < out.length; i++) hex += out[i]!.toString(16).padStart(2, "0");
  return hex;
}

function isQuotaError(e: unknown): boolean {
  const name = (e as { name?: string } | null)?.name;
  return name === "QuotaExceededError" || name === "NS_ERROR_DOM_QUOTA_REACHED";
}

function isAbort(e: unknown): boolean {
  return (e as { name?: string } | null)?.name === "AbortError";
}

/** Runs `task(i)` for i in [0, count) with at most `limit` running at once. Fails fast. */
export async function runPool(count: number, limit: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < count) {
      const i = next++;
      try {
        await task(i);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const workers = Array.from({ length: Math.max(1, Math.min(limit, count)) }, () => worker());
  await Promise.all(workers);
}

// ---------------------------------------------------------------------------------------------
// Loader

export type LoadPhase = "download" | "compile" | "ready";

export interface LoadProgress {
  phase: LoadPhase;
  /** 0..1 within the current phase. */
  progress: number;
  loadedBytes: number;
  totalBytes: number;
  loadedShards: number;
  totalShards: number;
  /** Bytes served from the local cache rather than the network. */
  cachedBytes: number;
}

export interface LoaderOptions {
  /** Where to keep files; null disables caching (every load downloads). */
  store: ByteStore | null;
  fetch?: typeof fetch;
  /** Shards downloaded at once. */
  maxConcurrency?: number;
  /** Extra attempts after the first for a transient failure. */
  retries?: number;
  /** First backoff delay; doubles per attempt. */
  backoffMs?: number;
  sleep?: (ms: number) => Promise<void>;
  /** Re-hash cached shards on every load (catches disk corruption; costs CPU time). */
  verifyCached?: boolean;
  /** Storage estimate used to refuse a download that cannot fit; default navigator.storage.estimate. */
  estimateStorage?: (() => Promise<{ usage?: number; quota?: number }>) | null;
  signal?: AbortSignal;
  onProgress?: (p: LoadProgress) => void;
}

interface Expect {
  bytes?: number;
  sha256?: string;
}

export class ArtifactLoader {
  readonly store: ByteStore | null;
  private readonly fetchImpl: typeof fetch;
  private readonly maxConcurrency: number;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly verifyCached: boolean;
  private readonly estimateStorage: (() => Promise<{ usage?: number; quota?: number }>) | null;
  private readonly signal?: AbortSignal;
  private readonly onProgress?: (p: LoadProgress) => void;

  constructor(opts: LoaderOptions) {
    this.store = opts.store;
    this.fetchImpl = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.maxConcurrency = Math.max(1, opts.maxConcurrency ?? 4);
    this.retries = Math.max(0, opts.retries ?? 3);
    this.backoffMs = opts.backoffMs ?? 500;
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    this.verifyCached = opts.verifyCached ?? true;
    this.estimateStorage =
      opts.estimateStorage !== undefined
        ? opts.estimateStorage
        : typeof navigator !== "undefined" && navigator.storage?.estimate
          ? () => navigator.storage.estimate()
          : null;
    if (opts.signal) this.signal = opts.signal;
    if (opts.onProgress) this.onProgress = opts.onProgress;
  }

  /** A JSON file of the model folder, from the cache when present. */
  async fetchJson(url: string): Promise<unknown> {
    const bytes = await this.fetchBytes(url, {});
    try {
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      // A cached JSON that no longer parses is corrupt: drop it so the next load refetches.
      await this.store?.delete(url).catch(() => false);
      throw new NetworkError(`${url} is not valid JSON`, { url }, { cause: e });
    }
  }

  /**
   * Bytes of one file: a valid cached copy, else the network (verified, then cached).
   * `expect` drives validation: size and sha256 when the manifest gives them.
   */
  async fetchBytes(url: string, expect: Expect): Promise<Uint8Array> {
    const cached = await this.readCached(url, expect);
    if (cached) return cached;
    const bytes = await this.download(url, expect);
    await this.writeCache(url, bytes, expect);
    return bytes;
  }

  /** A cached entry that matches `expect`, or undefined (after deleting a bad one). */
  async readCached(url: string, expect: Expect): Promise<Uint8Array | undefined> {
    if (!this.store) return undefined;
    const entry = await this.store.get(url);
    if (!entry) return undefined;
    const { bytes, meta } = entry;
    const bad =
      bytes.byteLength !== meta.size || // partial body
      (expect.bytes !== undefined && bytes.byteLength !== expect.bytes) || // stale or truncated
      (expect.sha256 !== undefined && meta.sha256 !== undefined && meta.sha256 !== expect.sha256) || // other build
      (expect.sha256 !== undefined && this.verifyCached && (await sha256Hex(bytes)) !== expect.sha256); // corrupt
    if (bad) {
      await this.store.delete(url);
      return undefined;
    }
    return bytes;
  }

  /** True when `url` is cached with the expected size and hash (does not read the body). */
  async isCached(url: string, expect: Expect): Promise<boolean> {
    if (!this.store) return false;
    const meta = await this.store.meta(url);
    if (!meta) return false;
    if (expect.bytes !== undefined && meta.size !== expect.bytes) return false;
    if (expect.sha256 !== undefined && meta.sha256 !== undefined && meta.sha256 !== expect.sha256) return false;
    return true;
  }

  private async writeCache(url: string, bytes: Uint8Array, expect: Expect): Promise<void> {
    if (!this.store) return;
    const meta: EntryMeta = expect.sha256 ? { size: bytes.byteLength, sha256: expect.sha256 } : { size: bytes.byteLength };
    try {
      await this.store.put(url, bytes, meta);
    } catch (e) {
      if (isQuotaError(e)) {
        throw new QuotaExceededError(
          `Browser storage is full: could not cache ${url} (${bytes.byteLength} bytes). ` +
            `Delete cached models (deleteModelFromCache) or free disk space.`,
          { url, bytes: bytes.byteLength },
          { cause: e },
        );
      }
      throw e;
    }
  }

  /** Network fetch with retries. Transient: network errors, 5xx, 408, 429, size/hash mismatch. */
  async download(url: string, expect: Expect): Promise<Uint8Array> {
    let lastProblem = "";
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      if (attempt > 0) await this.sleep(this.backoffMs * 2 ** (attempt - 1));
      this.signal?.throwIfAborted();
      let resp: Response;
      try {
        // No cache mode here: the server decides HTTP caching (aae-web serve sends no-store for
        // shards, which this module stores itself), and Node's fetch rejects some modes.
        resp = await this.fetchImpl(url, this.signal ? { signal: this.signal } : {});
      } catch (e) {
        if (isAbort(e)) throw e;
        lastProblem = `fetch failed: ${(e as Error)?.message ?? String(e)}`;
        continue;
      }
      if (!resp.ok) {
        lastProblem = `HTTP ${resp.status}`;
        const transient = resp.status >= 500 || resp.status === 408 || resp.status === 429;
        // Drain the body so the connection can be reused.
        await resp.arrayBuffer().catch(() => undefined);
        if (!transient) {
          throw new NetworkError(`GET ${url} failed: HTTP ${resp.status}`, { url, status: resp.status, attempts: attempt + 1 });
        }
        continue;
      }
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await resp.arrayBuffer());
      } catch (e) {
        if (isAbort(e)) throw e;
        lastProblem = `body read failed: ${(e as Error)?.message ?? String(e)}`;
        continue;
      }
      if (expect.bytes !== undefined && bytes.byteLength !== expect.bytes) {
        lastProblem = `got ${bytes.byteLength} bytes, expected ${expect.bytes}`;
        continue;
      }
      if (expect.sha256 !== undefined) {
        const got = await sha256Hex(bytes);
        if (got !== expect.sha256) {
          lastProblem = `sha256 mismatch (got ${got}, expected ${expect.sha256})`;
          continue;
        }
      }
      return bytes;
    }
    throw new NetworkError(`GET ${url} failed after ${this.retries + 1} attempts: ${lastProblem}`, {
      url,
      attempts: this.retries + 1,
      problem: lastProblem,
    });
  }

  /**
   * Every shard of a manifest, `maxConcurrency` at a time; `onShard` runs as each arrives (in any
   * order) and the shard's bytes can be dropped once it returns, which bounds memory to about
   * maxConcurrency shards. Progress counts bytes and shards; `extraBytes` (e.g. the wasm) can be
   * added to the totals by the caller via `report`.
   */
  async loadShards(
    baseUrl: string,
    manifest: TensorManifest,
    onShard: (index: number, bytes: Uint8Array) => void | Promise<void>,
  ): Promise<void> {
    const shards = manifest.shards;
    const totalBytes = manifest.total_bytes;
    const urls = shards.map((s) => fileUrl(baseUrl, s.file));

    // Refuse early, before downloading gigabytes, when the missing shards cannot fit.
    if (this.store && this.estimateStorage) {
      let missing = 0;
      for (let i = 0; i < shards.length; i++) {
        if (!(await this.isCached(urls[i]!, shards[i]!))) missing += shards[i]!.bytes;
      }
      const est = await this.estimateStorage().catch(() => undefined);
      if (est && est.quota !== undefined && est.usage !== undefined && missing > est.quota - est.usage) {
        throw new QuotaExceededError(
          `This model needs ${missing} more bytes of browser storage but only ${est.quota - est.usage} are free. ` +
            `Delete cached models (deleteModelFromCache) or free disk space.`,
          { needed: missing, available: est.quota - est.usage },
        );
      }
    }

    let loadedBytes = 0;
    let loadedShards = 0;
    let cachedBytes = 0;
    const report = () =>
      this.onProgress?.({
        phase: "download",
        progress: totalBytes > 0 ? loadedBytes / totalBytes : shards.length ? loadedShards / shards.length : 1,
        loadedBytes,
        totalBytes,
        loadedShards,
        totalShards: shards.length,
        cachedBytes,
      });
    report();
    await runPool(shards.length, this.maxConcurrency, async (i) => {
      const shard = shards[i]!;
      const url = urls[i]!;
      let bytes = await this.readCached(url, shard);
      if (bytes) {
        cachedBytes += bytes.byteLength;
      } else {
        bytes = await this.download(url, shard);
        await this.writeCache(url, bytes, shard);
      }
      await onShard(i, bytes);
      loadedBytes += shard.bytes;
      loadedShards += 1;
      report();
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Whole-model cache queries

/**
 * True when every file of the model folder at `baseUrl` is cached: config, manifest, tokenizer
 * files, the model library and every shard (sizes and recorded hashes checked, bodies not re-read).
 */
export async function isModelCached(store: ByteStore, baseUrl: string, modelLibUrl?: string): Promise<boolean> {
  const readJson = async (url: string): Promise<unknown> => {
    const e = await store.get(url);
    if (!e || e.bytes.byteLength !== e.meta.size) return undefined;
    try {
      return JSON.parse(new TextDecoder().decode(e.bytes));
    } catch {
      return undefined;
    }
  };
  let config: ChatConfig;
  let manifest: TensorManifest;
  try {
    const rawConfig = await readJson(fileUrl(baseUrl, CHAT_CONFIG_FILE));
    if (rawConfig === undefined) return false;
    config = parseChatConfig(rawConfig);
    const rawManifest = await readJson(fileUrl(baseUrl, config.manifest));
    if (rawManifest === undefined) return false;
    manifest = parseManifest(rawManifest);
  } catch {
    return false; // a cached file from an incompatible build is not "the model in cache"
  }
  const wanted: Array<[string, EntryMeta | undefined]> = [
    ...config.tokenizer_files.map((f): [string, undefined] => [fileUrl(baseUrl, f), undefined]),
    [modelLibUrl ?? fileUrl(baseUrl, modelLibFile(config, "webgpu")), undefined],
    ...manifest.shards.map((s): [string, EntryMeta] => [fileUrl(baseUrl, s.file), { size: s.bytes, sha256: s.sha256 }]),
  ];
  for (const [url, expect] of wanted) {
    const meta = await store.meta(url);
    if (!meta) return false;
    if (expect && (meta.size !== expect.size || (meta.sha256 !== undefined && meta.sha256 !== expect.sha256))) return false;
  }
  return true;
}

/** Delete every cached file under `baseUrl` (the whole model folder); returns how many. */
export async function deleteCachedFolder(store: ByteStore, baseUrl: string, extraUrls: string[] = []): Promise<number> {
  const keys = (await store.keys()).filter((k) => k.startsWith(baseUrl) || extraUrls.includes(k));
  let n = 0;
  for (const k of keys) if (await store.delete(k)) n++;
  return n;
}

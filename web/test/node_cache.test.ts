// The Node filesystem store (src/node.ts FsStore) under the loader's integrity rules, the same as
// the browser stores' in cache.test.ts: corrupt, partial or stale entries are dropped and refetched.
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { pathToFileURL } from "node:url";
import { parseManifest } from "../src/artifact.js";
import { ArtifactLoader, deleteCachedFolder, isModelCached, type LoaderOptions } from "../src/cache.js";
import { WebGPUNotAvailableError } from "../src/errors.js";
import { CreateNodeEngine, FsStore, defaultCacheDir, modelUrlOf, nodeFetch, nodeGPUFor } from "../src/node.js";
import { FakeFetch, fakeModelFolder, loadModel, sha256 } from "./helpers.js";

const BASE = "http://127.0.0.1:8080/models/fake-model/";
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), "aae-fs-store-"));
  dirs.push(d);
  return d;
}

async function setup(nShards = 3) {
  const folder = fakeModelFolder(BASE, nShards);
  const fetch = new FakeFetch();
  for (const [url, bytes] of folder.files) fetch.routes.set(url, bytes);
  const dir = await tmp();
  const store = new FsStore(dir);
  const make = (over: Partial<LoaderOptions> = {}) =>
    new ArtifactLoader({ store, fetch: fetch.fetch as typeof globalThis.fetch, sleep: async () => {}, estimateStorage: null, backoffMs: 1, ...over });
  return { folder, fetch, dir, store, make };
}


const tempFiles = async (dir: string) =>
  [...(await readdir(join(dir, "files"))), ...(await readdir(join(dir, "meta")))].filter((n) => n.startsWith(".tmp-"));

test("FsStore: put, meta, get, keys and delete", async () => {
  const store = new FsStore(await tmp());
  const key = BASE + "params/shard-00001.bin";
  assert.equal(await store.meta(key), undefined);
  assert.equal(await store.get(key), undefined);
  assert.deepEqual(await store.keys(), []);

  const bytes = new Uint8Array([1, 2, 3, 4, 5]);
  await store.put(key, bytes, { size: 5, sha256: sha256(bytes) });
  await store.put(BASE + "tokenizer.json", new Uint8Array([123, 125]), { size: 2 });
  assert.deepEqual(await store.meta(key), { size: 5, sha256: sha256(bytes) });
  const got = await store.get(key);
  assert.deepEqual(got?.bytes, bytes);
  assert.deepEqual(got?.meta, { size: 5, sha256: sha256(bytes) });
  assert.deepEqual(await store.meta(BASE + "tokenizer.json"), { size: 2 });
  assert.deepEqual((await store.keys()).sort(), [key, BASE + "tokenizer.json"].sort());
  assert.deepEqual(await readFile(store.bodyPath(key)), Buffer.from(bytes), "the body file holds the raw bytes");

  // Overwrite, then delete.
  await store.put(key, new Uint8Array([9, 9]), { size: 2 });
  assert.deepEqual((await store.get(key))?.bytes, new Uint8Array([9, 9]));
  assert.deepEqual(await store.meta(key), { size: 2 });
  assert.equal(await store.delete(key), true);
  assert.equal(await store.delete(key), false);
  assert.equal(await store.get(key), undefined);
  assert.deepEqual(await store.keys(), [BASE + "tokenizer.json"]);
  assert.deepEqual(store.stats, { hits: 2, misses: 2, writes: 3, deletes: 1 });
});

test("FsStore: keys become safe file names, distinct per key", () => {
  const keys = [
    "http://h/models/m/params/shard-00000.bin",
    "http://h/models/m2/params/shard-00000.bin",
    "file:///tmp/a b/../x?y=1#z",
    "https://h/%2e%2e/..%2F..%2Fetc/passwd",
    "not a url: ../../x/\u00e9\u0000",
    "http://h/",
  ];
  const names = keys.map((k) => FsStore.fileName(k));
  assert.equal(new Set(names).size, keys.length);
  for (const n of names) {
    assert.match(n, /^[0-9a-f]{24}(-[A-Za-z0-9._-]{1,100})?$/);
    assert.ok(!n.includes("/") && !n.startsWith("."));
  }
  assert.match(names[0]!, /-params_shard-00000\.bin$/, "readable tail");
});

test("FsStore: writes are atomic: no temp file stays, readers never see a partial body", async () => {
  const dir = await tmp();
  const store = new FsStore(dir);
  const key = BASE + "params/shard-00000.bin";
  const old = new Uint8Array(4 << 20).fill(1);
  await store.put(key, old, { size: old.byteLength });
  const next = new Uint8Array(4 << 20).fill(2);
  let done = false;
  const writing = store.put(key, next, { size: next.byteLength }).then(() => (done = true));
  const seen: string[] = [];
  while (!done) {
    const e = await store.get(key);
    if (!e) seen.push("absent");
    else {
      assert.equal(e.bytes.byteLength, e.meta.size, "body and metadata agree");
      assert.ok(e.bytes.every((b) => b === e.bytes[0]), "one whole version, never a mix");
      seen.push(e.bytes[0] === 1 ? "old" : "new");
    }
  }
  await writing;
  assert.deepEqual((await store.get(key))?.bytes, next);
  assert.deepEqual(await tempFiles(dir), []);
});

test("FsStore: a put that fails leaves neither an entry nor a temp file", async () => {
  const dir = await tmp();
  const store = new FsStore(dir);
  await store.put(BASE + "a", new Uint8Array([1]), { size: 1 }); // creates the directories
  // The body's directory replaced by a file: the temp file cannot be created.
  await rm(join(dir, "files"), { recursive: true });
  await writeFile(join(dir, "files"), "not a directory");
  await assert.rejects(store.put(BASE + "b", new Uint8Array([1, 2]), { size: 2 }));
  assert.equal(await store.get(BASE + "b"), undefined);
  assert.deepEqual(await store.keys(), [BASE + "a"]);
  assert.deepEqual((await readdir(join(dir, "meta"))).filter((n) => n.startsWith(".tmp-")), []);
});

test("FsStore: an interrupted put (body written, metadata not) reads as absent; stray temp files are ignored", async () => {
  const dir = await tmp();
  const store = new FsStore(dir);
  const key = BASE + "params/shard-00000.bin";
  await store.put(key, new Uint8Array([1, 2, 3]), { size: 3 });
  await rm(store.metaPath(key));
  await writeFile(join(dir, "meta", ".tmp-123-abc-" + FsStore.fileName(key) + ".json"), "{\"key\": \"x\"");
  assert.equal(await store.meta(key), undefined);
  assert.equal(await store.get(key), undefined);
  assert.deepEqual(await store.keys(), []);
  // Metadata of another key under this name (a hash-prefix collision) is not this entry's.
  await writeFile(store.metaPath(key), JSON.stringify({ key: BASE + "other", size: 3 }));
  assert.equal(await store.get(key), undefined);
});

test("loader + FsStore: second load reads the directory only", async () => {
  const { folder, fetch, make, store } = await setup(4);
  assert.deepEqual(await loadModel(make()), folder.shards);
  assert.equal(fetch.calls.length, folder.files.size);
  fetch.calls.length = 0;
  assert.deepEqual(await loadModel(make()), folder.shards);
  assert.deepEqual(fetch.calls, [], "second load must not touch the network");
  assert.equal(await isModelCached(store, BASE), true);
  assert.equal(await deleteCachedFolder(store, BASE), folder.files.size);
  assert.equal(await isModelCached(store, BASE), false);
});

test("loader + FsStore: a corrupt shard file (flipped bytes) is dropped, refetched and rewritten", async () => {
  const { folder, fetch, make, store } = await setup(3);
  await loadModel(make());
  const url = BASE + folder.manifest.shards[2]!.file;
  const path = store.bodyPath(url);
  const bytes = await readFile(path);
  bytes[10] = bytes[10]! ^ 0xff;
  await writeFile(path, bytes);
  fetch.calls.length = 0;
  const deletesBefore = store.stats.deletes;
  const got = await loadModel(make());
  assert.deepEqual(got[2], folder.shards[2]);
  assert.deepEqual(fetch.calls, [url], "only the corrupt shard is fetched again");
  assert.equal(store.stats.deletes, deletesBefore + 1);
  assert.deepEqual(new Uint8Array(await readFile(path)), folder.shards[2], "the cache file is repaired");
});

test("loader + FsStore: a truncated shard file is refetched even without re-hashing", async () => {
  const { folder, fetch, make, store } = await setup(2);
  await loadModel(make());
  const url = BASE + folder.manifest.shards[0]!.file;
  await writeFile(store.bodyPath(url), folder.shards[0]!.slice(0, 100));
  fetch.calls.length = 0;
  await loadModel(make({ verifyCached: false }));
  assert.deepEqual(fetch.calls, [url]);
  assert.equal((await readFile(store.bodyPath(url))).byteLength, folder.shards[0]!.byteLength);
});

test("loader + FsStore: an entry recorded with another build's sha256 is refetched", async () => {
  const { folder, fetch, make, store } = await setup(2);
  await loadModel(make());
  const url = BASE + folder.manifest.shards[1]!.file;
  const meta = JSON.parse(await readFile(store.metaPath(url), "utf8"));
  await writeFile(store.metaPath(url), JSON.stringify({ ...meta, sha256: "0".repeat(64) }));
  fetch.calls.length = 0;
  await loadModel(make({ verifyCached: false }));
  assert.deepEqual(fetch.calls, [url]);
});

test("loader + FsStore: corrupt cached JSON is dropped so the next load refetches it", async () => {
  const { fetch, make, store } = await setup(1);
  await loadModel(make());
  const url = BASE + "tokenizer.json";
  const size = (await readFile(store.bodyPath(url))).byteLength;
  await writeFile(store.bodyPath(url), "{not json".padEnd(size, " "));
  await assert.rejects(make().fetchJson(url));
  fetch.calls.length = 0;
  await make().fetchJson(url);
  assert.deepEqual(fetch.calls, [url]);
});

test("defaultCacheDir: $XDG_CACHE_HOME/aae-web, else ~/.cache/aae-web", () => {
  assert.equal(defaultCacheDir({ XDG_CACHE_HOME: "/x/cache" }), "/x/cache/aae-web");
  assert.match(defaultCacheDir({}), /\/\.cache\/aae-web$/);
  assert.match(defaultCacheDir({ XDG_CACHE_HOME: "relative" }), /\/\.cache\/aae-web$/, "a relative XDG path is ignored, per the spec");
});

test("nodeFetch reads file: URLs (404 when missing); modelUrlOf makes folder URLs", async () => {
  const dir = await tmp();
  await writeFile(join(dir, "a.json"), "{\"x\": 1}");
  const base = modelUrlOf(dir);
  assert.equal(base, pathToFileURL(dir).href + "/");
  const r = await nodeFetch(new URL("a.json", base).href);
  assert.equal(r.status, 200);
  assert.deepEqual(await r.json(), { x: 1 });
  assert.equal((await nodeFetch(new URL("missing.bin", base).href)).status, 404);
  const aborted = new AbortController();
  aborted.abort();
  await assert.rejects(nodeFetch(new URL("a.json", base).href, { signal: aborted.signal }));
  assert.equal(modelUrlOf("https://h/m"), "https://h/m/");
  assert.equal(modelUrlOf("rel/m", "/base"), "file:///base/rel/m/");
});

test("CreateNodeEngine: files cached in cacheDir by default, a clear error without an adapter", async () => {
  const { folder, fetch } = await setup(1);
  const dir = await tmp();
  const noAdapter = { requestAdapter: async () => null } as unknown as GPU;
  await assert.rejects(
    CreateNodeEngine(BASE, { gpu: noAdapter, cacheDir: dir, fetch: fetch.fetch as typeof globalThis.fetch, logger: () => {} }),
    (e: unknown) => {
      assert.ok(e instanceof WebGPUNotAvailableError);
      assert.match(e.message, /no GPU adapter/);
      assert.match(e.message, /VK_ICD_FILENAMES=/);
      return true;
    },
  );
  // The chat config was fetched (and cached) before the device was asked for.
  const store = new FsStore(dir);
  assert.deepEqual(await store.keys(), [BASE + "aae-chat-config.json"]);
  assert.deepEqual(new Uint8Array(await readFile(store.bodyPath(BASE + "aae-chat-config.json"))), folder.files.get(BASE + "aae-chat-config.json"));
});

test("nodeGPUFor: wasm never loads Dawn, webgpu needs it, auto goes on without it", async () => {
  let loads = 0;
  const fakeGpu = { requestAdapter: async () => null } as unknown as GPU;
  const dawn = async () => {
    loads++;
    return fakeGpu;
  };
  const noDawn = async (): Promise<GPU> => {
    loads++;
    throw new WebGPUNotAvailableError("Node has no WebGPU of its own: install `npm i webgpu`.", { package: "webgpu" });
  };
  assert.deepEqual(await nodeGPUFor("wasm", noDawn), { gpu: undefined });
  assert.deepEqual(await nodeGPUFor("wasm", dawn), { gpu: undefined });
  assert.equal(loads, 0, "device wasm never loads Dawn");
  assert.equal((await nodeGPUFor("webgpu", dawn)).gpu, fakeGpu);
  await assert.rejects(nodeGPUFor("webgpu", noDawn), WebGPUNotAvailableError);
  assert.equal((await nodeGPUFor("auto", dawn)).gpu, fakeGpu);
  const auto = await nodeGPUFor("auto", noDawn);
  assert.equal(auto.gpu, undefined);
  assert.ok(auto.missing instanceof WebGPUNotAvailableError);
});

test("CreateNodeEngine: device wasm on a folder without a CPU library says so (not a WebGPU error)", async () => {
  const { fetch } = await setup(1);
  await assert.rejects(
    CreateNodeEngine(BASE, { device: "wasm", cacheDir: null, fetch: fetch.fetch as typeof globalThis.fetch, logger: () => {} }),
    (e: unknown) => {
      assert.equal((e as Error).name, "ArtifactFormatError");
      assert.match((e as Error).message, /no CPU \(wasm\) library/);
      return true;
    },
  );
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { parseManifest } from "../src/artifact.js";
import { ArtifactLoader, CacheApiStore, deleteCachedFolder, isModelCached, runPool, type LoadProgress, type LoaderOptions } from "../src/cache.js";
import { NetworkError, QuotaExceededError } from "../src/errors.js";
import { FakeCacheStorage, FakeFetch, fakeModelFolder, loadModel } from "./helpers.js";

const BASE = "http://127.0.0.1:8080/models/fake-model/";

function setup(nShards = 4, opts: Partial<LoaderOptions> = {}) {
  const folder = fakeModelFolder(BASE, nShards);
  const fetch = new FakeFetch();
  for (const [url, bytes] of folder.files) fetch.routes.set(url, bytes);
  const storage = new FakeCacheStorage();
  const sleeps: number[] = [];
  const progress: LoadProgress[] = [];
  const make = (over: Partial<LoaderOptions> = {}) =>
    new ArtifactLoader({
      store: new CacheApiStore(storage),
      fetch: fetch.fetch as typeof globalThis.fetch,
      sleep: async (ms) => void sleeps.push(ms),
      estimateStorage: null,
      onProgress: (p) => progress.push(p),
      backoffMs: 10,
      ...opts,
      ...over,
    });
  return { folder, fetch, storage, sleeps, progress, make };
}


const cacheOf = async (storage: FakeCacheStorage) => storage.open("aae-models");

test("first load downloads and caches; second load fetches nothing", async () => {
  const { folder, fetch, storage, make } = setup(4);
  const first = await loadModel(make());
  assert.deepEqual(first, folder.shards);
  assert.equal(fetch.calls.length, folder.files.size);
  assert.equal((await cacheOf(storage)).entries.size, folder.files.size);

  fetch.calls.length = 0;
  const second = await loadModel(make());
  assert.deepEqual(second, folder.shards);
  assert.deepEqual(fetch.calls, [], "second load must not touch the network");
  assert.equal(await isModelCached(new CacheApiStore(storage), BASE), true);
});

test("progress counts bytes and shards up to the total", async () => {
  const { progress, make, folder } = setup(5);
  await loadModel(make());
  const last = progress[progress.length - 1]!;
  assert.equal(last.phase, "download");
  assert.equal(last.loadedBytes, folder.manifest.total_bytes);
  assert.equal(last.totalBytes, folder.manifest.total_bytes);
  assert.equal(last.loadedShards, 5);
  assert.equal(last.totalShards, 5);
  assert.equal(last.progress, 1);
  for (let i = 1; i < progress.length; i++) assert.ok(progress[i]!.loadedBytes >= progress[i - 1]!.loadedBytes);
  // Second load: everything comes from the cache.
  progress.length = 0;
  await loadModel(make());
  assert.equal(progress[progress.length - 1]!.cachedBytes, folder.manifest.total_bytes);
});

test("a shard whose download fails sha256 is retried, then accepted", async () => {
  const { folder, fetch, sleeps, make } = setup(2);
  const url = BASE + folder.manifest.shards[1]!.file;
  const good = folder.shards[1]!;
  fetch.routes.set(url, (attempt) => {
    const b = good.slice();
    if (attempt === 1) b[0] = b[0]! ^ 0xff; // corrupt the first response
    return new Response(b as BodyInit);
  });
  const got = await loadModel(make());
  assert.deepEqual(got[1], good);
  assert.equal(fetch.count(url), 2);
  assert.deepEqual(sleeps, [10]);
});

test("a shard that never matches its sha256 ends in NetworkError after all retries", async () => {
  const { folder, fetch, sleeps, make, storage } = setup(2);
  const url = BASE + folder.manifest.shards[0]!.file;
  fetch.routes.set(url, () => new Response(new Uint8Array(256) as BodyInit));
  await assert.rejects(loadModel(make({ retries: 2 })), (e: unknown) => {
    assert.ok(e instanceof NetworkError);
    assert.match(e.message, /after 3 attempts: sha256 mismatch/);
    assert.equal(e.url, url);
    return true;
  });
  assert.equal(fetch.count(url), 3);
  assert.deepEqual(sleeps, [10, 20], "exponential backoff");
  assert.equal((await cacheOf(storage)).entries.has(url), false, "a bad shard is never cached");
});

test("transient network errors and 5xx are retried; 404 is not", async () => {
  const { folder, fetch, make } = setup(1);
  const url = BASE + folder.manifest.shards[0]!.file;
  fetch.routes.set(url, (attempt) => {
    if (attempt === 1) throw new TypeError("Failed to fetch");
    if (attempt === 2) return new Response("busy", { status: 503 });
    return new Response(folder.shards[0]!.slice() as BodyInit);
  });
  await loadModel(make());
  assert.equal(fetch.count(url), 3);

  const s2 = setup(1);
  const url2 = BASE + s2.folder.manifest.shards[0]!.file;
  s2.fetch.routes.delete(url2);
  await assert.rejects(loadModel(s2.make()), (e: unknown) => e instanceof NetworkError && e.details["status"] === 404);
  assert.equal(s2.fetch.count(url2), 1, "404 is permanent: no retry");
});

test("a truncated download is retried", async () => {
  const { folder, fetch, make } = setup(1);
  const url = BASE + folder.manifest.shards[0]!.file;
  fetch.routes.set(url, (attempt) => new Response(folder.shards[0]!.slice(0, attempt === 1 ? 100 : 256) as BodyInit));
  await loadModel(make());
  assert.equal(fetch.count(url), 2);
});

test("a corrupt cached shard (same size, wrong bytes) is detected and refetched", async () => {
  const { folder, fetch, storage, make } = setup(3);
  await loadModel(make());
  const url = BASE + folder.manifest.shards[2]!.file;
  const entry = (await cacheOf(storage)).entries.get(url)!;
  entry.body[10] = entry.body[10]! ^ 1;
  fetch.calls.length = 0;
  const got = await loadModel(make());
  assert.deepEqual(got[2], folder.shards[2]);
  assert.deepEqual(fetch.calls, [url]);
  assert.deepEqual((await cacheOf(storage)).entries.get(url)!.body, folder.shards[2], "the cache is repaired");
});

test("a partial cached entry (body shorter than recorded) is refetched, even without re-hashing", async () => {
  const { folder, fetch, storage, make } = setup(2);
  await loadModel(make());
  const url = BASE + folder.manifest.shards[0]!.file;
  const c = await cacheOf(storage);
  c.entries.get(url)!.body = folder.shards[0]!.slice(0, 128);
  fetch.calls.length = 0;
  await loadModel(make({ verifyCached: false }));
  assert.deepEqual(fetch.calls, [url]);
});

test("a cached shard from another build (different sha256) is refetched", async () => {
  const { folder, fetch, storage, make } = setup(2);
  await loadModel(make());
  const url = BASE + folder.manifest.shards[1]!.file;
  (await cacheOf(storage)).entries.get(url)!.headers["x-aae-sha256"] = "0".repeat(64);
  fetch.calls.length = 0;
  await loadModel(make({ verifyCached: false }));
  assert.deepEqual(fetch.calls, [url]);
});

test("an entry without our metadata headers counts as absent", async () => {
  const { folder, fetch, storage, make } = setup(1);
  await loadModel(make());
  const url = BASE + folder.manifest.shards[0]!.file;
  delete (await cacheOf(storage)).entries.get(url)!.headers["x-aae-size"];
  fetch.calls.length = 0;
  await loadModel(make());
  assert.deepEqual(fetch.calls, [url]);
});

test("corrupt cached JSON is dropped so the next load refetches it", async () => {
  const { fetch, storage, make } = setup(1);
  await loadModel(make());
  const url = BASE + "tokenizer.json";
  const e = (await cacheOf(storage)).entries.get(url)!;
  e.body = new TextEncoder().encode("{not json".padEnd(e.body.length, " "));
  await assert.rejects(make().fetchJson(url), NetworkError);
  fetch.calls.length = 0;
  await make().fetchJson(url);
  assert.deepEqual(fetch.calls, [url]);
});

test("downloads respect the concurrency limit", async () => {
  const { fetch, make } = setup(10);
  fetch.delayMs = 5;
  await loadModel(make({ maxConcurrency: 3 }));
  assert.equal(fetch.maxInFlight, 3);
  const s = setup(10);
  s.fetch.delayMs = 5;
  await loadModel(s.make({ maxConcurrency: 1 }));
  assert.equal(s.fetch.maxInFlight, 1);
});

test("runPool runs everything once and stops on the first failure", async () => {
  const seen: number[] = [];
  await runPool(7, 2, async (i) => void seen.push(i));
  assert.deepEqual(seen.sort(), [0, 1, 2, 3, 4, 5, 6]);
  const started: number[] = [];
  await assert.rejects(
    runPool(10, 2, async (i) => {
      started.push(i);
      if (i === 1) throw new Error("boom");
      await new Promise((r) => setTimeout(r, 5));
    }),
    /boom/,
  );
  assert.ok(started.length < 10);
});

test("not enough storage: QuotaExceededError before downloading any shard", async () => {
  const { fetch, make, folder } = setup(3);
  const loader = make({ estimateStorage: async () => ({ usage: 1000, quota: 1000 + folder.manifest.total_bytes - 1 }) });
  await assert.rejects(loadModel(loader), QuotaExceededError);
  assert.equal(fetch.calls.filter((u) => u.endsWith(".bin")).length, 0);
  // Enough space: fine.
  await loadModel(make({ estimateStorage: async () => ({ usage: 0, quota: 1e9 }) }));
});

test("a cache write failing with QuotaExceededError surfaces as QuotaExceededError", async () => {
  const { make, storage } = setup(1);
  const quota = new Error("full");
  quota.name = "QuotaExceededError";
  (await cacheOf(storage)).putError = quota;
  await assert.rejects(loadModel(make()), (e: unknown) => e instanceof QuotaExceededError && /storage is full/.test((e as Error).message));
});

test("no store: everything downloads every time", async () => {
  const { fetch, make, folder } = setup(2);
  await loadModel(make({ store: null }));
  await loadModel(make({ store: null }));
  assert.equal(fetch.calls.length, 2 * folder.files.size);
});

test("isModelCached and deleteCachedFolder", async () => {
  const { storage, make, folder } = setup(2);
  const store = new CacheApiStore(storage);
  assert.equal(await isModelCached(store, BASE), false);
  await loadModel(make());
  assert.equal(await isModelCached(store, BASE), true);
  // Another model's entry must survive deletion of this one.
  await store.put("http://127.0.0.1:8080/models/other/x.bin", new Uint8Array(4), { size: 4 });
  const removed = await deleteCachedFolder(store, BASE);
  assert.equal(removed, folder.files.size);
  assert.deepEqual(await store.keys(), ["http://127.0.0.1:8080/models/other/x.bin"]);
  assert.equal(await isModelCached(store, BASE), false);
});

test("isModelCached is false when one shard is missing", async () => {
  const { storage, make, folder } = setup(3);
  await loadModel(make());
  await (await cacheOf(storage)).delete(BASE + folder.manifest.shards[1]!.file);
  assert.equal(await isModelCached(new CacheApiStore(storage), BASE), false);
});

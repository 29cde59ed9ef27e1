// Where a model runs: WebGPU, or the folder's CPU library (model_lib.wasm, `compile --device wasm`)
// when WebGPU is missing or cannot run it, or when EngineConfig.device asks for it. No GPU and no
// real library here: the fake library is not a wasm that tvmjs can instantiate, so each load
// fails after it was fetched, and which library was fetched tells the device chosen.
import assert from "node:assert/strict";
import { test } from "node:test";
import { CacheApiStore } from "../src/cache.js";
import { Engine, type EngineConfig } from "../src/engine.js";
import { ArtifactFormatError, FeatureNotSupportedError, ModelTooLargeError, WebGPUNotAvailableError } from "../src/errors.js";
import { deviceCandidates, isWebGPUFallbackReason, type DevicePreference } from "../src/webgpu.js";
import { FakeCacheStorage, FakeFetch, chatConfig, fakeModelFolder } from "./helpers.js";

const WEBGPU_ONLY = { webgpu: "m-webgpu.wasm" };
const BOTH = { webgpu: "m-webgpu.wasm", wasm: "m-wasm.wasm" };

test("device candidates: auto prefers WebGPU, falls back to the CPU library only when the folder has one", () => {
  const cases: Array<[DevicePreference, Record<string, string>, boolean, string[]]> = [
    ["auto", BOTH, true, ["webgpu", "wasm"]],
    ["auto", BOTH, false, ["wasm"]],
    ["auto", WEBGPU_ONLY, true, ["webgpu"]],
    ["auto", WEBGPU_ONLY, false, ["webgpu"]], // WebGPU's own error then says what is missing
    ["auto", { wasm: "m-wasm.wasm" }, false, ["wasm"]],
    ["webgpu", BOTH, false, ["webgpu"]],
    ["wasm", BOTH, true, ["wasm"]],
  ];
  for (const [pref, libs, gpu, expected] of cases) {
    assert.deepEqual(deviceCandidates(pref, libs, gpu), expected, JSON.stringify([pref, libs, gpu]));
  }
});

test("device candidates: asking for a library the folder lacks, or an unknown device, is refused", () => {
  assert.throws(() => deviceCandidates("wasm", WEBGPU_ONLY, true, "m"), (e: unknown) => e instanceof ArtifactFormatError && /m has no CPU \(wasm\) library .*lists webgpu.*--no-wasm/.test((e as Error).message));
  assert.throws(() => deviceCandidates("cpu" as DevicePreference, BOTH, true), TypeError);
  assert.throws(() => deviceCandidates("wasm", {}, true), ArtifactFormatError);
});

test("fallback reasons: no WebGPU, a missing feature, a model too large for the GPU; nothing else", () => {
  assert.ok(isWebGPUFallbackReason(new WebGPUNotAvailableError("x")));
  assert.ok(isWebGPUFallbackReason(new FeatureNotSupportedError("x", { feature: "shader-f16" })));
  assert.ok(isWebGPUFallbackReason(new ModelTooLargeError("x", {})));
  assert.ok(!isWebGPUFallbackReason(new ArtifactFormatError("x")));
  assert.ok(!isWebGPUFallbackReason(new Error("x")));
});

// -- the engine's choice, seen through what reload() fetches ---------------------------------------

const BASE = "http://127.0.0.1:8080/models/fake-model/";
const LIBS = { webgpu: "fake-model-webgpu.wasm", wasm: "fake-model-wasm.wasm" };

function engineFor(modelLib: Record<string, string>, over: Partial<EngineConfig> = {}, required: string[] = []) {
  const folder = fakeModelFolder(BASE, 2);
  folder.files.set(BASE + "aae-chat-config.json", new TextEncoder().encode(JSON.stringify(chatConfig({ model_lib: modelLib, required_features: required }))));
  folder.files.set(BASE + "fake-model-wasm.wasm", new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
  const fetch = new FakeFetch();
  for (const [u, b] of folder.files) fetch.routes.set(u, b);
  const logs: string[] = [];
  const engine = new Engine({
    appConfig: { model_list: [{ model_id: "fake-model", model_url: BASE }] },
    fetch: fetch.fetch as typeof globalThis.fetch,
    store: new CacheApiStore(new FakeCacheStorage()),
    logger: (m) => void logs.push(m),
    ...over,
  });
  return { engine, fetch, logs };
}

function gpuWith(limits: Record<string, number>, features: string[] = []): GPU {
  const adapter = {
    features: new Set<string>(features),
    limits,
    info: { vendor: "fake" },
    requestDevice: async () => ({ limits, lost: new Promise(() => {}), destroy: () => {} }),
  };
  return { requestAdapter: async () => adapter } as unknown as GPU;
}

const libsFetched = (calls: string[]) => calls.filter((u) => u.endsWith(".wasm")).map((u) => u.slice(BASE.length));
// The fake library cannot be instantiated: the load fails with this, after the library was fetched.
const notInstantiable = (e: unknown) => e instanceof ArtifactFormatError && /could not be instantiated/.test((e as Error).message);

test("engine: without WebGPU, auto loads the CPU library", async () => {
  const { engine, fetch, logs } = engineFor(LIBS);
  await assert.rejects(engine.reload("fake-model"), notInstantiable);
  assert.deepEqual(libsFetched(fetch.calls), ["fake-model-wasm.wasm"]);
  assert.ok(!logs.some((m) => /WebGPU adapter/.test(m)));
});

test("engine: with a GPU that can run the model, auto loads the WebGPU library", async () => {
  const { engine, fetch } = engineFor(LIBS, { gpu: gpuWith({ maxStorageBufferBindingSize: 1 << 20, maxBufferSize: 1 << 20 }) });
  await assert.rejects(engine.reload("fake-model"), notInstantiable);
  assert.deepEqual(libsFetched(fetch.calls), ["fake-model-webgpu.wasm"]);
});

test("engine: a GPU too small for the model, or without a needed feature, falls back to the CPU library", async () => {
  const small = engineFor(LIBS, { gpu: gpuWith({ maxStorageBufferBindingSize: 200, maxBufferSize: 1 << 30 }) });
  await assert.rejects(small.engine.reload("fake-model"), notInstantiable);
  assert.deepEqual(libsFetched(small.fetch.calls), ["fake-model-wasm.wasm"]);
  assert.ok(small.logs.some((m) => /WebGPU cannot run fake-model .*using its CPU library/.test(m)), small.logs.join("\n"));

  const noF16 = engineFor(LIBS, { gpu: gpuWith({}) }, ["shader-f16"]);
  await assert.rejects(noF16.engine.reload("fake-model"), notInstantiable);
  assert.deepEqual(libsFetched(noF16.fetch.calls), ["fake-model-wasm.wasm"]);
});

test("engine: device 'wasm' skips WebGPU even when present; 'webgpu' never falls back", async () => {
  let asked = false;
  const gpu = { requestAdapter: async () => ((asked = true), null) } as unknown as GPU;
  const cpu = engineFor(LIBS, { gpu, device: "wasm" });
  await assert.rejects(cpu.engine.reload("fake-model"), notInstantiable);
  assert.deepEqual(libsFetched(cpu.fetch.calls), ["fake-model-wasm.wasm"]);
  assert.equal(asked, false);

  const onlyGpu = engineFor(LIBS, { device: "webgpu" });
  await assert.rejects(onlyGpu.engine.reload("fake-model"), WebGPUNotAvailableError);
  assert.deepEqual(libsFetched(onlyGpu.fetch.calls), []);
});

test("engine: a folder without a CPU library keeps today's behaviour, and refuses device 'wasm' before any download", async () => {
  const { engine, fetch } = engineFor({ webgpu: LIBS.webgpu });
  await assert.rejects(engine.reload("fake-model"), WebGPUNotAvailableError);
  assert.deepEqual(fetch.calls, [BASE + "aae-chat-config.json"]);

  const asked = engineFor({ webgpu: LIBS.webgpu }, { device: "wasm" });
  await assert.rejects(asked.engine.reload("fake-model"), ArtifactFormatError);
  assert.deepEqual(asked.fetch.calls, [BASE + "aae-chat-config.json"]);
});

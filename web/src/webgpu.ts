/**
 * The WebGPU device a model runs on: the adapter, the features a model needs, the limits asked
 * for; and the choice between WebGPU and the CPU library (`wasm`) when WebGPU is missing.
 * (The native engine's twin is TVM's device choice in runtime/model_runtime.py.)
 */
import type { ChatConfig, TensorManifest } from "./artifact.js";
import { KV_PAGE_SIZE } from "./artifact.js";
import { ArtifactFormatError, FeatureNotSupportedError, ModelTooLargeError, WebGPUNotAvailableError } from "./errors.js";
import type { LibraryDevice } from "./model_runtime.js";

// ---------------------------------------------------------------------------------------------
// Device choice

/**
 * EngineConfig.device: "webgpu" or "wasm" (the CPU library: `compile --device wasm`) only, or
 * "auto" (the default): WebGPU when the page has it and it can run the model, else the CPU
 * library when the model folder has one.
 */
export type DevicePreference = "auto" | LibraryDevice;

/**
 * The libraries to try, in order, for a model whose chat config lists `modelLib` (device -> file).
 * `gpuPresent`: the page has a WebGPU entry point (navigator.gpu or EngineConfig.gpu).
 * Under "auto", a folder without a `wasm` library gives ["webgpu"] whatever the page has (so a
 * page without WebGPU gets WebGPU's own error), and a page without WebGPU skips straight to "wasm".
 * A preference the folder cannot serve is refused here, before anything large is fetched.
 */
export function deviceCandidates(preference: DevicePreference, modelLib: Readonly<Record<string, string>>, gpuPresent: boolean, modelId = "the model"): LibraryDevice[] {
  const hasWasm = Object.prototype.hasOwnProperty.call(modelLib, "wasm");
  if (preference === "webgpu") return ["webgpu"];
  if (preference === "wasm") {
    if (!hasWasm) {
      throw new ArtifactFormatError(
        `${modelId} has no CPU (wasm) library (its chat config's model_lib lists ${Object.keys(modelLib).join(", ") || "nothing"}): ` +
          "rebuild it with `aae-web build` (without --no-wasm), or load it on WebGPU.",
        { device: "wasm" },
      );
    }
    return ["wasm"];
  }
  if (preference !== "auto") throw new TypeError(`EngineConfig.device must be "auto", "webgpu" or "wasm", got ${JSON.stringify(preference)}`);
  if (!hasWasm) return ["webgpu"];
  return gpuPresent ? ["webgpu", "wasm"] : ["wasm"];
}

/**
 * Whether a failure to open WebGPU for a model means "try the CPU library instead": no WebGPU or
 * no adapter, a missing feature (shader-f16), or a model too large for the GPU's bindings.
 */
export function isWebGPUFallbackReason(e: unknown): boolean {
  return e instanceof WebGPUNotAvailableError || e instanceof FeatureNotSupportedError || e instanceof ModelTooLargeError;
}

export interface GPUSetup {
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

export async function requestDevice(gpu: GPU | undefined, requiredFeatures: readonly string[], adapterOptions?: GPURequestAdapterOptions): Promise<GPUSetup> {
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
// Device fit, before any weight is fetched

/** What a model asks of one storage binding: its largest tensor, and one layer's KV-cache pages. */
export function bindingNeeds(config: ChatConfig, manifest: TensorManifest, maxBatchSize: number): { tensor: { name: string; bytes: number }; kvLayerBytes: number; kvBytesPerToken: number } {
  let tensor = { name: "", bytes: 0 };
  for (const t of manifest.tensors) if (t.bytes > tensor.bytes) tensor = { name: t.name, bytes: t.bytes };
  const m = config.model_config;
  // The cache holds activations' dtype: f16 for the ...f16 schemes, f32 otherwise.
  const dtypeBytes = /f16/.test(config.quantization) ? 2 : 4;
  const kvBytesPerToken = 2 * m.num_key_value_heads * m.head_dim * dtypeBytes; // keys and values of one layer
  const pages = Math.ceil((config.context_window_size * maxBatchSize) / KV_PAGE_SIZE);
  return { tensor, kvLayerBytes: pages * KV_PAGE_SIZE * kvBytesPerToken, kvBytesPerToken };
}

/**
 * Refuse, with a ModelTooLargeError, a model that cannot run on a device with these limits:
 * a weight tensor or one layer's KV cache larger than a storage binding or a buffer may be.
 * A device without reported limits (a test double) is not checked.
 */
export function checkDeviceFit(limits: Partial<Record<string, number>> | undefined, config: ChatConfig, manifest: TensorManifest, maxBatchSize: number): void {
  const binding = Math.min(limits?.["maxStorageBufferBindingSize"] ?? Infinity, limits?.["maxBufferSize"] ?? Infinity);
  if (!Number.isFinite(binding)) return;
  const limit = (limits?.["maxStorageBufferBindingSize"] ?? Infinity) <= (limits?.["maxBufferSize"] ?? Infinity) ? "maxStorageBufferBindingSize" : "maxBufferSize";
  const mb = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
  const need = bindingNeeds(config, manifest, maxBatchSize);
  if (need.tensor.bytes > binding) {
    throw new ModelTooLargeError(
      `${config.model_id}: tensor ${need.tensor.name} needs ${mb(need.tensor.bytes)} in one storage binding, but this GPU's ${limit} is ${mb(binding)}. ` +
        `Use a build with fewer bits per weight (e.g. a q4 quantization instead of ${config.quantization}), or a smaller model.`,
      { limit, needBytes: need.tensor.bytes, limitBytes: binding, tensor: need.tensor.name, suggestion: "fewer bits per weight" },
    );
  }
  if (need.kvLayerBytes > binding) {
    const fit = Math.floor(binding / need.kvBytesPerToken / maxBatchSize / KV_PAGE_SIZE) * KV_PAGE_SIZE;
    throw new ModelTooLargeError(
      `${config.model_id}: its KV cache (${config.context_window_size} tokens x ${maxBatchSize} sequences) needs ${mb(need.kvLayerBytes)} per layer in one storage binding, ` +
        `but this GPU's ${limit} is ${mb(binding)}. Use a context window of at most ${fit} tokens (context_window_size), or fewer sequences (maxBatchSize).`,
      { limit, needBytes: need.kvLayerBytes, limitBytes: binding, suggestion: `context_window_size <= ${fit}`, fitContextWindow: fit },
    );
  }
}


/**
 * The WebGPU device a model runs on: the adapter, the features a model needs, the limits asked
 * for. (The native engine's twin is TVM's device choice in runtime/model_runtime.py.)
 */
import { FeatureNotSupportedError, WebGPUNotAvailableError } from "./errors.js";

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

/**
 * The model artifact contract (ARTIFACT.md), browser side.
 *
 * Every constant (file names, format version, page size, builtin names) comes from
 * artifact_format.json, a build-time copy of compiler/artifact_format.json, so the compiler and
 * this runtime read one source of truth. This module also validates what it parses: a malformed
 * or stale model folder fails here with a message naming the file and field, instead of as a
 * shape error deep inside a GPU kernel.
 */
import FORMAT from "./artifact_format.json" with { type: "json" };
import { ArtifactFormatError } from "./errors.js";

export const FORMAT_VERSION: number = FORMAT.format_version;
export const CHAT_CONFIG_FILE: string = FORMAT.files.chat_config;
export const MANIFEST_FILE: string = FORMAT.files.manifest;
export const TOKENIZER_FILE: string = FORMAT.files.tokenizer;
export const TOKENIZER_CONFIG_FILE: string = FORMAT.files.tokenizer_config;
export const TENSOR_ALIGNMENT: number = FORMAT.tensor_alignment;
export const KV_PAGE_SIZE: number = FORMAT.kv_page_size;
/** TVM 0.27's WebGPU paged prefill over cached keys is exact only below this head_dim (artifact_format.json). */
export const WEBGPU_EXACT_PAGED_PREFILL_BELOW_HEAD_DIM: number = FORMAT.webgpu_exact_paged_prefill_below_head_dim;
export const DTYPE_BYTES: Readonly<Record<string, number>> = FORMAT.dtype_bytes;
export const KV_BUILTINS = FORMAT.kv_builtins;
/** Devices a model library is built for (model_lib keys) -> the library's file extension. */
export const MODEL_LIB_DEVICES: Readonly<Record<string, string>> = FORMAT.model_lib_devices;

/** Compiled VM function names (ARTIFACT.md, "Compiled functions"). */
export const VM_FUNCTIONS = {
  embed: "embed",
  prefill: "prefill",
  decode: "decode",
  batchDecode: "batch_decode",
  createKVCache: "create_tir_paged_kv_cache",
} as const;

export interface ModelConfig {
  hidden_size: number;
  vocab_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  [key: string]: unknown;
}

export interface SamplingDefaults {
  temperature: number;
  top_p: number;
  presence_penalty: number;
  frequency_penalty: number;
  repetition_penalty: number;
}

/** aae-chat-config.json */
export interface ChatConfig {
  format_version: number;
  model_id: string;
  model_type: string;
  quantization: string;
  model_config: ModelConfig;
  context_window_size: number;
  prefill_chunk_size: number;
  sliding_window_size: number;
  max_batch_size: number;
  tokenizer_files: string[];
  chat_template: string | null;
  /** the conv_templates.json name chat_template came from; null or absent: the model's own */
  conv_template?: string | null;
  /** recorded as in MLC-LLM; absent means 1, and only 1 loads (builds are single-device) */
  tensor_parallel_shards?: number;
  bos_token_id: number | null;
  add_bos_token: boolean;
  eos_token_ids: number[];
  pad_token_id?: number | null;
  sampling: SamplingDefaults;
  model_lib: Record<string, string>;
  required_features: string[];
  manifest: string;
}

export interface ShardEntry {
  file: string;
  bytes: number;
  sha256: string;
}

export interface TensorEntry {
  name: string;
  shape: number[];
  dtype: string;
  shard: number;
  byte_offset: number;
  bytes: number;
}

/** tensor-manifest.json */
export interface TensorManifest {
  format_version: number;
  quantization: string;
  total_bytes: number;
  shards: ShardEntry[];
  tensors: TensorEntry[];
}

type Json = Record<string, unknown>;
type MessageKey = keyof typeof FORMAT.messages;

/**
 * The contract's error text (artifact_format.json "messages", the same the native engine gives),
 * prefixed with the file. Values of any JSON type are passed through `show`.
 */
function fail(source: string, key: MessageKey, values: Record<string, string | number> = {}): never {
  const text = FORMAT.messages[key].replace(/\{(\w+)\}/g, (m, name: string) => (name in values ? String(values[name]) : m));
  throw new ArtifactFormatError(`${source}: ${text}`, { source });
}

/** A value as JSON text, for messages ("missing" when absent). */
function show(v: unknown): string {
  return v === undefined ? "missing" : JSON.stringify(v);
}

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v);
}

function isNonNegInt(v: unknown): v is number {
  return isInt(v) && v >= 0;
}

function requireKeys(obj: Json, keys: readonly string[], what: string, source: string): void {
  const missing = keys.filter((k) => !Object.prototype.hasOwnProperty.call(obj, k));
  if (missing.length) fail(source, "lacks", { what, keys: missing.join(", ") });
}

/** A JSON object of this format version with every required key, or the contract's error. */
function checkDocument(raw: unknown, required: readonly string[], what: string, source: string): asserts raw is Json {
  if (!isObject(raw)) fail(source, "not_object");
  const v = raw["format_version"];
  if (v !== FORMAT_VERSION) fail(source, "format_version", { got: show(v), expected: FORMAT_VERSION });
  requireKeys(raw, required, what, source);
}

/**
 * A file name from a model's JSON must stay inside the model folder: relative, no "..", no
 * scheme. Otherwise a manifest could point the loader at another origin or path.
 */
export function checkRelativePath(file: unknown, what: string, source: string): string {
  if (typeof file !== "string" || file.length === 0) fail(source, "non_empty_string", { what });
  if (/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(file) || file.startsWith("/") || file.startsWith("\\")) {
    fail(source, "relative_path", { what, file: show(file) });
  }
  if (file.split(/[\\/]/).some((seg) => seg === ".." || seg === ".")) fail(source, "dot_segments", { what, file: show(file) });
  return file;
}

export function parseChatConfig(raw: unknown, source = CHAT_CONFIG_FILE): ChatConfig {
  checkDocument(raw, FORMAT.chat_config_required, "chat config", source);
  const c = raw as unknown as ChatConfig;
  if (typeof c.model_id !== "string" || !c.model_id) fail(source, "non_empty_string", { what: "model_id" });
  for (const k of ["context_window_size", "prefill_chunk_size", "max_batch_size"] as const) {
    if (!isInt(c[k]) || c[k] < 1) fail(source, "positive_integer", { what: k });
  }
  if (!isInt(c.sliding_window_size)) fail(source, "sliding_window_size");
  if (!isObject(c.model_config)) fail(source, "object", { what: "model_config" });
  for (const k of ["hidden_size", "vocab_size"] as const) {
    if (!isInt(c.model_config[k]) || c.model_config[k] < 1) fail(source, "positive_integer", { what: `model_config.${k}` });
  }
  if (!Array.isArray(c.eos_token_ids) || !c.eos_token_ids.every(isNonNegInt)) fail(source, "token_ids", { what: "eos_token_ids" });
  if (c.bos_token_id !== null && !isNonNegInt(c.bos_token_id)) fail(source, "token_id_or_null", { what: "bos_token_id" });
  if (c.chat_template !== null && typeof c.chat_template !== "string") fail(source, "string_or_null", { what: "chat_template" });
  if (!Array.isArray(c.required_features) || !c.required_features.every((f) => typeof f === "string")) {
    fail(source, "strings", { what: "required_features" });
  }
  if (!isObject(c.model_lib)) fail(source, "model_lib");
  for (const [device, file] of Object.entries(c.model_lib)) {
    if (!Object.prototype.hasOwnProperty.call(MODEL_LIB_DEVICES, device)) {
      fail(source, "model_lib_device", { device, devices: Object.keys(MODEL_LIB_DEVICES).join(", ") });
    }
    checkRelativePath(file, `model_lib.${device}`, source);
  }
  checkRelativePath(c.manifest, "manifest", source);
  if (!Array.isArray(c.tokenizer_files)) fail(source, "array", { what: "tokenizer_files" });
  c.tokenizer_files.forEach((f, i) => checkRelativePath(f, `tokenizer_files[${i}]`, source));
  if (!isObject(c.sampling)) fail(source, "object", { what: "sampling" });
  checkSingleDevice(c, source);
  return c;
}

/**
 * Every AAE build runs on one device, so a model configured for tensor parallelism cannot load
 * as configured; the message is the contract's, the same the native engine gives.
 */
function checkSingleDevice(c: ChatConfig, source: string): void {
  // Only absence means the default (as in Python): an explicit null is malformed.
  const shards: unknown = c.tensor_parallel_shards === undefined ? FORMAT.chat_config_optional.tensor_parallel_shards : c.tensor_parallel_shards;
  if (!isInt(shards) || shards < 1) fail(source, "tensor_parallel_shards_type", { got: show(shards) });
  if (shards !== 1) fail(source, "tensor_parallel_shards", { shards });
}

/** Bytes per element of a dtype the contract knows (own keys only: not "constructor"). */
export function dtypeBytes(dtype: unknown): number | undefined {
  return typeof dtype === "string" && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, dtype) ? DTYPE_BYTES[dtype] : undefined;
}

export function parseManifest(raw: unknown, source = MANIFEST_FILE): TensorManifest {
  checkDocument(raw, FORMAT.manifest_required, "manifest", source);
  const m = raw as unknown as TensorManifest;
  if (!Array.isArray(m.shards)) fail(source, "array", { what: "shards" });
  if (!Array.isArray(m.tensors)) fail(source, "array", { what: "tensors" });

  let sum = 0;
  m.shards.forEach((s, i) => {
    const where = `shards[${i}]`;
    if (!isObject(s)) fail(source, "object", { what: where });
    requireKeys(s, FORMAT.shard_required, where, source);
    checkRelativePath(s.file, `${where}.file`, source);
    if (!isNonNegInt(s.bytes)) fail(source, "non_negative_integer", { what: `${where}.bytes` });
    if (typeof s.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(s.sha256)) fail(source, "sha256", { what: `${where}.sha256` });
    sum += s.bytes;
  });
  if (m.total_bytes !== sum) fail(source, "total_bytes", { got: show(m.total_bytes), sum });

  const names = new Set<string>();
  m.tensors.forEach((t, i) => {
    const what = `tensors[${i}]`;
    if (!isObject(t)) fail(source, "object", { what });
    requireKeys(t, FORMAT.tensor_required, what, source);
    const name = t.name;
    if (typeof name !== "string") fail(source, "string", { what: `${what}.name` });
    if (names.has(name)) fail(source, "duplicate_tensor", { what, name });
    names.add(name);
    if (!Array.isArray(t.shape) || !t.shape.every(isNonNegInt)) fail(source, "shape", { what, name });
    const size = dtypeBytes(t.dtype);
    if (size === undefined) fail(source, "dtype", { what, name, dtype: show(t.dtype) });
    if (!isNonNegInt(t.shard) || t.shard >= m.shards.length) fail(source, "shard_index", { what, name, shard: show(t.shard) });
    if (!isNonNegInt(t.byte_offset) || t.byte_offset % TENSOR_ALIGNMENT !== 0) fail(source, "byte_offset", { what, name, alignment: TENSOR_ALIGNMENT });
    const expected = t.shape.reduce((a, b) => a * b, 1) * size;
    if (t.bytes !== expected) fail(source, "tensor_bytes", { what, name, got: show(t.bytes), expected });
    const shard = m.shards[t.shard]!;
    const end = t.byte_offset + t.bytes;
    if (end > shard.bytes) fail(source, "past_shard_end", { what, name, end, shard_file: shard.file, size: shard.bytes });
  });
  return m;
}

/** The model library file for a device: chat config's model_lib, else the contract's pattern. */
export function modelLibFile(config: ChatConfig, device = "webgpu"): string {
  const file = config.model_lib[device];
  if (file !== undefined) return file;
  return FORMAT.files.model_lib_pattern
    .replace("{model_id}", config.model_id)
    .replace("{device}", device)
    .replace("{ext}", MODEL_LIB_DEVICES[device] ?? "so");
}

/** Base URL of a model folder, always with a trailing slash so relative files resolve inside it. */
export function normalizeBaseUrl(modelUrl: string, relativeTo?: string): string {
  const base = relativeTo ?? (typeof location !== "undefined" ? location.href : undefined);
  const url = base ? new URL(modelUrl, base) : new URL(modelUrl);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  url.search = "";
  url.hash = "";
  return url.href;
}

export function fileUrl(baseUrl: string, file: string): string {
  return new URL(file, baseUrl).href;
}

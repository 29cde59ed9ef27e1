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
export const DTYPE_BYTES: Readonly<Record<string, number>> = FORMAT.dtype_bytes;
export const KV_BUILTINS = FORMAT.kv_builtins;

/** Compiled VM function names (ARTIFACT.md, "Compiled functions"). */
export const VM_FUNCTIONS = {
  embed: "embed",
  prefill: "prefill",
  decode: "decode",
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

function fail(source: string, message: string): never {
  throw new ArtifactFormatError(`${source}: ${message}`, { source });
}

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function requireKeys(obj: Json, keys: readonly string[], what: string, source: string): void {
  const missing = keys.filter((k) => !(k in obj));
  if (missing.length) fail(source, `${what} lacks ${missing.join(", ")}; rebuild the model folder`);
}

function checkVersion(obj: Json, source: string): void {
  const v = obj["format_version"];
  if (v !== FORMAT_VERSION) {
    fail(
      source,
      `format_version ${JSON.stringify(v)}, but this engine reads format ${FORMAT_VERSION}; ` +
        `rebuild the model with a matching sphere_aae (or upgrade the web package)`,
    );
  }
}

/**
 * A file name from a model's JSON must stay inside the model folder: relative, no "..", no
 * scheme. Otherwise a manifest could point the loader at another origin or path.
 */
export function checkRelativePath(file: unknown, what: string, source: string): string {
  if (typeof file !== "string" || file.length === 0) fail(source, `${what} must be a non-empty string`);
  if (/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(file) || file.startsWith("/") || file.startsWith("\\")) {
    fail(source, `${what} ${JSON.stringify(file)} must be a path relative to the model folder`);
  }
  if (file.split(/[\\/]/).some((seg) => seg === ".." || seg === ".")) {
    fail(source, `${what} ${JSON.stringify(file)} must not contain "." or ".." segments`);
  }
  return file;
}

export function parseChatConfig(raw: unknown, source = CHAT_CONFIG_FILE): ChatConfig {
  if (!isObject(raw)) fail(source, "expected a JSON object");
  checkVersion(raw, source);
  requireKeys(raw, FORMAT.chat_config_required, "chat config", source);
  const c = raw as unknown as ChatConfig;
  if (typeof c.model_id !== "string" || !c.model_id) fail(source, "model_id must be a non-empty string");
  for (const k of ["context_window_size", "prefill_chunk_size", "max_batch_size"] as const) {
    if (!isNonNegInt(c[k]) || c[k] < 1) fail(source, `${k} must be a positive integer`);
  }
  if (typeof c.sliding_window_size !== "number" || !Number.isInteger(c.sliding_window_size)) {
    fail(source, "sliding_window_size must be an integer (-1 for off)");
  }
  if (!isObject(c.model_config)) fail(source, "model_config must be an object");
  for (const k of ["hidden_size", "vocab_size"] as const) {
    if (!isNonNegInt(c.model_config[k]) || c.model_config[k] < 1) fail(source, `model_config.${k} must be a positive integer`);
  }
  if (!Array.isArray(c.eos_token_ids) || !c.eos_token_ids.every(isNonNegInt)) {
    fail(source, "eos_token_ids must be an array of token ids");
  }
  if (c.bos_token_id !== null && !isNonNegInt(c.bos_token_id)) fail(source, "bos_token_id must be a token id or null");
  if (c.chat_template !== null && typeof c.chat_template !== "string") fail(source, "chat_template must be a string or null");
  if (!Array.isArray(c.required_features) || !c.required_features.every((f) => typeof f === "string")) {
    fail(source, "required_features must be an array of strings");
  }
  if (!isObject(c.model_lib)) fail(source, "model_lib must be an object mapping device to file");
  for (const [device, file] of Object.entries(c.model_lib)) checkRelativePath(file, `model_lib.${device}`, source);
  checkRelativePath(c.manifest, "manifest", source);
  if (!Array.isArray(c.tokenizer_files)) fail(source, "tokenizer_files must be an array");
  c.tokenizer_files.forEach((f, i) => checkRelativePath(f, `tokenizer_files[${i}]`, source));
  if (!isObject(c.sampling)) fail(source, "sampling must be an object");
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
  if (!isNonNegInt(shards) || shards < 1) {
    fail(source, `tensor_parallel_shards must be an integer >= 1, got ${JSON.stringify(shards)}`);
  }
  if (shards !== 1) fail(source, FORMAT.messages.tensor_parallel_shards.replace("{shards}", String(shards)));
}

export function dtypeBytes(dtype: string): number | undefined {
  return DTYPE_BYTES[dtype];
}

export function parseManifest(raw: unknown, source = MANIFEST_FILE): TensorManifest {
  if (!isObject(raw)) fail(source, "expected a JSON object");
  checkVersion(raw, source);
  requireKeys(raw, FORMAT.manifest_required, "manifest", source);
  const m = raw as unknown as TensorManifest;
  if (!Array.isArray(m.shards)) fail(source, "shards must be an array");
  if (!Array.isArray(m.tensors)) fail(source, "tensors must be an array");

  let sum = 0;
  m.shards.forEach((s, i) => {
    const where = `shards[${i}]`;
    if (!isObject(s)) fail(source, `${where} must be an object`);
    requireKeys(s as unknown as Json, FORMAT.shard_required, where, source);
    checkRelativePath(s.file, `${where}.file`, source);
    if (!isNonNegInt(s.bytes)) fail(source, `${where}.bytes must be a non-negative integer`);
    if (typeof s.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(s.sha256)) {
      fail(source, `${where}.sha256 must be 64 lowercase hex digits`);
    }
    sum += s.bytes;
  });
  if (m.total_bytes !== sum) fail(source, `total_bytes is ${m.total_bytes} but the shards add up to ${sum}`);

  const names = new Set<string>();
  m.tensors.forEach((t, i) => {
    const where = `tensors[${i}]`;
    if (!isObject(t)) fail(source, `${where} must be an object`);
    requireKeys(t as unknown as Json, FORMAT.tensor_required, where, source);
    if (typeof t.name !== "string") fail(source, `${where}.name must be a string`);
    if (names.has(t.name)) fail(source, `${where}: duplicate tensor name ${t.name}`);
    names.add(t.name);
    if (!Array.isArray(t.shape) || !t.shape.every(isNonNegInt)) fail(source, `${where} (${t.name}).shape must be an array of non-negative integers`);
    const size = dtypeBytes(t.dtype);
    if (size === undefined) fail(source, `${where} (${t.name}): unknown dtype ${JSON.stringify(t.dtype)}`);
    if (!isNonNegInt(t.shard) || t.shard >= m.shards.length) fail(source, `${where} (${t.name}).shard ${t.shard} is not a shard index`);
    if (!isNonNegInt(t.byte_offset) || t.byte_offset % TENSOR_ALIGNMENT !== 0) {
      fail(source, `${where} (${t.name}).byte_offset must be a multiple of ${TENSOR_ALIGNMENT}`);
    }
    const expected = t.shape.reduce((a, b) => a * b, 1) * size;
    if (t.bytes !== expected) fail(source, `${where} (${t.name}).bytes is ${t.bytes}, but shape x dtype gives ${expected}`);
    const shard = m.shards[t.shard]!;
    if (t.byte_offset + t.bytes > shard.bytes) {
      fail(source, `${where} (${t.name}) ends at byte ${t.byte_offset + t.bytes}, past the end of ${shard.file} (${shard.bytes} bytes)`);
    }
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
    .replace("{ext}", device === "webgpu" ? "wasm" : "so");
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

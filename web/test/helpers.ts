/** Fakes shared by the tests: a tiny tokenizer, a scripted model backend, a Cache API, a fetch. */
import { createHash } from "node:crypto";
import { parseManifest, type ChatConfig, type TensorManifest } from "../src/artifact.js";
import type { ArtifactLoader, CacheLike, CacheStorageLike } from "../src/cache.js";
import { Engine, type EngineConfig } from "../src/engine.js";
import type { ForwardBackend } from "../src/model_runtime.js";
import { ChatTemplate } from "../src/template.js";
import { TextTokenizer } from "../src/tokenizer.js";

// ---------------------------------------------------------------------------------------------
// Tokenizer: word-level, every word / punctuation / space is one token.

export const WORDS = ["hello", "world", "the", "cat", "sat", "on", "mat", "STOP", "a", "b", "c", ",", ".", " ", "user", "assistant", ":", "\n"];
export const VOCAB: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 };
WORDS.forEach((w, i) => (VOCAB[w] = i + 3));
export const VOCAB_SIZE = 3 + WORDS.length;

const special = (id: number, content: string) => ({ id, content, special: true, single_word: false, lstrip: false, rstrip: false, normalized: false });
export const TOKENIZER_JSON = {
  version: "1.0",
  added_tokens: [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
  normalizer: null,
  pre_tokenizer: { type: "Split", pattern: { Regex: "\\w+|[^\\w]" }, behavior: "Isolated", invert: false },
  post_processor: null,
  decoder: { type: "Fuse" },
  model: { type: "WordLevel", vocab: VOCAB, unk_token: "<unk>" },
};
export const TOKENIZER_CONFIG = { bos_token: "<s>", eos_token: "</s>" };

export function makeTokenizer(): TextTokenizer {
  return new TextTokenizer(TOKENIZER_JSON, TOKENIZER_CONFIG, { bos: 1, eos: [2] });
}

export function ids(text: string): number[] {
  return makeTokenizer().encode(text);
}

// ---------------------------------------------------------------------------------------------
// Chat config

export const SIMPLE_TEMPLATE =
  "{% for m in messages %}{{ m.role }}:{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

export function chatConfig(over: Partial<ChatConfig> = {}): ChatConfig {
  return {
    format_version: 1,
    model_id: "fake-model",
    model_type: "llama",
    quantization: "q0f32",
    model_config: { hidden_size: 8, vocab_size: VOCAB_SIZE, num_hidden_layers: 1, num_attention_heads: 1, num_key_value_heads: 1, head_dim: 8 },
    context_window_size: 64,
    prefill_chunk_size: 8,
    sliding_window_size: -1,
    max_batch_size: 1,
    tokenizer_files: ["tokenizer.json", "tokenizer_config.json"],
    chat_template: SIMPLE_TEMPLATE,
    bos_token_id: 1,
    add_bos_token: true,
    eos_token_ids: [2],
    pad_token_id: 0,
    sampling: { temperature: 0, top_p: 1, presence_penalty: 0, frequency_penalty: 0, repetition_penalty: 1 },
    model_lib: { webgpu: "fake-model-webgpu.wasm" },
    required_features: [],
    manifest: "tensor-manifest.json",
    ...over,
  };
}

// ---------------------------------------------------------------------------------------------
// Backend: a "model" that deterministically continues with a scripted reply.

export interface FakeCall {
  op: "add" | "remove" | "prefill" | "decode" | "popN" | "reset";
  seqId?: number;
  seqIds?: number[];
  tokens?: number[];
  wantLogits?: boolean;
  n?: number;
}

/** Pages of the fake KV cache (16 tokens each), so tests can see sequences being freed. */
export const FAKE_KV_PAGES = 1024;

/**
 * Emits `reply` token by token after whatever prompt it is given (position in the reply = number
 * of tokens decoded since the sequence's last prefill), then EOS. `seqs` mirrors what a paged KV
 * cache would hold per sequence; `seq` is the one used last.
 */
export class FakeBackend implements ForwardBackend {
  readonly vocabSize: number;
  exactPagedPrefill = true;
  readonly calls: FakeCall[] = [];
  readonly seqs = new Map<number, { tokens: number[]; pos: number }>();
  private lastSeq = -1;
  reply: number[];
  delayMs = 0;
  supportsPopN = true;
  /** Flat logits (every token equally likely) instead of a peaked script: for sampling tests. */
  uniform = false;
  disposed = false;

  constructor(reply: number[], vocabSize = VOCAB_SIZE) {
    this.reply = reply;
    this.vocabSize = vocabSize;
  }

  get seq(): number[] {
    return this.seqs.get(this.lastSeq)?.tokens ?? [];
  }

  private get(seqId: number): { tokens: number[]; pos: number } {
    const s = this.seqs.get(seqId);
    if (!s) throw new Error(`fake backend: no sequence ${seqId}`);
    this.lastSeq = seqId;
    return s;
  }

  private logits(pos: number): Float32Array {
    const l = new Float32Array(this.vocabSize);
    if (this.uniform) return l;
    const next = pos < this.reply.length ? this.reply[pos]! : 2;
    l[next] = 10;
    return l;
  }

  private async wait(): Promise<void> {
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    else await Promise.resolve();
  }

  addSequence(seqId: number): void {
    this.calls.push({ op: "add", seqId });
    this.seqs.set(seqId, { tokens: [], pos: 0 });
  }

  removeSequence(seqId: number): void {
    this.calls.push({ op: "remove", seqId });
    this.seqs.delete(seqId);
  }

  async prefill(seqId: number, tokens: readonly number[], wantLogits: boolean): Promise<Float32Array | null> {
    this.calls.push({ op: "prefill", seqId, tokens: [...tokens], wantLogits });
    const s = this.get(seqId);
    s.tokens.push(...tokens);
    s.pos = 0;
    await this.wait();
    return wantLogits ? this.logits(0) : null;
  }

  async decode(seqIds: readonly number[], tokens: readonly number[]): Promise<Float32Array[]> {
    this.calls.push({ op: "decode", seqIds: [...seqIds], tokens: [...tokens] });
    const rows = seqIds.map((id, i) => {
      const s = this.get(id);
      s.tokens.push(tokens[i]!);
      return this.logits(++s.pos);
    });
    await this.wait();
    return rows;
  }

  popN(seqId: number, n: number): boolean {
    if (!this.supportsPopN) return false;
    this.calls.push({ op: "popN", seqId, n });
    this.get(seqId).tokens.length -= n;
    return true;
  }

  clear(): void {
    this.calls.push({ op: "reset" });
    this.seqs.clear();
  }

  freePages(): number {
    let used = 0;
    for (const s of this.seqs.values()) used += Math.ceil(s.tokens.length / 16);
    return FAKE_KV_PAGES - used;
  }

  statsText(): string {
    return "";
  }

  dispose(): void {
    this.disposed = true;
  }
}

/**
 * An engine with the fake model installed. `tokenizerJson`: another word-level vocabulary
 * (ids 0-2 still <unk>, <s>, </s>); `engineConfig`: options of the engine.
 */
export function fakeEngine(
  reply: string | number[],
  over: Partial<ChatConfig> = {},
  { tokenizerJson = TOKENIZER_JSON, engineConfig = {} }: { tokenizerJson?: typeof TOKENIZER_JSON; engineConfig?: EngineConfig } = {},
): { engine: Engine; backend: FakeBackend } {
  const vocabSize = Object.keys(tokenizerJson.model.vocab).length;
  const base = chatConfig(over);
  const config = { ...base, model_config: { ...base.model_config, vocab_size: vocabSize } };
  const tokenizer = new TextTokenizer(tokenizerJson, TOKENIZER_CONFIG, { bos: 1, eos: [2] });
  const backend = new FakeBackend(typeof reply === "string" ? tokenizer.encode(reply) : reply, vocabSize);
  const engine = new Engine({ logger: () => {}, ...engineConfig });
  engine.installModel({
    modelId: config.model_id,
    config,
    tokenizer,
    template: new ChatTemplate(config.chat_template, { bos_token: "<s>", eos_token: "</s>" }),
    backend,
    tokenizerJson,
  });
  return { engine, backend };
}

// ---------------------------------------------------------------------------------------------
// Cache API fake: entries are kept as bytes + headers; every match builds a fresh Response.

export class FakeCache implements CacheLike {
  entries = new Map<string, { body: Uint8Array; headers: Record<string, string> }>();
  putError: unknown;

  async match(key: string): Promise<Response | undefined> {
    const e = this.entries.get(key);
    return e ? new Response(e.body.slice() as BodyInit, { headers: e.headers }) : undefined;
  }
  async put(key: string, response: Response): Promise<void> {
    if (this.putError) throw this.putError;
    const headers: Record<string, string> = {};
    response.headers.forEach((v, k) => (headers[k] = v));
    this.entries.set(key, { body: new Uint8Array(await response.arrayBuffer()), headers });
  }
  async delete(key: string): Promise<boolean> {
    return this.entries.delete(key);
  }
  async keys(): Promise<ReadonlyArray<{ url: string }>> {
    return [...this.entries.keys()].map((url) => ({ url }));
  }
}

export class FakeCacheStorage implements CacheStorageLike {
  caches = new Map<string, FakeCache>();
  async open(name: string): Promise<FakeCache> {
    let c = this.caches.get(name);
    if (!c) this.caches.set(name, (c = new FakeCache()));
    return c;
  }
}

// ---------------------------------------------------------------------------------------------
// fetch fake

export type Route = Uint8Array | ((attempt: number) => Response | Promise<Response>);

export class FakeFetch {
  routes = new Map<string, Route>();
  calls: string[] = [];
  inFlight = 0;
  maxInFlight = 0;
  delayMs = 0;

  readonly fetch = async (input: string | URL | Request): Promise<Response> => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    this.calls.push(url);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
      const route = this.routes.get(url);
      if (!route) return new Response("not found", { status: 404 });
      if (route instanceof Uint8Array) return new Response(route.slice() as BodyInit, { status: 200 });
      return await route(this.calls.filter((c) => c === url).length);
    } finally {
      this.inFlight--;
    }
  };

  count(url: string): number {
    return this.calls.filter((c) => c === url).length;
  }
}

export function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** A model folder in memory: config, manifest, tokenizer, wasm and `nShards` shards. */
export function fakeModelFolder(base: string, nShards: number, shardBytes = 256): { files: Map<string, Uint8Array>; manifest: TensorManifest; shards: Uint8Array[] } {
  const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
  const shards: Uint8Array[] = [];
  const manifest: TensorManifest = { format_version: 1, quantization: "q0f32", total_bytes: nShards * shardBytes, shards: [], tensors: [] };
  for (let i = 0; i < nShards; i++) {
    const b = new Uint8Array(shardBytes);
    for (let j = 0; j < shardBytes; j++) b[j] = (i * 31 + j * 7) & 0xff;
    shards.push(b);
    const file = `params/shard-${String(i).padStart(5, "0")}.bin`;
    manifest.shards.push({ file, bytes: shardBytes, sha256: sha256(b) });
    manifest.tensors.push({ name: `w${i}`, shape: [shardBytes / 4], dtype: "float32", shard: i, byte_offset: 0, bytes: shardBytes });
  }
  const files = new Map<string, Uint8Array>();
  files.set(base + "aae-chat-config.json", enc(chatConfig()));
  files.set(base + "tensor-manifest.json", enc(manifest));
  files.set(base + "tokenizer.json", enc(TOKENIZER_JSON));
  files.set(base + "tokenizer_config.json", enc(TOKENIZER_CONFIG));
  files.set(base + "fake-model-webgpu.wasm", new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
  manifest.shards.forEach((s, i) => files.set(base + s.file, shards[i]!));
  return { files, manifest, shards };
}

/** What a model load does with the loader: JSON files, the wasm, every shard of the fake folder at `base`. */
export async function loadModel(loader: ArtifactLoader, base = "http://127.0.0.1:8080/models/fake-model/"): Promise<Uint8Array[]> {
  await loader.fetchJson(base + "aae-chat-config.json");
  const manifest = parseManifest(await loader.fetchJson(base + "tensor-manifest.json"));
  await loader.fetchJson(base + "tokenizer.json");
  await loader.fetchJson(base + "tokenizer_config.json");
  await loader.fetchBytes(base + "fake-model-webgpu.wasm", {});
  const got: Uint8Array[] = [];
  await loader.loadShards(base, manifest, (i, bytes) => void (got[i] = bytes.slice()));
  return got;
}

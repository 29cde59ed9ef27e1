/**
 * The forward backend: one compiled model on one device with one paged KV cache shared by its
 * sequences. Twin of compiler/runtime/model_runtime.py.
 *
 * Two layers, so the tests can fake the model and keep the rules:
 *  - `ForwardBackend`: the compiled functions themselves (one forward pass per call, sequences
 *    named by id). `TVMBackend` runs them with tvmjs on WebGPU (a `webgpu` library) or on the
 *    CPU (a `wasm` library: LLVM wasm32 kernels, no GPU); tests script a fake.
 *  - `ModelRuntime`: what model_runtime.py's ModelRuntime does around them: sequence ids and
 *    lengths, the context-window bound, prefill chunking (and its sliding-window rule), decode
 *    batches of at most max_batch_size.
 */
import tvmjs from "@mlc-ai/web-runtime";
import type { Instance, PackedFunc, Tensor, TVMObject, VirtualMachine } from "@mlc-ai/web-runtime";
import { ComputeThreads, prepareCpuLibrary } from "./wasm_threads.js";

import { KV_BUILTINS, KV_PAGE_SIZE, VM_FUNCTIONS, WEBGPU_EXACT_PAGED_PREFILL_BELOW_HEAD_DIM, type ChatConfig, type TensorManifest } from "./artifact.js";
import type { ArtifactLoader } from "./cache.js";
import { ArtifactFormatError, ContextWindowExceededError, EngineNotLoadedError } from "./errors.js";

// ---------------------------------------------------------------------------------------------
// Sliding-window rules (ARTIFACT.md, "Sliding-window models")
//
// The window is compiled into the kernels of the layers that have one (Gemma 2/3 alternate
// sliding and global layers; Mistral slides on all). The KV cache keeps every token, so it is
// created without TVM's evicting window (support_sliding_window = 0, never
// enable_sliding_window), the context window bounds a sequence as for any model, and popN may
// roll the cache back at any length. What remains is the prefill chunk rule below.

/**
 * Length of the next prefill chunk for a sequence that already holds `seqLen` tokens.
 *
 * TVM 0.27's windowed prefill kernels are exact only while no key of the chunk's queries has
 * left the window (its within-chunk kernel ignores the window). So while the sequence is shorter
 * than the window W, a chunk may only fill it up to W; past the edge, tokens go in one at a time
 * through the decode-shaped path, which is exact (only long prompts on sliding-window models ever
 * get there). Without a window (`slidingWindowSize` <= 0) the chunk is simply `prefillChunkSize`.
 */
export function prefillChunkLength(seqLen: number, prefillChunkSize: number, slidingWindowSize: number): number {
  if (slidingWindowSize <= 0) return prefillChunkSize;
  if (seqLen >= slidingWindowSize) return 1;
  return Math.min(prefillChunkSize, slidingWindowSize - seqLen);
}

/**
 * `create_tir_paged_kv_cache`'s arguments, in order (ARTIFACT.md): room for every sequence's whole
 * context window, and TVM's evicting sliding window off for every model.
 */
export function kvCacheArgs(contextWindowSize: number, prefillChunkSize: number, maxBatchSize: number): number[] {
  return [
    maxBatchSize,
    contextWindowSize * maxBatchSize, // max_total_seq_len: the cache keeps every token
    prefillChunkSize,
    KV_PAGE_SIZE,
    0, // support_sliding_window: windows live in the kernels
  ];
}


// ---------------------------------------------------------------------------------------------
// The compiled functions

export interface ForwardBackend {
  readonly vocabSize: number;
  /**
   * Whether a chunk of several tokens appended to a non-empty sequence is computed exactly
   * (artifact_format.json webgpu_exact_paged_prefill_below_head_dim). When not, the runtime
   * appends to a non-empty sequence one token at a time and the scheduler reuses less.
   */
  readonly exactPagedPrefill: boolean;
  addSequence(seqId: number): void;
  removeSequence(seqId: number): void;
  /** Drop the sequence's last n tokens; false when the runtime cannot (no prefix reuse then). */
  popN(seqId: number, n: number): boolean;
  /** Free every sequence. */
  clear(): void;
  /**
   * Append `tokens` (one chunk, at most prefill_chunk_size) to the sequence. Returns the logits of
   * the last position when `wantLogits`, else null (intermediate chunks skip the GPU->CPU copy).
   */
  prefill(seqId: number, tokens: readonly number[], wantLogits: boolean): Promise<Float32Array | null>;
  /** Append one token to each sequence (one batched pass); their logits, in order. */
  decode(seqIds: readonly number[], tokens: readonly number[]): Promise<Float32Array[]>;
  /** Free pages of the KV cache, when the runtime can tell (tests check that freeing works). */
  freePages(): number | undefined;
  statsText(): string;
  dispose(): void;
}

// ---------------------------------------------------------------------------------------------
// ModelRuntime (model_runtime.py's ModelRuntime)

export interface RuntimeSizes {
  contextWindowSize: number;
  prefillChunkSize: number;
  maxBatchSize: number;
  slidingWindowSize: number;
}

export class ModelRuntime {
  readonly backend: ForwardBackend;
  readonly sizes: RuntimeSizes;
  private readonly lengths = new Map<number, number>();
  private nextSeq = 0;

  constructor(backend: ForwardBackend, sizes: RuntimeSizes) {
    this.backend = backend;
    this.sizes = sizes;
  }

  get vocabSize(): number {
    return this.backend.vocabSize;
  }

  addSequence(): number {
    const seqId = this.nextSeq++;
    this.backend.addSequence(seqId);
    this.lengths.set(seqId, 0);
    return seqId;
  }

  removeSequence(seqId: number): void {
    if (!this.lengths.has(seqId)) return;
    this.lengths.delete(seqId);
    this.backend.removeSequence(seqId);
  }

  get activeSequences(): number[] {
    return [...this.lengths.keys()];
  }

  sequenceLength(seqId: number): number {
    const n = this.lengths.get(seqId);
    if (n === undefined) throw new Error(`unknown sequence ${seqId}`);
    return n;
  }

  /** Drop the sequence's last `n` tokens; false when the backend cannot. */
  popTokens(seqId: number, n: number): boolean {
    const len = this.sequenceLength(seqId);
    if (n < 0 || n > len) throw new Error(`cannot pop ${n} of sequence ${seqId}'s ${len} tokens`);
    if (n === 0) return true;
    if (!this.backend.popN(seqId, n)) return false;
    this.lengths.set(seqId, len - n);
    return true;
  }

  reset(): void {
    this.backend.clear();
    this.lengths.clear();
  }

  freePages(): number | undefined {
    return this.backend.freePages();
  }

  private checkRoom(seqId: number, extra: number): void {
    const total = this.sequenceLength(seqId) + extra;
    const ctx = this.sizes.contextWindowSize;
    if (total > ctx) {
      throw new ContextWindowExceededError(
        `sequence needs ${total} tokens, the context window is ${ctx}; shorten the prompt or max_tokens, or raise context_window_size`,
        { context_window_size: ctx, tokens: total },
      );
    }
  }

  /** Append `tokenIds` to the sequence, in the chunks the rules allow; logits after the last. */
  async prefill(seqId: number, tokenIds: readonly number[]): Promise<Float32Array> {
    if (tokenIds.length === 0) throw new Error("prefill needs at least one token");
    this.checkRoom(seqId, tokenIds.length);
    const { prefillChunkSize, slidingWindowSize } = this.sizes;
    let logits: Float32Array | null = null;
    for (let start = 0; start < tokenIds.length; ) {
      const len = this.sequenceLength(seqId);
      // On a library whose paged prefill is inexact, a non-empty sequence grows one token at a time.
      const size = len > 0 && !this.backend.exactPagedPrefill ? 1 : prefillChunkLength(len, prefillChunkSize, slidingWindowSize);
      const chunk = tokenIds.slice(start, start + size);
      start += chunk.length;
      logits = await this.backend.prefill(seqId, chunk, start >= tokenIds.length);
      this.lengths.set(seqId, len + chunk.length);
    }
    return logits!;
  }

  /** One new token for each sequence (batched, max_batch_size per pass); their logits. */
  async decode(seqIds: readonly number[], tokenIds: readonly number[]): Promise<Float32Array[]> {
    if (seqIds.length !== tokenIds.length || seqIds.length === 0) throw new Error("decode needs one token per sequence");
    for (const s of seqIds) this.checkRoom(s, 1);
    const out: Float32Array[] = [];
    const step = this.sizes.maxBatchSize;
    for (let start = 0; start < seqIds.length; start += step) {
      const ids = seqIds.slice(start, start + step);
      out.push(...(await this.backend.decode(ids, tokenIds.slice(start, start + step))));
      for (const s of ids) this.lengths.set(s, this.sequenceLength(s) + 1);
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// TVM on WebGPU, or on the CPU (the `wasm` library)

/** Where a model library runs: `webgpu` (WGSL kernels) or `wasm` (its kernels run on the CPU). */
export type LibraryDevice = "webgpu" | "wasm";

/** Give tvmjs' bundled Emscripten WASI shim the CommonJS globals it expects under Node (never in browsers). */
async function ensureNodeRequire(): Promise<void> {
  const g = globalThis as Record<string, unknown>;
  const proc = g["process"] as { versions?: { node?: string } } | undefined;
  if (proc?.versions?.node && typeof g["require"] === "undefined") {
    // Computed at run time so no bundler (ours or a page's) tries to resolve a Node builtin.
    const spec = ["node", "module"].join(":");
    const mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ spec)) as { createRequire(url: string): unknown };
    g["require"] = mod.createRequire(import.meta.url);
  }
  // The same shim reads __dirname (an ES module has none) to locate files it never loads.
  if (proc?.versions?.node && typeof g["__dirname"] === "undefined") {
    g["__dirname"] = (g["process"] as { cwd(): string }).cwd();
  }
}

/** The parts of tvmjs' Emscripten WASI shim that a library with an imported memory needs. */
interface WasiShim {
  imports: { env: Record<string, unknown>; wasi_snapshot_preview1: Record<string, unknown> };
}

/**
 * Hand the shim the library's imported memory (tvmjs reads it from `env.memory`), and replace its
 * fd_write: the shim decodes text straight from the wasm memory, which a browser's TextDecoder
 * refuses when that memory is shared.
 */
function provideMemory(wasi: WasiShim, memory: WebAssembly.Memory, logger: (msg: string) => void): void {
  wasi.imports.env["memory"] = memory;
  const decoder = new TextDecoder();
  wasi.imports.wasi_snapshot_preview1["fd_write"] = (fd: number, iovs: number, iovsLen: number, nwritten: number): number => {
    const view = new DataView(memory.buffer);
    let text = "";
    let total = 0;
    for (let i = 0; i < iovsLen; i++) {
      const ptr = view.getUint32(iovs + i * 8, true);
      const len = view.getUint32(iovs + i * 8 + 4, true);
      text += decoder.decode(new Uint8Array(memory.buffer, ptr, len).slice(), { stream: true });
      total += len;
    }
    view.setUint32(nwritten, total, true);
    if (text.trim()) logger(`[${fd === 2 ? "stderr" : "stdout"}] ${text.trimEnd()}`);
    return 0;
  };
}

function int64(v: number): unknown {
  // Integers must cross into TVM as int64 scalars: a bare JS number is passed as a float.
  return new tvmjs.Scalar(v, "int64");
}

export class TVMBackend implements ForwardBackend {
  readonly vocabSize: number;
  readonly exactPagedPrefill: boolean;
  readonly device: LibraryDevice;
  private readonly tvm: Instance;
  private readonly dev: ReturnType<Instance["cpu"]>;
  private readonly params: TVMObject;
  private readonly paramTensors: Tensor[];
  private readonly vm: VirtualMachine;
  private readonly fEmbed: PackedFunc;
  private readonly fPrefill: PackedFunc;
  private readonly fDecode: PackedFunc;
  private readonly fBatchDecode: PackedFunc;
  private readonly fBegin: PackedFunc;
  private readonly fEnd: PackedFunc;
  private readonly fClear: PackedFunc;
  private readonly fAddSeq: PackedFunc;
  private readonly fRemoveSeq: PackedFunc;
  private readonly fPopN: PackedFunc | undefined;
  private readonly fFreePages: PackedFunc | undefined;
  private readonly kv: TVMObject;
  /** CPU tensors the logits are copied into, one per batch size seen. */
  private readonly logitsCPU = new Map<number, Tensor>();
  private disposed = false;

  private constructor(
    tvm: Instance,
    device: LibraryDevice,
    config: ChatConfig,
    paramTensors: Tensor[],
    maxBatchSize: number,
  ) {
    this.tvm = tvm;
    this.device = device;
    this.dev = device === "webgpu" ? tvm.webgpu() : tvm.cpu();
    this.vocabSize = config.model_config.vocab_size;
    // Only TVM's WebGPU paged prefill is inexact; the CPU kernels are exact at every head size.
    this.exactPagedPrefill = device === "wasm" || config.model_config.head_dim < WEBGPU_EXACT_PAGED_PREFILL_BELOW_HEAD_DIM;
    this.paramTensors = paramTensors;
    const detach = <T extends { dispose(): void }>(x: T): T => tvm.detachFromCurrentScope(x);
    tvm.beginScope();
    try {
      this.params = detach(tvm.makeTVMArray(paramTensors));
      this.vm = detach(tvm.createVirtualMachine(this.dev));
      this.fEmbed = detach(this.vm.getFunction(VM_FUNCTIONS.embed));
      this.fPrefill = detach(this.vm.getFunction(VM_FUNCTIONS.prefill));
      this.fDecode = detach(this.vm.getFunction(VM_FUNCTIONS.decode));
      this.fBatchDecode = detach(this.vm.getFunction(VM_FUNCTIONS.batchDecode));
      this.fBegin = detach(tvm.getGlobalFunc(KV_BUILTINS.begin_forward));
      this.fEnd = detach(tvm.getGlobalFunc(KV_BUILTINS.end_forward));
      this.fClear = detach(tvm.getGlobalFunc(KV_BUILTINS.clear));
      this.fAddSeq = detach(tvm.getGlobalFunc(KV_BUILTINS.add_sequence));
      this.fRemoveSeq = detach(tvm.getGlobalFunc(KV_BUILTINS.remove_sequence));
      // PopN lets a request reuse a cached sequence's prefix; without it there is no reuse.
      this.fPopN = TVMBackend.optionalGlobal(tvm, KV_BUILTINS.popn);
      this.fFreePages = TVMBackend.optionalGlobal(tvm, "vm.builtin.attention_kv_cache_get_num_available_pages");
      const fCreateKV = this.vm.getFunction(VM_FUNCTIONS.createKVCache);
      const args = kvCacheArgs(config.context_window_size, config.prefill_chunk_size, maxBatchSize);
      this.kv = detach(fCreateKV(...args.map((v) => tvm.makeShapeTuple([v]))) as TVMObject);
    } finally {
      tvm.endScope();
    }
  }

  private static optionalGlobal(tvm: Instance, name: string): PackedFunc | undefined {
    try {
      return tvm.detachFromCurrentScope(tvm.getGlobalFunc(name));
    } catch {
      return undefined;
    }
  }

  /**
   * Instantiate the model wasm, upload every weight (as shards arrive), compile the kernels.
   * `onPhase` reports "compile" progress; download progress comes from the loader.
   * `device` null: a CPU library (`compile --device wasm`): weights, KV cache and kernels stay in
   * the wasm memory, and no WebGPU is touched.
   */
  static async load(args: {
    wasm: Uint8Array;
    wasmUrl: string;
    device: GPUDevice | null;
    config: ChatConfig;
    manifest: TensorManifest;
    baseUrl: string;
    loader: ArtifactLoader;
    logger: (msg: string) => void;
    onCompileProgress: (fraction: number, text: string) => void;
    maxBatchSize: number;
    /** A CPU library's threads, the caller's included (default: every logical core; 1: none started). */
    threads?: number | undefined;
  }): Promise<TVMBackend> {
    const { config, manifest, maxBatchSize } = args;
    await ensureNodeRequire();
    // A CPU library imports its memory, shared when its parallel loops can use compute threads.
    const cpu = args.device ? null : await prepareCpuLibrary(args.wasm, args.threads);
    if (cpu?.singleThreadReason) args.logger(`The CPU library runs on one thread: ${cpu.singleThreadReason}`);
    const bytes = cpu?.bytes ?? args.wasm;
    const wasmBuffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
    let tvm: Instance;
    try {
      const wasi = tvmjs.createPolyfillWASI() as unknown as WasiShim;
      if (cpu?.memory) provideMemory(wasi, cpu.memory, args.logger);
      tvm = await tvmjs.instantiate(wasmBuffer, wasi as unknown as Record<string, unknown>, args.logger);
    } catch (e) {
      throw new ArtifactFormatError(
        `The model library (${args.wasmUrl}) could not be instantiated: ${(e as Error)?.message ?? String(e)}. ` +
          `Rebuild it with \`sphere_aae compile --device ${args.device ? "webgpu" : "wasm"}\` (it must match this engine's TVM runtime).`,
        { url: args.wasmUrl },
        { cause: e },
      );
    }
    let threads: ComputeThreads | null = null;
    try {
      const device: LibraryDevice = args.device ? "webgpu" : "wasm";
      if (args.device) tvm.initWebGPU(args.device);
      const dev = args.device ? tvm.webgpu() : tvm.cpu();
      const tensors: Tensor[] = new Array(manifest.tensors.length);
      const byShard: number[][] = manifest.shards.map(() => []);
      manifest.tensors.forEach((t, i) => byShard[t.shard]!.push(i));

      await args.loader.loadShards(args.baseUrl, manifest, (shardIndex, bytes) => {
        tvm.beginScope();
        try {
          for (const i of byShard[shardIndex]!) {
            const t = manifest.tensors[i]!;
            const gpu = tvm.detachFromCurrentScope(tvm.empty(t.shape, t.dtype, dev));
            const data = bytes.subarray(t.byte_offset, t.byte_offset + t.bytes);
            if (device === "wasm" || t.bytes % 4 === 0) {
              gpu.copyFromRawBytes(data);
            } else {
              // WebGPU writes need 4-byte sizes; odd-sized tensors go through a CPU staging tensor.
              const cpu = tvm.empty(t.shape, t.dtype, tvm.cpu());
              cpu.copyFromRawBytes(data);
              gpu.copyFrom(cpu);
            }
            tensors[i] = gpu;
          }
        } finally {
          tvm.endScope();
        }
      });
      await dev.sync();

      tvm.registerInitProgressCallback((r) => args.onCompileProgress(r.progress, r.text));
      const backend = new TVMBackend(tvm, device, config, tensors, maxBatchSize);
      if (cpu?.memory && cpu.threads > 1) {
        // For the workers: tvmjs keeps no WebAssembly.Module. V8 caches compiled modules by their bytes
        // (so this should be cheap; not measured here).
        const module = await WebAssembly.compile(wasmBuffer);
        threads = await ComputeThreads.start(module, cpu.memory, tvm.exports as unknown as Parameters<typeof ComputeThreads.start>[2], cpu.threads);
        backend.threads = threads;
      }
      if (device === "webgpu") {
        // Compile every WGSL kernel now (asynchronously, in parallel) rather than on first use.
        await tvm.asyncLoadWebGPUPipelines(backend.vm.getInternalModule());
        args.onCompileProgress(1, "GPU kernels ready");
      } else {
        args.onCompileProgress(1, "CPU kernels ready");
      }
      return backend;
    } catch (e) {
      threads?.stop();
      try {
        tvm.dispose();
      } catch {
        /* already gone */
      }
      throw e;
    }
  }

  /**
   * embed + `fn` over `tokens` appended to `seqIds` (`lengths` tokens each) inside one TVM scope;
   * the logits rows (one per sequence), or null when not wanted.
   */
  private async forward(seqIds: readonly number[], lengths: readonly number[], tokens: readonly number[], fn: PackedFunc, wantLogits: boolean): Promise<Float32Array[] | null> {
    if (this.disposed) throw new EngineNotLoadedError("The model was unloaded");
    const tvm = this.tvm;
    const dev = this.dev;
    tvm.beginScope();
    try {
      const n = tokens.length;
      const ids = tvm.empty([n], "int32", dev);
      ids.copyFrom(Int32Array.from(tokens));
      const embed = this.fEmbed(ids, this.params) as Tensor;
      const hidden = embed.shape[embed.shape.length - 1]!;
      // prefill: [1, n, hidden]; (batch) decode: [b, 1, hidden]
      const embed3 = embed.view(seqIds.length === 1 ? [1, n, hidden] : [n, 1, hidden]);
      this.fBegin(this.kv, tvm.makeShapeTuple([...seqIds]), tvm.makeShapeTuple([...lengths]));
      const ret = fn(embed3, this.kv, this.params) as { get(i: number): unknown };
      this.fEnd(this.kv);
      if (!wantLogits) return null;
      const logits = ret.get(0) as Tensor;
      const rows = seqIds.length;
      let cpu = this.logitsCPU.get(rows);
      if (!cpu) {
        cpu = tvm.detachFromCurrentScope(tvm.empty(logits.shape, logits.dtype, tvm.cpu()));
        this.logitsCPU.set(rows, cpu);
      }
      cpu.copyFrom(logits);
      // Wait inside the scope so the GPU logits buffer outlives the copy that reads it.
      await dev.sync();
      const all = cpu.toArray() as Float32Array;
      const v = this.vocabSize;
      return Array.from({ length: rows }, (_, i) => all.slice(i * v, (i + 1) * v));
    } finally {
      tvm.endScope();
    }
  }

  addSequence(seqId: number): void {
    this.fAddSeq(this.kv, int64(seqId));
  }

  removeSequence(seqId: number): void {
    this.fRemoveSeq(this.kv, int64(seqId));
  }

  async prefill(seqId: number, tokens: readonly number[], wantLogits: boolean): Promise<Float32Array | null> {
    const rows = await this.forward([seqId], [tokens.length], tokens, this.fPrefill, wantLogits);
    return rows ? rows[0]! : null;
  }

  async decode(seqIds: readonly number[], tokens: readonly number[]): Promise<Float32Array[]> {
    const fn = seqIds.length === 1 ? this.fDecode : this.fBatchDecode;
    return (await this.forward(seqIds, seqIds.map(() => 1), tokens, fn, true))!;
  }

  popN(seqId: number, n: number): boolean {
    if (!this.fPopN) return false;
    this.fPopN(this.kv, int64(seqId), int64(n));
    return true;
  }

  clear(): void {
    this.fClear(this.kv);
  }

  freePages(): number | undefined {
    if (!this.fFreePages) return undefined;
    return Number(this.fFreePages(this.kv));
  }

  statsText(): string {
    try {
      return this.tvm.runtimeStatsText();
    } catch {
      return "";
    }
  }

  /** Threads the kernels run on: a CPU library's compute threads and the caller; 1 on WebGPU. */
  get threadCount(): number {
    return this.threads?.count ?? 1;
  }

  /** The CPU library's compute threads, once started (after the KV cache exists). */
  private threads: ComputeThreads | null = null;

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const objs: Array<{ dispose(): void } | undefined> = [
      ...this.logitsCPU.values(), this.kv, this.params, ...this.paramTensors, this.fEmbed, this.fPrefill, this.fDecode,
      this.fBatchDecode, this.fBegin, this.fEnd, this.fClear, this.fAddSeq, this.fRemoveSeq, this.fPopN, this.fFreePages, this.vm,
    ];
    for (const o of objs) {
      try {
        o?.dispose();
      } catch {
        /* the device may already be lost; the instance dispose below frees everything anyway */
      }
    }
    this.threads?.stop();
    try {
      this.tvm.dispose(); // also destroys the GPUDevice, releasing all GPU memory
    } catch {
      /* already disposed (device lost) */
    }
  }
}

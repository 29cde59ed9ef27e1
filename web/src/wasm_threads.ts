/**
 * Compute threads for the CPU model library (`compile --device wasm`).
 *
 * The library is linked with a shared memory that it imports (`env.memory`); its parallel loops
 * go through TVMBackendParallelLaunch, which AAE's runtime (wasm_runtime/src/thread_pool.cc)
 * splits across the calling thread and the compute threads started here: Web Workers in a
 * browser, worker_threads in Node, each instantiating the same module on the same memory and
 * running AAEThreadPoolWorkerLoop until the model is unloaded.
 *
 * Threads need SharedArrayBuffer: a cross-origin isolated page (COOP `same-origin` + COEP
 * `require-corp`, which `aae-web serve` sends) or Node. Elsewhere the library runs on one thread:
 * `prepareCpuLibrary` turns its shared memory import into a plain one, which the module accepts
 * because, with no compute thread started, nothing ever waits on that memory.
 */

/** A CPU library's memory import: where its limits flag is in the binary, and the limits. */
export interface MemoryImport {
  flagOffset: number;
  shared: boolean;
  initialPages: number;
  maximumPages: number | undefined;
}

/** What the engine needs to instantiate a CPU library. */
export interface CpuLibrary {
  /** The bytes to instantiate (a copy when the memory import was made unshared). */
  bytes: Uint8Array;
  /** The memory to import, or null when the library defines its own (libraries before threads). */
  memory: WebAssembly.Memory | null;
  /** How many threads its parallel loops may use (1: no compute thread). */
  threads: number;
  /** Why it runs on one thread, when it does and more were asked for. */
  singleThreadReason: string | null;
}

const SHARED_LIMITS = 0x03; // shared, with a maximum
const PLAIN_LIMITS = 0x01; // unshared, with a maximum

function readU32(bytes: Uint8Array, at: number): [number, number] {
  let value = 0;
  let shift = 0;
  for (;;) {
    const b = bytes[at++];
    if (b === undefined) throw new Error("truncated LEB128 in the model library");
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if ((b & 0x80) === 0) return [value, at];
  }
}

function readName(bytes: Uint8Array, at: number): [string, number] {
  const [len, start] = readU32(bytes, at);
  return [new TextDecoder().decode(bytes.subarray(start, start + len)), start + len];
}

/** The memory import of a wasm binary, or null when it defines its memory (walks the import section). */
export function findMemoryImport(bytes: Uint8Array): MemoryImport | null {
  let at = 8; // magic + version
  while (at < bytes.length) {
    const id = bytes[at]!;
    const [size, body] = readU32(bytes, at + 1);
    if (id === 2) {
      let [count, p] = readU32(bytes, body);
      for (; count > 0; count--) {
        let module: string, field: string;
        [module, p] = readName(bytes, p);
        [field, p] = readName(bytes, p);
        const kind = bytes[p++]!;
        if (kind === 0) {
          [, p] = readU32(bytes, p); // function: type index
        } else if (kind === 1) {
          p += 1; // table: element type, then limits
          const flags = bytes[p++]!;
          [, p] = readU32(bytes, p);
          if (flags & 1) [, p] = readU32(bytes, p);
        } else if (kind === 2) {
          const flagOffset = p;
          const flags = bytes[p++]!;
          let initialPages: number, maximumPages: number | undefined;
          [initialPages, p] = readU32(bytes, p);
          if (flags & 1) [maximumPages, p] = readU32(bytes, p);
          if (module === "env" && field === "memory") return { flagOffset, shared: (flags & 2) !== 0, initialPages, maximumPages };
        } else if (kind === 3) {
          p += 2; // global: value type, mutability
        } else {
          throw new Error(`unknown import kind ${kind} in the model library`);
        }
      }
      return null;
    }
    if (id > 2 && id !== 0) return null; // sections are ordered: no import section
    at = body + size;
  }
  return null;
}

function isNode(): boolean {
  return Boolean((globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node);
}

/** Why this context cannot run compute threads on a shared memory, or null when it can. */
export function canShareMemory(): string | null {
  const g = globalThis as { SharedArrayBuffer?: unknown; crossOriginIsolated?: boolean; Worker?: unknown };
  if (typeof g.SharedArrayBuffer === "undefined") return "SharedArrayBuffer is not available here";
  if (!isNode() && typeof g.Worker === "undefined") return "this context cannot start workers (a Service Worker cannot)";
  if (g.crossOriginIsolated === false) {
    return "the page is not cross-origin isolated (serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp)";
  }
  return null;
}

/** The number of logical cores, as the platform reports it. */
export async function hardwareThreads(): Promise<number> {
  const nav = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator;
  if (nav?.hardwareConcurrency) return nav.hardwareConcurrency;
  if (isNode()) {
    const spec = ["node", "os"].join(":");
    const os = (await import(/* @vite-ignore */ /* webpackIgnore: true */ spec)) as { availableParallelism?(): number; cpus(): unknown[] };
    return os.availableParallelism?.() ?? os.cpus().length;
  }
  return 1;
}

/**
 * The bytes, memory and thread count to load a CPU library with. `threads`: what the caller asks
 * for (undefined: every logical core).
 */
export async function prepareCpuLibrary(wasm: Uint8Array, threads: number | undefined): Promise<CpuLibrary> {
  const imp = findMemoryImport(wasm);
  if (imp === null) {
    const reason = threads !== undefined && threads > 1 ? "the model library predates threads (rebuild it with this version's `aae-web build`)" : null;
    return { bytes: wasm, memory: null, threads: 1, singleThreadReason: reason };
  }
  const wanted = threads ?? (await hardwareThreads());
  const unavailable = imp.shared ? canShareMemory() : "the model library's memory is not shared";
  const limits = { initial: imp.initialPages, ...(imp.maximumPages !== undefined ? { maximum: imp.maximumPages } : {}) };
  if (wanted > 1 && unavailable === null) {
    return { bytes: wasm, memory: new WebAssembly.Memory({ ...limits, shared: true }), threads: wanted, singleThreadReason: null };
  }
  let bytes = wasm;
  if (imp.shared) {
    bytes = wasm.slice();
    if (bytes[imp.flagOffset] !== SHARED_LIMITS) throw new Error("the model library's shared memory has no maximum size");
    bytes[imp.flagOffset] = PLAIN_LIMITS;
  }
  return { bytes, memory: new WebAssembly.Memory(limits), threads: 1, singleThreadReason: wanted > 1 ? unavailable : null };
}

// ---------------------------------------------------------------------------------------------
// The compute threads

/** Exports of the CPU library that the thread pool uses (wasm_runtime/src/thread_pool.cc). */
interface PoolExports {
  AAEThreadPoolReadyCount(): number;
  AAEThreadPoolSetWorkers(n: number): number;
  AAEThreadPoolStop(): void;
  TVMWasmAllocSpace(size: number): number;
  TVMWasmFreeSpace(ptr: number): void;
}

// Each compute thread's C stack. TVM's CPU kernels keep their tiles in small fixed-size stack
// buffers (a few KiB); this leaves ample room.
const THREAD_STACK_BYTES = 1 << 20;
const READY_TIMEOUT_MS = 60_000;

/**
 * The worker's code, as source (a Blob URL in a browser, `eval` in Node): instantiate the module
 * on the shared memory without running its constructors (the memory is already initialised),
 * move the stack pointer to this thread's own stack, then serve launches until stopped. The
 * runtime's other imports are never reached from a kernel; each throws if it were.
 */
const WORKER_SOURCE = `
const port = typeof self === "undefined" ? require("node:worker_threads").parentPort : self;
const onMessage = (fn) => (typeof self === "undefined" ? port.on("message", fn) : (port.onmessage = (e) => fn(e.data)));
onMessage(({ module, memory, index, stackTop }) => {
  let instance;
  try {
    const imports = {};
    for (const imp of WebAssembly.Module.imports(module)) {
      const ns = (imports[imp.module] ??= {});
      if (imp.kind === "memory") ns[imp.name] = memory;
      // A kernel's workspace may grow the memory from here; the engine's thread re-reads its size.
      else if (imp.name === "emscripten_notify_memory_growth") ns[imp.name] = () => {};
      else if (imp.kind === "function") ns[imp.name] = () => { throw new Error(imp.module + "." + imp.name + " is not available on a compute thread"); };
    }
    instance = new WebAssembly.Instance(module, imports);
    instance.exports.stackRestore(stackTop);
    instance.exports.AAEThreadPoolWorkerLoop(index);
  } catch (e) {
    instance?.exports.AAEThreadPoolWorkerFailed();
    const text = String((e && e.stack) || e);
    // In Node, also straight to stderr: a launch that waits on this thread blocks the main one,
    // which would never print a message posted to it.
    if (typeof self === "undefined") require("node:fs").writeSync(2, "[compute thread " + index + "] " + text + "\\n");
    port.postMessage({ error: text });
  }
});
`;

interface ThreadHandle {
  post(msg: unknown): void;
  onError(fn: (msg: string) => void): void;
  terminate(): void;
}

async function spawn(): Promise<ThreadHandle> {
  if (isNode()) {
    const spec = ["node", "worker_threads"].join(":");
    const wt = (await import(/* @vite-ignore */ /* webpackIgnore: true */ spec)) as typeof import("node:worker_threads");
    const w = new wt.Worker(WORKER_SOURCE, { eval: true });
    w.unref(); // an engine the script forgot to unload must not keep Node running
    return {
      post: (m) => w.postMessage(m),
      onError: (fn) => {
        w.on("message", (m: { error?: string }) => m.error && fn(m.error));
        w.on("error", (e) => fn(String(e)));
      },
      terminate: () => void w.terminate(),
    };
  }
  const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
  const w = new Worker(url);
  URL.revokeObjectURL(url);
  return {
    post: (m) => w.postMessage(m),
    onError: (fn) => {
      w.addEventListener("message", (e: MessageEvent<{ error?: string }>) => e.data.error && fn(e.data.error));
      w.addEventListener("error", (e) => fn(e.message));
    },
    terminate: () => w.terminate(),
  };
}

/** Running compute threads; `stop` ends them and frees their stacks. */
export class ComputeThreads {
  private constructor(
    private readonly exports: PoolExports,
    private readonly handles: ThreadHandle[],
    private readonly stacks: number[],
  ) {}

  /** Threads in all, the caller's included. */
  get count(): number {
    return this.handles.length + 1;
  }

  /**
   * Start `threads - 1` compute threads on `module` (already instantiated on `memory` by the
   * caller, whose `exports` are given) and wait until each sits in its loop.
   */
  static async start(module: WebAssembly.Module, memory: WebAssembly.Memory, exports: PoolExports, threads: number): Promise<ComputeThreads> {
    const n = threads - 1;
    const handles: ThreadHandle[] = [];
    const stacks: number[] = [];
    const pool = new ComputeThreads(exports, handles, stacks);
    let failure: string | null = null;
    try {
      for (let index = 0; index < n; index++) {
        const h = await spawn();
        h.onError((msg) => (failure ??= msg));
        handles.push(h);
        const base = exports.TVMWasmAllocSpace(THREAD_STACK_BYTES);
        stacks.push(base);
        h.post({ module, memory, index, stackTop: (base + THREAD_STACK_BYTES) & ~15 });
      }
      const deadline = Date.now() + READY_TIMEOUT_MS;
      while (exports.AAEThreadPoolReadyCount() < n) {
        if (failure !== null) throw new Error(`a compute thread failed to start: ${failure}`);
        if (Date.now() > deadline) throw new Error(`compute threads did not start within ${READY_TIMEOUT_MS / 1000} s`);
        await new Promise((r) => setTimeout(r, 2));
      }
      exports.AAEThreadPoolSetWorkers(n);
      return pool;
    } catch (e) {
      pool.stop();
      throw e;
    }
  }

  stop(): void {
    this.exports.AAEThreadPoolSetWorkers(0);
    this.exports.AAEThreadPoolStop();
    for (const h of this.handles) h.terminate();
    for (const s of this.stacks) this.exports.TVMWasmFreeSpace(s);
    this.handles.length = 0;
    this.stacks.length = 0;
  }
}

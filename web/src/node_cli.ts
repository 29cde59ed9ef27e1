/**
 * `aae-web-node` (dist/node-server.js): serve a model folder over an OpenAI-compatible HTTP API
 * from Node, on Dawn's WebGPU or on the model's CPU library.
 *
 *   node dist/node-server.js <model-folder-or-url> [--port 8000] [--host 127.0.0.1]
 *                            [--device auto|webgpu|wasm] [--cache-dir DIR | --no-cache]
 *                            [--max-batch-size N] [--quiet]
 *
 * --device: auto (default) runs on Dawn (npm `webgpu`) when it is installed and has an adapter
 * able to run the model, else on the CPU library (model_lib.wasm); webgpu only Dawn; wasm only the
 * CPU library (Dawn is never loaded).
 *
 * Prints `Serving <model> on http://HOST:PORT/v1 (OpenAI-compatible)` once ready (stdout); logs
 * go to stderr. GET /health also reports the device ("webgpu" or "wasm") and adapter, the file cache (`cache`: directory, hits, misses, writes,
 * deletes) and the last load (`load`: shard bytes total and from the cache).
 */
import type { DevicePreference } from "./index.js";
import { CreateNodeEngine, FsStore, defaultCacheDir, serve, type InitProgressReport } from "./node.js";

const USAGE =
  "usage: aae-web-node <model-folder-or-url> [--port N] [--host H] [--device auto|webgpu|wasm] [--cache-dir DIR | --no-cache] [--max-batch-size N] [--quiet]";

const DEVICES: readonly DevicePreference[] = ["auto", "webgpu", "wasm"];

interface Args {
  model: string;
  port: number;
  host: string;
  device: DevicePreference;
  cacheDir: string | null;
  maxBatchSize?: number;
  quiet: boolean;
}

function parseArgs(argv: string[]): Args {
  const out: Omit<Args, "model"> & { model?: string } = {
    port: 8000,
    host: "127.0.0.1",
    device: "auto",
    cacheDir: defaultCacheDir(),
    quiet: false,
  };
  const value = (i: number, flag: string): string => {
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${flag} needs a value`);
    return v;
  };
  const int = (v: string, flag: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} must be a non-negative integer, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.startsWith("--") && a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
    const take = (): string => inline ?? value(i++, flag);
    if (flag === "--port") out.port = int(take(), flag);
    else if (flag === "--host") out.host = take();
    else if (flag === "--device") {
      const d = take();
      if (!(DEVICES as readonly string[]).includes(d)) throw new Error(`--device must be one of ${DEVICES.join(", ")}, got ${d}`);
      out.device = d as DevicePreference;
    }
    else if (flag === "--cache-dir") out.cacheDir = take();
    else if (flag === "--no-cache") out.cacheDir = null;
    else if (flag === "--max-batch-size") out.maxBatchSize = int(take(), flag);
    else if (flag === "--quiet") out.quiet = true;
    else if (flag === "-h" || flag === "--help") {
      console.log(USAGE);
      process.exit(0);
    } else if (flag.startsWith("-")) throw new Error(`unknown option ${flag}`);
    else if (out.model === undefined) out.model = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (out.model === undefined) throw new Error("the model folder (or URL) is missing");
  return { ...out, model: out.model };
}

async function main(): Promise<void> {
  let args: ReturnType<typeof parseArgs>;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`aae-web-node: ${(e as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  const log = (m: string) => {
    if (!args.quiet) console.error(`[aae-web-node] ${m}`);
  };
  const store = args.cacheDir === null ? null : new FsStore(args.cacheDir);
  let last: InitProgressReport | undefined;
  let lastPhase = "";
  const engine = await CreateNodeEngine(args.model, {
    store,
    device: args.device,
    logger: log,
    ...(args.maxBatchSize ? { maxBatchSize: args.maxBatchSize } : {}),
    initProgressCallback: (r) => {
      last = r;
      if (r.phase !== lastPhase) log(r.text);
      lastPhase = r.phase;
    },
  });
  const load = last
    ? { total_bytes: last.totalBytes, cached_bytes: last.cachedBytes, total_shards: last.totalShards, seconds: last.timeElapsed }
    : {};
  if (store) {
    log(`model files: ${load.cached_bytes ?? 0} of ${load.total_bytes ?? 0} shard bytes from the cache in ${store.dir}; ` +
      `cache hits ${store.stats.hits}, misses ${store.stats.misses}, writes ${store.stats.writes}, dropped ${store.stats.deletes}`);
  }
  const running = await serve(engine, {
    host: args.host,
    port: args.port,
    logger: log,
    healthInfo: () => ({
      device: engine.device ?? null,
      adapter: engine.adapterInfo ?? null,
      cache: store ? { dir: store.dir, ...store.stats } : null,
      load,
    }),
  });
  log(`running on ${engine.device === "wasm" ? "the CPU library (wasm)" : "WebGPU"}: ${engine.adapterInfo ?? ""}`);
  console.log(`Serving ${engine.modelId} on ${running.url}/v1 (OpenAI-compatible)`);
  const stop = async (signal: string) => {
    log(`${signal}: shutting down`);
    await running.close().catch(() => undefined);
    await engine.unload().catch(() => undefined);
    process.exit(0);
  };
  process.once("SIGINT", () => void stop("SIGINT"));
  process.once("SIGTERM", () => void stop("SIGTERM"));
}

main().catch((e: unknown) => {
  console.error(`aae-web-node: ${(e as Error)?.name ?? "Error"}: ${(e as Error)?.message ?? String(e)}`);
  process.exit(1);
});

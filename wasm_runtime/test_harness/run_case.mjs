// Astro Agent Edge -- Node harness that runs a TVM model .wasm on WebGPU (Dawn for Node).
// SPDX-License-Identifier: Apache-2.0
//
// Usage: node run_case.mjs case.json
//
// Used by tests/test_wasm_runtime.py, and written as a worked example of the tvmjs
// (@mlc-ai/web-runtime) calls a browser engine needs:
//   1. tvmjs.instantiate(wasmBytes, tvmjs.createPolyfillWASI(), logger)
//   2. tvmjs.detectGPUDevice() -> {adapter, device}; tvm.initWebGPU(device)
//      (must precede the first use of the system library: loading it creates the WebGPU module,
//       which needs the shader factory initWebGPU registers)
//   3. vm = tvm.createVirtualMachine(tvm.webgpu()); await tvm.asyncLoadWebGPUPipelines(
//      vm.getInternalModule())  (compiles every WGSL pipeline up front)
//   4. weights: tvm.empty(shape, dtype, tvm.webgpu()).copyFromRawBytes(bytes), collected into
//      tvm.makeTVMArray([...]) -- the `params` tuple of a "packed" nn.Module function
//   5. int arguments of nn.spec `int` (e.g. create_tir_paged_kv_cache) are ShapeTuples:
//      tvm.makeShapeTuple([n]); int64 scalars for builtins: new tvmjs.Scalar(v, "int64")
//   6. read results: copy the GPU tensor into a CPU tensor, await tvm.webgpu().sync(), toArray()
//
// case.json:
// {
//   "wasm": "/abs/model.wasm",
//   "out_dir": "/abs/dir",                     // results are written here as raw .bin files
//   "params": [{"file": "...", "shape": [..], "dtype": "float32"}],   // manifest order
//   "mode": "forward" | "paged_kv",
//   "preload_pipelines": true,                 // false: compile kernels lazily on first use
//   // forward: one call fn(inputs..., params) -> tensor
//   "function": "forward", "inputs": [{"file": .., "shape": .., "dtype": ..}],
//   // paged_kv: create a KV cache, add sequence 0, then run each step with begin/end_forward
//   "kv_create": {"function": "create_tir_paged_kv_cache", "max_batch_size": 1,
//                 "max_total_seq_len": 128, "prefill_chunk_size": 32, "page_size": 16},
//   "steps": [{"function": "prefill", "input": {"file": .., "shape": [1, n, h], "dtype": ..}}]
// }
// Prints one JSON line: {"ok": true, "adapter": ..., "outputs": [...], "timings_ms": {...}}.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { create, globals } from "webgpu";

const require = createRequire(import.meta.url);
const tvmjs = require("@mlc-ai/web-runtime");

// Dawn for Node exposes the WebGPU API objects (GPUBufferUsage, ...) and navigator.gpu the way a
// browser does; tvmjs only looks for the globals. Node 20 has no `navigator`.
Object.assign(globalThis, globals);
if (typeof globalThis.navigator === "undefined") globalThis.navigator = {};
globalThis.navigator.gpu = create((process.env.AAE_DAWN_OPTIONS || "").split(",").filter(Boolean));

const TYPED = {
  float32: Float32Array,
  int32: Int32Array,
  uint32: Uint32Array,
  float16: Uint16Array, // raw half bits
  uint8: Uint8Array,
  int8: Int8Array,
};

function loadTensorBytes(spec) {
  const buf = fs.readFileSync(spec.file);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

// Upload a host file into a new tensor on `dev`.
function upload(tvm, spec, dev) {
  const t = tvm.empty(spec.shape, spec.dtype, dev);
  t.copyFromRawBytes(loadTensorBytes(spec));
  return t;
}

// Copy a (GPU) tensor to the host and write it as raw bytes; returns its description.
async function download(tvm, tensor, file) {
  const cpu = tvm.empty(tensor.shape, tensor.dtype, tvm.cpu());
  cpu.copyFrom(tensor);
  await tvm.webgpu().sync();
  const bytes = cpu.toRawBytes();
  fs.writeFileSync(file, bytes);
  return { file, shape: Array.from(tensor.shape), dtype: String(tensor.dtype) };
}

// A VM function may return a tensor or a tuple (TVMArray) whose first item is the tensor.
function firstTensor(ret) {
  if (ret instanceof tvmjs.Tensor) return ret;
  if (ret && typeof ret.get === "function") return ret.get(0);
  throw new Error(`unexpected return value: ${ret}`);
}

async function main() {
  const casePath = process.argv[2];
  if (!casePath) throw new Error("usage: node run_case.mjs case.json");
  const spec = JSON.parse(fs.readFileSync(casePath, "utf8"));
  const timings = {};
  const t0 = performance.now();

  const wasmBytes = fs.readFileSync(spec.wasm);
  const logs = [];
  const tvm = await tvmjs.instantiate(
    wasmBytes.buffer.slice(wasmBytes.byteOffset, wasmBytes.byteOffset + wasmBytes.byteLength),
    tvmjs.createPolyfillWASI(),
    (msg) => logs.push(String(msg)),
  );
  timings.instantiate = performance.now() - t0;

  const gpu = await tvmjs.detectGPUDevice();
  if (!gpu) throw new Error("no WebGPU adapter (check VK_ICD_FILENAMES)");
  tvm.initWebGPU(gpu.device);
  const adapter = gpu.adapterInfo
    ? `${gpu.adapterInfo.vendor} ${gpu.adapterInfo.architecture} ${gpu.adapterInfo.device} ${gpu.adapterInfo.description}`.trim()
    : "unknown";

  const dev = tvm.webgpu();
  tvm.beginScope();
  const vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(dev));
  if (spec.preload_pipelines !== false) {
    // Compile every WGSL pipeline now (what a browser engine should do behind a progress bar).
    // Without it tvmjs compiles each kernel synchronously on its first call, which is faster
    // when a run uses few of the module's kernels (the paged KV cache ships many variants).
    const t1 = performance.now();
    await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule());
    timings.load_pipelines = performance.now() - t1;
  }

  const params = tvm.detachFromCurrentScope(
    tvm.makeTVMArray(spec.params.map((p) => upload(tvm, p, dev))),
  );
  const outputs = [];
  const t2 = performance.now();

  if (spec.mode === "forward") {
    const fn = vm.getFunction(spec.function);
    const inputs = spec.inputs.map((x) => upload(tvm, x, dev));
    const out = firstTensor(fn(...inputs, params));
    outputs.push(await download(tvm, out, path.join(spec.out_dir, "out_0.bin")));
  } else if (spec.mode === "paged_kv") {
    const kc = spec.kv_create;
    const kv = tvm.detachFromCurrentScope(
      vm.getFunction(kc.function)(
        tvm.makeShapeTuple([kc.max_batch_size]),
        tvm.makeShapeTuple([kc.max_total_seq_len]),
        tvm.makeShapeTuple([kc.prefill_chunk_size]),
        tvm.makeShapeTuple([kc.page_size]),
        tvm.makeShapeTuple([0]), // support_sliding_window
      ),
    );
    const addSequence = tvm.getGlobalFunc("vm.builtin.kv_state_add_sequence");
    const beginForward = tvm.getGlobalFunc("vm.builtin.kv_state_begin_forward");
    const endForward = tvm.getGlobalFunc("vm.builtin.kv_state_end_forward");
    addSequence(kv, new tvmjs.Scalar(0, "int64"));
    let i = 0;
    for (const step of spec.steps) {
      tvm.beginScope();
      const x = upload(tvm, step.input, dev);
      const seqLen = step.input.shape[1];
      beginForward(kv, tvm.makeShapeTuple([0]), tvm.makeShapeTuple([seqLen]));
      const out = firstTensor(vm.getFunction(step.function)(x, kv, params));
      endForward(kv);
      outputs.push(await download(tvm, out, path.join(spec.out_dir, `out_${i}.bin`)));
      tvm.endScope();
      i += 1;
    }
  } else {
    throw new Error(`unknown mode ${spec.mode}`);
  }
  timings.run = performance.now() - t2;
  tvm.endScope();
  timings.total = performance.now() - t0;

  console.log(JSON.stringify({ ok: true, adapter, outputs, timings_ms: timings, logs }));
  // Dawn keeps the event loop alive; exit explicitly once results are out.
  process.exit(0);
}

main().catch((err) => {
  console.log(JSON.stringify({ ok: false, error: String(err && err.stack ? err.stack : err) }));
  process.exit(1);
});

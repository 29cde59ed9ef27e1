"""`compile`: lower a model folder's architecture + quantization to a runnable library with TVM.

One pipeline for every device; only the target and the final packaging differ:
- cpu: LLVM for the host, exported as a shared library (`.so`) loaded by the native runtime;
- cuda: CUDA kernels (dlight schedules) + LLVM host, a shared library;
- webgpu: WGSL kernels (dlight schedules) + a wasm32 host module, linked with the TVM web runtime
  (wasm_runtime/) by Emscripten into one `.wasm` for the browser;
- wasm: the browser's CPU fallback (no WebGPU): the CPU schedules compiled by LLVM for wasm32 with
  SIMD128, linked like webgpu but without the WebGPU runtime. Same weights as webgpu (no CPU repack:
  the x86 kernels of quantization/cpu_kernels.py are for `cpu` only).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from . import artifact, sampling_kernel
# Re-exported: DEVICES, host_cpu and compile_metadata live where the run path reads them without TVM.
from .build_info import DEVICES, compile_metadata, host_cpu
from .schedules import get_cpu_pipeline, get_gpu_pipeline
from .models import config_from_dict, get_architecture
from .quantization import check_device, get_scheme, quantize_model

# Devices whose library is one `.wasm` for the browser engine (linked with TVM's web runtime).
WASM_DEVICES = ("webgpu", "wasm")
# Devices compiled with the CPU schedules (LLVM kernels) rather than the GPU ones.
CPU_DEVICES = ("cpu", "wasm")


class CompileError(RuntimeError):
    pass


def make_target(device: str) -> tvm.target.Target:
    if device == "cpu":
        # num-cores sizes the parallel regions of the CPU schedules to this machine; mcpu lets
        # LLVM use its vector units (no AVX-512 without it; "native" means generic in TVM 0.27).
        return tvm.target.Target({"kind": "llvm", "num-cores": os.cpu_count() or 1, "mcpu": host_cpu()})
    if device == "cuda":
        # "arch" is read from the visible GPU when there is one.
        return tvm.target.Target({"kind": "cuda"}, host={"kind": "llvm"})
    if device == "webgpu":
        return tvm.target.Target({"kind": "webgpu"}, host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})
    if device == "wasm":
        # Kernels and host in one wasm32 module; SIMD128 is in every browser with WebGPU's era
        # (Chrome 91+, Firefox 89+, Safari 16.4+). The web runtime runs parallel loops serially.
        return tvm.target.Target({"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm", "mattr": ["+simd128"]})
    raise CompileError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")


def _add_metadata(mod: tvm.IRModule, metadata: dict[str, Any]) -> tvm.IRModule:
    bb = relax.BlockBuilder(mod)
    with bb.function("_metadata", params=[]):
        bb.emit_func_output(tvm.ir.StringImm(json.dumps(metadata, sort_keys=True)))
    return bb.get()


def export_ir(chat_config: dict[str, Any], device: str, debug_functions: bool = False) -> tuple[tvm.IRModule, list[str]]:
    """The model's Relax IRModule for `device`, and its parameter names in order."""
    arch = get_architecture(chat_config["model_type"])
    cfg = config_from_dict(chat_config["model_type"], chat_config["model_config"])
    scheme = get_scheme(chat_config["quantization"])
    check_device(scheme, device)
    model, _, layouts = quantize_model(arch.build(cfg, scheme.model_dtype), scheme, device)
    target = make_target(device)
    with target:
        mod, named_params = model.export_tvm(spec=model.get_default_spec(debug_functions=debug_functions))
    if device in CPU_DEVICES:
        from .models.cpu_attention import use_vectorized_attention

        mod = use_vectorized_attention(mod, cfg, scheme.model_dtype)
    if cfg.attn_logit_softcap:
        from .models.softcap import apply_attention_softcap  # Gemma 2: patches TVM's attention kernels

        mod = apply_attention_softcap(mod, float(cfg.attn_logit_softcap))
    metadata = compile_metadata(chat_config, device, debug_functions)
    metadata["param_layouts"] = layouts  # the runtime repacks these stored tensors at load
    mod = _add_metadata(mod, metadata)
    return mod, [name for name, _ in named_params]


def compile_model(
    model_dir: Path,
    device: str,
    output: Path,
    *,
    debug_functions: bool = False,
    progress: bool = True,
) -> Path:
    """Compile the model folder's architecture for `device` into `output` (written atomically)."""
    model_dir, output = Path(model_dir), Path(output)
    chat_config = artifact.read_chat_config(model_dir)
    manifest = artifact.read_manifest(model_dir)
    t0 = time.perf_counter()
    _say(progress, f"[compile] {chat_config['model_id']} for {device}: exporting Relax IR")
    mod, param_names = export_ir(chat_config, device, debug_functions)
    stored = [t["name"] for t in manifest["tensors"]]
    if stored != param_names:
        raise CompileError(
            f"{model_dir}: the manifest's tensors do not match the compiled parameters "
            f"(first difference at {next((a, b) for a, b in zip(stored + [None], param_names + [None]) if a != b)}); "
            "re-run convert_weight with this sphere_aae version"
        )
    target = make_target(device)
    _say(progress, f"[compile] lowering and building ({len(mod.functions)} functions; this takes a while)")
    model_dtype = get_scheme(chat_config["quantization"]).model_dtype
    pipeline = get_cpu_pipeline(target, model_dtype) if device in CPU_DEVICES else get_gpu_pipeline(target)
    with target:
        executable = relax.build(mod, target=target, relax_pipeline=pipeline)
    output.parent.mkdir(parents=True, exist_ok=True)
    if device in WASM_DEVICES:
        from .wasm_runtime import link_model_wasm

        _say(progress, "[compile] linking the wasm module with the TVM web runtime (emcc)")
        link_model_wasm(executable, output, webgpu=device == "webgpu")
    else:
        # The sampler's kernel (sampling_kernel.py), built without FMA for the host that runs
        # the engine (this machine's CPU, like the CPU kernels; generic x86-64 beside a GPU's)
        # and linked into the same library; the engine finds it there (sampling.NativeWeights).
        host = make_target("cpu") if device == "cpu" else tvm.target.Target({"kind": "llvm"})
        if sampling_kernel.supported(host):
            executable.mod.import_module(sampling_kernel.build(host))
        tmp = output.with_name(f".{output.name}.tmp.so")
        executable.export_library(str(tmp))
        tmp.replace(output)
    _say(progress, f"[compile] wrote {output} ({output.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s")
    return output


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)

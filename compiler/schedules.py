"""Schedules and Relax pipelines: CPU (LLVM) and GPU (WebGPU, CUDA).

TVM's default CPU pipeline leaves fused kernels unscheduled: a quantized matmul then
materialises its whole dequantized weight in a temporary buffer on every call and runs one
core. dlight's CPU rules (GEMV for decode matmuls, Reduction for norms/softmax) cover the hot
paths; `CPUFallback` handles the rest (prefill matmuls, embeddings, elementwise kernels) by
inlining elementwise producers such as the dequantize into their consumer and running the
outer spatial loops in parallel.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline
from tvm.target import Target


class CPUFallback(ScheduleRule):
    """Inline spatial producers, then parallelise each remaining block's leading spatial loops."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        for info in infos:
            loops = sch.get_loops(info.block_rv)
            kinds = info.dom_kind()
            lead = len(kinds) - len(kinds.lstrip("S"))
            # Keep the innermost spatial loop serial when nothing else is spatial-parallel:
            # a parallel region per element would cost more than it saves.
            if lead == 0 or len(loops) < lead:
                continue
            outer = loops[:lead] if lead < len(loops) else loops[: max(1, lead - 1)]
            fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            sch.parallel(fused)
        return sch


def schedule_passes(model_dtype: str = "float32") -> list[tvm.transform.Pass]:
    # dlight's CPU GEMV rule is left out on purpose: it unrolls 256 deep and vectorises, and LLVM
    # then spends minutes per kernel (3 min for stories260K q0f32, never finishing in f16) for a
    # decode speed our fallback's parallel loops nearly match (measured in the issue notes).
    # dlight's CPU Reduction rule is left out too: on RMSNorm it parallelises over the hidden
    # elements and recomputes the whole reduction for each (0.33 ms a call, 20 ms a SmolLM2
    # token, against 0.24 ms a token for all 61 norms under the fallback).
    del model_dtype
    return [dl.ApplyDefaultSchedule(CPUFallback())]


def _pipeline(target: Target, backend, schedules: list[tvm.transform.Pass]) -> tvm.transform.Pass:
    """TVM's pipeline for `backend` with x @ W^T fused into one matmul first and `schedules`
    applied right after legalization and fusion."""

    @tvm.transform.module_pass(opt_level=0)
    def _run(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                backend.library_dispatch_passes(target)
                + [relax.transform.FuseTransposeMatmul()]
                + backend.legalize_passes(target)
                + schedules
                + backend.dataflow_lower_passes(target)
                + backend.finalize_passes(target)
            )
            return seq(mod)

    return _run


def get_gpu_pipeline(target: Target) -> tvm.transform.Pass:
    """Generic GPU (WebGPU, CUDA): the backend's legalize passes already apply dlight's GPU rules."""
    from tvm.relax.backend.gpu_generic import pipeline as gpu_generic

    return _pipeline(target, gpu_generic, [])


def get_cpu_pipeline(target: Target, model_dtype: str = "float32") -> tvm.transform.Pass:
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    return _pipeline(target, cpu_generic, schedule_passes(model_dtype))

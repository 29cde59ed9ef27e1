"""The sampler's hot path as a native kernel, compiled ahead of time into the model library.

At temperature > 0 every token runs, over the whole vocabulary, `w = spec_exp((x - m) / T)`,
the left-to-right sum of w and a pass that finds the nucleus (sampling.py). numpy needs ~40 full
passes for that (~1 ms a token at 49,152 logits, against a ~10 ms decode step); one compiled
call does it in ~0.2 ms. The kernel must give the bits numpy gives (and the browser engine, see
web/src/sampling.ts): same operations, same order, each rounding on its own. LLVM would fuse
`p * r + c` into one fused multiply-add (TVM sets AllowFPOpFusion=Fast), so the kernel is built
as its own module for a target without the FMA feature, then linked into the model library.
Only for x86 hosts: elsewhere (AArch64) FMA is part of the base ISA and cannot be turned off.

`sampling.py` calls it through the loaded library (`NativeWeights`) and falls back to numpy
where the library has no kernel (libraries compiled before it existed, wasm builds, non-x86).
"""

from __future__ import annotations

import math

import tvm
from tvm import tirx
from tvm.ir.expr import Expr as PrimExpr
from tvm.script import tirx as T

from .request_spec import SAMPLING

# The symbol the runtime looks for (sampling.NATIVE_WEIGHTS_SYMBOL says the same).
SYMBOL = "sphere_aae_sampling_weights"
# Buckets of the per-binade mass histogram: one per float64 exponent (weights are >= 0).
HIST_SIZE = 2048
# Weights computed per vectorized chunk (16 float64: four AVX2 registers in flight).
CHUNK = 16

_EXP = SAMPLING["exp"]
_COEFFS = [1.0 / math.factorial(j) for j in range(_EXP["terms"] + 1)]
_UNDER = float(_EXP["underflow_below"])
_INV_LN2, _LN2_HI, _LN2_LO = float(_EXP["inv_ln2"]), float(_EXP["ln2_hi"]), float(_EXP["ln2_lo"])
# k + 2^52 + 1023 is exact for integer k in [-1021, 0]; its low bits are then k + 1023, and a
# left shift by 52 leaves exactly the bits of 2^k (vectorizes, unlike a float -> int64 cast).
_MAGIC = float(2**52 + 1023)


def _horner(r: PrimExpr) -> PrimExpr:
    """p = p * r + c from the highest coefficient down, as spec_exp does (a TIR expression
    tree: each multiply and add is its own rounded operation unless LLVM fuses them)."""
    p: PrimExpr = tirx.const(_COEFFS[-1], "float64")
    for c in reversed(_COEFFS[:-1]):
        p = p * r + tirx.const(c, "float64")
    return p


def _weight(x: PrimExpr, m: PrimExpr, t: PrimExpr) -> PrimExpr:
    """spec_exp((x - m) / t), operation for operation (sampling.spec_exp). Let-bound so each
    value is computed once in the IR, as numpy's passes compute it."""
    f64 = lambda v: tirx.const(v, "float64")  # noqa: E731
    y, ys, k, r0, r = (tirx.Var(name, "float64") for name in ("y", "ys", "k", "r0", "r"))
    bits = tirx.reinterpret("int64", k + f64(_MAGIC))
    scale = tirx.reinterpret("float64", tirx.shift_left(bits, tirx.const(52, "int64")))
    body = tirx.Select(y < f64(_UNDER), f64(0.0), _horner(r) * scale)
    body = tirx.Let(r, r0 - k * f64(_LN2_LO), body)
    body = tirx.Let(r0, ys - k * f64(_LN2_HI), body)
    body = tirx.Let(k, tirx.floor(ys * f64(_INV_LN2) + f64(0.5)), body)
    body = tirx.Let(ys, tirx.Select(y < f64(_UNDER), f64(_UNDER), y), body)
    return tirx.Let(y, (x - m) / t, body)


def _bucket(w: PrimExpr) -> PrimExpr:
    """The exponent field of w >= 0; masked, so no input can index outside the histogram."""
    bits = tirx.reinterpret("int64", w)
    return tirx.bitwise_and(tirx.shift_right(bits, tirx.const(52, "int64")), tirx.const(HIST_SIZE - 1, "int64"))


def weights_func() -> tirx.PrimFunc:
    """(x, m, t) -> w = spec_exp((x - m) / t), total = the left-to-right sum of w, and hist[e]
    = the mass of the weights whose float64 exponent field is e (roughly: only to pick the
    nucleus candidates, which sampling.nucleus_order then checks exactly). Callers pass a
    finite m = max(x) and t > 0, so (x - m) / t is <= 0 or -inf, never NaN (the target lets
    LLVM assume no NaNs)."""
    lanes = CHUNK

    @T.prim_func
    def func(x_h: T.handle, w_h: T.handle, total_h: T.handle, hist_h: T.handle, m: T.float64, t: T.float64):
        T.func_attr({"global_symbol": SYMBOL, "tir.noalias": True})
        n = T.int64()
        # align=8: numpy's arrays, passed as they are, are only float64-aligned.
        x = T.match_buffer(x_h, (n,), "float64", align=8)
        w = T.match_buffer(w_h, (n,), "float64", align=8)
        total = T.match_buffer(total_h, (1,), "float64", align=8)
        hist = T.match_buffer(hist_h, (HIST_SIZE,), "float64", align=8)
        acc = T.alloc_buffer((1,), "float64")
        for e in range(HIST_SIZE):
            hist[e] = T.float64(0)
        acc[0] = T.float64(0)
        # Chunks: the weights vectorized, then their serial sum (the spec's order cannot be
        # vectorized), which the CPU overlaps with the next chunk's weights.
        for c in range(n // lanes):
            for j in T.vectorized(lanes):
                w[c * lanes + j] = _weight(x[c * lanes + j], m, t)
            for j in range(lanes):
                acc[0] = acc[0] + w[c * lanes + j]
                hist[_bucket(w[c * lanes + j])] += w[c * lanes + j]
        for i in range(n // lanes * lanes, n):
            w[i] = _weight(x[i], m, t)
            acc[0] = acc[0] + w[i]
            hist[_bucket(w[i])] += w[i]
        total[0] = acc[0]

    return func


def supported(host: tvm.target.Target) -> bool:
    """Whether `host` is an x86 CPU, whose FMA is a feature that kernel_target can turn off."""
    triple = str(host.attrs.get("mtriple") or tvm.target.codegen.llvm_get_system_triple())
    return host.kind.name == "llvm" and triple.split("-")[0] in ("x86_64", "i386", "i686")


def kernel_target(host: tvm.target.Target) -> tvm.target.Target:
    """`host` with the FMA feature (and AVX-512, which implies it) turned off, so LLVM has no
    fused multiply-add to contract `p * r + c` into."""
    config = dict(host.export())
    config = {k: v for k, v in config.items() if k in ("kind", "mtriple", "mcpu", "mattr")}
    config["mattr"] = [*config.get("mattr", []), "-fma", "-fma4", "-avx512f"]
    return tvm.target.Target(config)


def build(host: tvm.target.Target) -> tvm.runtime.Module:
    """The kernel compiled on its own for `host` (without FMA), to import into a model library."""
    mod = tvm.IRModule({SYMBOL: weights_func()})
    return tirx.build(mod, target=kernel_target(host))

"""Quantized matmul kernels for the CPU (LLVM), on weights repacked to interleave 16 rows.

The stored layout (group_quant: codes packed along the input dimension, [out, in / per_word]
uint32 words and [out, groups] scales) keeps one row's codes together. A CPU kernel over it can
only vectorise along the input, which needs per-lane shifts of one word and a horizontal sum per
row; TVM's generic schedule does neither and runs a scalar loop (0.5-1 GB/s of weights).

Interleaving 16 rows (`[out / 16, in / per_word, 16]` words, `[out / 16, groups, 16]` scales and
minima) puts the same word of 16 rows in one 512-bit vector: the kernel unpacks one code of 16 rows
per shift-and-mask, and accumulates 16 outputs at once with an FMA against one broadcast input.
The group's scale and minimum are applied once per group: out += scale * sum(x * code) +
min * sum(x). Measured on a 2-vCPU Xeon (AVX-512): 8-17 GB/s for decode (one row of x), and
85-115 GFLOP/s for prefill (x rows in tiles of 4 that share each unpacked code), against
0.5-1 GB/s and ~1 GFLOP/s before.

The repack happens once, when the native runtime loads the weights (`interleave_rows`, in
runtime/layouts.py): the artifact keeps the one stored layout every runtime reads; a CPU library
lists the parameters it declares interleaved in its metadata (`param_layouts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvm import tirx
from tvm.script import tirx as T

# The layout and its repack live with the runtime, which must not import TVM's compiler.
from ..runtime.layouts import LAYOUT, ROWS, interleave_rows, interleaved_shape  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # group_quant imports this module
    from .group_quant import GroupQuantSpec

M_TILE = 4  # rows of x that share each unpacked code (prefill, batched decode)


def eligible(out_features: int, in_features: int, spec: "GroupQuantSpec", dtype: str) -> bool:
    """Whether a matrix gets the interleaved layout and these kernels: f32 activations, the
    asymmetric schemes (scale + minimum), whole 16-row blocks, no padded group, and codes that
    tile a word."""
    return (dtype == "float32" and not spec.symmetric and out_features % ROWS == 0 and in_features % spec.group_size == 0
            and 32 % spec.bits == 0 and spec.group_size % spec.per_storage == 0)


def lead_dims(count: int) -> tuple[list[tirx.Var], tirx.PrimExpr]:
    """Symbolic leading dimensions of a matmul's x and y ([batch, sequence] or [rows]) and the
    number of rows they make. The kernels take x and y as they are and index them as rows
    through a flat view, so the model needs no reshape around each matmul: each costs the Relax
    VM two calls (~2 us), 240 of them in a batched decode step."""
    dims = [tirx.Var(f"n{i}", "int64") for i in range(count)]
    rows = dims[0]
    for d in dims[1:]:
        rows = rows * d
    return dims, rows


def matmul_kernel(out_features: int, in_features: int, spec: "GroupQuantSpec", m_tile: int, lead: int = 1,
                  scale_dtype: str = "float32") -> tirx.PrimFunc:
    """y[..., n] = sum_k x[..., k] * dequantize(w)[n, k] over `lead` symbolic leading dimensions,
    with scales and minima stored in `scale_dtype` (read as f32).

    One parallel task per block of 16 output rows; x rows in tiles of `m_tile` (1 for decode,
    where a static single row needs no tile bookkeeping). Written out by hand, scheduled as is
    (tir.is_scheduled), and opaque to operator fusion so no other loop is merged into it.
    """
    per, bits, group = spec.per_storage, spec.bits, spec.group_size
    words, groups, blocks = in_features // per, in_features // group, out_features // ROWS
    words_per_group = group // per
    mask = (1 << bits) - 1
    k_in, n_out, mt = in_features, out_features, m_tile
    dims, m = lead_dims(lead)

    @T.prim_func(private=True)
    def kernel(var_x: T.handle, w: T.Buffer((blocks, words, ROWS), "uint32"), s: T.Buffer((blocks, groups, ROWS), scale_dtype),
               lo: T.Buffer((blocks, groups, ROWS), scale_dtype), var_y: T.handle):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8})
        x_in = T.match_buffer(var_x, (*dims, k_in), "float32")
        y_out = T.match_buffer(var_y, (*dims, n_out), "float32")
        x = T.decl_buffer((m, k_in), "float32", data=x_in.data)
        y = T.decl_buffer((m, n_out), "float32", data=y_out.data)
        for nb in T.parallel(blocks):
            for mo in range((m + mt - 1) // mt):
                # "global" scope: an alloca LLVM keeps in registers ("local" inside a parallel
                # loop would be a workspace allocation per iteration).
                acc = T.alloc_buffer((mt, ROWS), "float32")
                part = T.alloc_buffer((mt, ROWS), "float32")
                xsum = T.alloc_buffer((mt,), "float32")
                code = T.alloc_buffer((ROWS,), "float32")
                for mi, lane in T.grid(mt, ROWS):
                    acc[mi, lane] = T.float32(0)
                for g in range(groups):
                    for mi, lane in T.grid(mt, ROWS):
                        part[mi, lane] = T.float32(0)
                    for mi in range(mt):
                        xsum[mi] = T.float32(0)
                    for j in range(words_per_group):
                        for t in T.unroll(per):
                            for lane in T.vectorized(ROWS):
                                code[lane] = T.Cast("float32", T.bitwise_and(
                                    T.shift_right(w[nb, g * words_per_group + j, lane], T.uint32(t * bits)), T.uint32(mask)))
                            for mi in T.unroll(mt):
                                if mo * mt + mi < m:
                                    for lane in T.vectorized(ROWS):
                                        part[mi, lane] = part[mi, lane] + x[mo * mt + mi, g * group + j * per + t] * code[lane]
                                    xsum[mi] = xsum[mi] + x[mo * mt + mi, g * group + j * per + t]
                    for mi in T.unroll(mt):
                        for lane in T.vectorized(ROWS):  # w = code * scale + min, per group
                            acc[mi, lane] = (acc[mi, lane] + part[mi, lane] * T.Cast("float32", s[nb, g, lane])
                                             + xsum[mi] * T.Cast("float32", lo[nb, g, lane]))
                for mi in T.unroll(mt):
                    if mo * mt + mi < m:
                        for lane in T.vectorized(ROWS):
                            y[mo * mt + mi, nb * ROWS + lane] = acc[mi, lane]

    return kernel

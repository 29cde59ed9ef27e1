"""int8 activations for the CPU's 4-bit matmuls: the `q4f32_1a8` scheme's dot products.

The weights are q4f32_1's 4-bit codes (groups of 32, 16 rows interleaved by cpu_kernels) with
f16 scale and minimum. What changes is the input row x: before each matmul it is quantized per
group of 32 values, as llama.cpp quantizes activations to Q8_1 for its Q4_1 dot products:

    d = max|x| / 127     q = round_half_even(x * (1 / d)), in [-127, 127]     s = sum(x)   (exact f32)

and a group's contribution to output n is `f32(sum_k code[n,k] * q[k]) * (scale[n] * d) +
min[n] * s`. The integer sum is exact, so the only new error is q's rounding (a relative L2
error of 1-3% per matmul on random rows, tests/test_cpu_kernels.py; `sphere_aae check` holds the
scheme to the same layer cosine as every 4-bit scheme). The payoff is the instruction: AVX-512 VNNI's `vpdpbusd` multiplies
64 unsigned codes by 64 signed bytes and adds them in fours to 16 int32 lanes, so one instruction
does 64 multiply-adds where the f32 kernel's FMA does 16, with no code-to-float conversion.

Byte order. `vpdpbusd` pairs byte b of each weight lane with byte b of x's 32-bit word. A uint32
of codes holds 8 nibbles (element t at bits 4t); `w & 0x0F0F0F0F` gives the bytes of elements
0, 2, 4, 6 and `(w >> 4) & 0x0F0F0F0F` those of 1, 3, 5, 7. So x is stored as two int32 words
per code word, the even elements' bytes then the odd ones': the weights stay in the one layout
every runtime reads, and x (a few KB) takes the permutation. A quantized row is one int32 tensor
row, group after group: the group's 8 words of bytes, then the bits of its f32 d and s. One
output, not three, because the Relax VM pays ~1.5 us per output tensor and per tuple access on
each of the ~120 matmuls of a token (~0.4 ms a token with three, measured on SmolLM2).

Without VNNI (another x86 CPU, ARM) the same kernel sums the same integer products with plain
integer arithmetic: the same bits, slower. Only the CPU (LLVM) target has these kernels; the
scheme is refused for the other devices (see quantization.check_device).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from ..runtime.layouts import ROWS
from .cpu_kernels import lead_dims

if TYPE_CHECKING:  # group_quant imports this module
    from .group_quant import GroupQuantSpec

GROUP = 32  # x values per activation scale: the weights' group, so a group is one scale of each
QMAX = 127
CODE_BITS = 4  # the byte trick above is for nibbles
WORD_ELEMENTS = 32 // CODE_BITS
X_WORDS_PER_CODE_WORD = 2  # evens, odds
BYTE_WORDS = GROUP // WORD_ELEMENTS * X_WORDS_PER_CODE_WORD  # a group's int8 values, as int32 words
ROW_WORDS_PER_GROUP = BYTE_WORDS + 2  # ... then d and s


def eligible(spec: "GroupQuantSpec") -> bool:
    return spec.bits == CODE_BITS and spec.group_size == GROUP and not spec.symmetric


@functools.cache
def host_has_vnni() -> bool:
    """Whether this machine's CPU (the one CPU libraries are built for) has AVX-512 VNNI."""
    import tvm
    from tvm.target import codegen

    from ..build_info import host_cpu

    return bool(codegen.target_has_features("avx512vnni", tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})))


def _byte_position(t: int) -> int:
    """Where element t of a code word goes among the 8 bytes of x's two words."""
    return (t % 2) * 4 + t // 2


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numpy statement of the rule: x [m, k] f32 -> (q int8 [m, k] in element order,
    d [m, k / 32], s [m, k / 32]). The kernels must give the same q, d and s bits."""
    m, k = x.shape
    groups = x.astype(np.float32).reshape(m, k // GROUP, GROUP)
    amax = np.abs(groups).max(axis=2)
    d = (amax / np.float32(QMAX)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.rint(groups * inv[:, :, None]), -QMAX, QMAX).astype(np.int8)
    s = np.zeros((m, k // GROUP), np.float32)
    for i in range(GROUP):  # left to right, as the kernel adds
        s += groups[:, :, i]
    return q.reshape(m, k), d, s


def pack_rows(q: np.ndarray, d: np.ndarray, s: np.ndarray) -> np.ndarray:
    """quantize_rows' output in the kernels' layout: int32 [m, groups * ROW_WORDS_PER_GROUP]."""
    m, k = q.shape
    order = np.argsort([_byte_position(t) for t in range(WORD_ELEMENTS)])
    byte_words = np.ascontiguousarray(q.reshape(m, k // WORD_ELEMENTS, WORD_ELEMENTS)[:, :, order]).view(np.int32)
    packed = np.empty((m, k // GROUP, ROW_WORDS_PER_GROUP), np.int32)
    packed[:, :, :BYTE_WORDS] = byte_words.reshape(m, k // GROUP, BYTE_WORDS)
    packed[:, :, BYTE_WORDS] = d.astype(np.float32).view(np.int32)
    packed[:, :, BYTE_WORDS + 1] = s.astype(np.float32).view(np.int32)
    return packed.reshape(m, -1)


def matmul_reference(x: np.ndarray, stored: dict[str, np.ndarray], in_features: int) -> np.ndarray:
    """y = x @ W^T under the scheme's rule, from the stored (not interleaved) q4 tensors."""
    from .group_quant import GroupQuantSpec, unpack_codes  # here: group_quant imports this module

    q, d, s = quantize_rows(x)
    codes = unpack_codes(stored["q_weight"], in_features, GroupQuantSpec(bits=CODE_BITS, group_size=GROUP))
    m, groups = x.shape[0], in_features // GROUP
    isum = np.einsum("ngk,mgk->mng", codes.reshape(-1, groups, GROUP).astype(np.int64),
                     q.reshape(m, groups, GROUP).astype(np.int64))
    scale, low = stored["q_scale"].astype(np.float32), stored["q_min"].astype(np.float32)
    terms = isum.astype(np.float32) * (scale[None] * d[:, None, :]) + low[None] * s[:, None, :]
    return terms.sum(axis=2, dtype=np.float32)


def quantize_kernel(in_features: int, parallel: bool = True, lead: int = 1) -> tirx.PrimFunc:
    """x [..., k] f32 -> int32 [..., groups * ROW_WORDS_PER_GROUP] (pack_rows' layout), over
    `lead` leading dimensions. Rows in parallel, or (`parallel=False`, for decode's single row:
    ~1 us of work) without waking the thread pool."""
    groups, k_in, gw = in_features // GROUP, in_features, ROW_WORDS_PER_GROUP
    rows_loop = T.parallel if parallel else T.serial
    dims, m = lead_dims(lead)

    @T.prim_func(private=True, check_well_formed=False)  # the TIRx verifier knows no blocks
    def kernel(var_x: T.handle, var_q: T.handle):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8})
        x_in = T.match_buffer(var_x, (*dims, k_in), "float32")
        xq_out = T.match_buffer(var_q, (*dims, groups * gw), "int32")
        # A root block first: Relax asks a one-input kernel whether it is a reshape, and reads that block.
        with T.sblock("root"):
            x = T.decl_buffer((m, k_in), "float32", data=x_in.data)
            xq = T.decl_buffer((m, groups * gw), "int32", data=xq_out.data)
            for r in rows_loop(m):
                for g in range(groups):
                    stat = T.alloc_buffer((3,), "float32")  # max|x|, sum, 1 / d
                    stat[0] = T.float32(0)
                    stat[1] = T.float32(0)
                    for i in range(GROUP):
                        stat[0] = T.max(stat[0], T.fabs(x[r, g * GROUP + i]))
                        stat[1] = stat[1] + x[r, g * GROUP + i]
                    stat[0] = stat[0] / T.float32(QMAX)  # now d
                    xq[r, g * gw + BYTE_WORDS] = T.reinterpret("int32", stat[0])
                    xq[r, g * gw + BYTE_WORDS + 1] = T.reinterpret("int32", stat[1])
                    stat[2] = T.if_then_else(stat[0] > T.float32(0), T.float32(1) / stat[0], T.float32(0))
                    for j, half in T.grid(GROUP // WORD_ELEMENTS, X_WORDS_PER_CODE_WORD):
                        packed = T.alloc_buffer((1,), "int32")
                        packed[0] = 0
                        for b in T.unroll(4):
                            code = T.Cast("int32", T.max(T.min(T.round(x[r, g * GROUP + j * WORD_ELEMENTS + b * 2 + half] * stat[2]),
                                                              T.float32(QMAX)), T.float32(-QMAX)))
                            packed[0] = T.bitwise_or(packed[0], T.shift_left(T.bitwise_and(code, 255), b * 8))
                        xq[r, g * gw + j * X_WORDS_PER_CODE_WORD + half] = packed[0]

    return kernel


def _vnni_dot(acc, codes, x_word):
    """acc (int32x16) + per lane: sum over 4 bytes of codes (u8) * x_word (s8)."""
    return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", acc,
                                   T.reinterpret("int8x64", codes), T.reinterpret("int8x64", T.broadcast(x_word, ROWS)))


def _plain_dot(acc, codes, x_word):
    """The same sum in plain integer arithmetic (CPUs without VNNI)."""
    total = acc
    for b in range(4):
        code = T.Cast("int32x16", T.bitwise_and(T.shift_right(codes, T.broadcast(T.uint32(8 * b), ROWS)),
                                                 T.broadcast(T.uint32(255), ROWS)))
        x_byte = T.Cast("int32", T.Cast("int8", T.shift_right(x_word, 8 * b)))
        total = total + code * T.broadcast(x_byte, ROWS)
    return total


def matmul_kernel(out_features: int, in_features: int, m_tile: int, vnni: bool, scale_dtype: str = "float16",
                  lead: int = 1) -> tirx.PrimFunc:
    """y[..., n] = the scheme's sum over groups, from quantize_kernel's rows and the 16-row
    interleaved q4 weights, over `lead` leading dimensions.

    One parallel task per 16 output rows, x rows in tiles of `m_tile` sharing each loaded code
    word; per group, 8 dot instructions per x row into int32 lanes, then one convert and two
    FMAs into the f32 accumulators."""
    words, groups, blocks = in_features // WORD_ELEMENTS, in_features // GROUP, out_features // ROWS
    words_per_group, gw = GROUP // WORD_ELEMENTS, ROW_WORDS_PER_GROUP
    n_out, mt = out_features, m_tile
    dot = _vnni_dot if vnni else _plain_dot
    nibbles = T.uint32(0x0F0F0F0F)
    lanes = tirx.Ramp(0, 1, ROWS)  # the 16 rows of a block: one vector
    dims, m = lead_dims(lead)

    @T.prim_func(private=True)
    def kernel(var_q: T.handle, w: T.Buffer((blocks, words, ROWS), "uint32"), sc: T.Buffer((blocks, groups, ROWS), scale_dtype),
               lo: T.Buffer((blocks, groups, ROWS), scale_dtype), var_y: T.handle):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8})
        xq_in = T.match_buffer(var_q, (*dims, groups * gw), "int32")
        y_out = T.match_buffer(var_y, (*dims, n_out), "float32")
        xq = T.decl_buffer((m, groups * gw), "int32", data=xq_in.data)
        y = T.decl_buffer((m, n_out), "float32", data=y_out.data)
        for nb in T.parallel(blocks):
            for mo in range((m + mt - 1) // mt):
                acc = T.alloc_buffer((mt, ROWS), "float32")
                isum = T.alloc_buffer((mt, ROWS), "int32")
                for mi in T.unroll(mt):
                    acc[mi, lanes] = T.broadcast(T.float32(0), ROWS)
                for g in range(groups):
                    for mi in T.unroll(mt):
                        isum[mi, lanes] = T.broadcast(T.int32(0), ROWS)
                    for j in T.unroll(words_per_group):
                        word = w[nb, g * words_per_group + j, lanes]
                        evens = T.bitwise_and(word, T.broadcast(nibbles, ROWS))
                        odds = T.bitwise_and(T.shift_right(word, T.broadcast(T.uint32(4), ROWS)), T.broadcast(nibbles, ROWS))
                        for mi in T.unroll(mt):
                            if mo * mt + mi < m:
                                isum[mi, lanes] = dot(isum[mi, lanes], evens, xq[mo * mt + mi, g * gw + j * 2])
                                isum[mi, lanes] = dot(isum[mi, lanes], odds, xq[mo * mt + mi, g * gw + j * 2 + 1])
                    for mi in T.unroll(mt):
                        if mo * mt + mi < m:
                            d = T.reinterpret("float32", xq[mo * mt + mi, g * gw + BYTE_WORDS])
                            s = T.reinterpret("float32", xq[mo * mt + mi, g * gw + BYTE_WORDS + 1])
                            acc[mi, lanes] = (acc[mi, lanes] + T.Cast("float32x16", isum[mi, lanes])
                                              * (T.Cast("float32x16", sc[nb, g, lanes]) * T.broadcast(d, ROWS))
                                              + T.Cast("float32x16", lo[nb, g, lanes]) * T.broadcast(s, ROWS))
                for mi in T.unroll(mt):
                    if mo * mt + mi < m:
                        y[mo * mt + mi, T.ramp(nb * ROWS, 1, ROWS)] = acc[mi, lanes]

    return kernel

"""Symmetric group quantization of weight matrices (the `q4f*_1` family, MLC naming).

A weight row of `in` values is split into groups of `group_size`; each group stores one scale
(`max|w| / max_int`, in the model dtype) and `bits`-bit unsigned codes `round(w / scale) + max_int`,
packed `32 // bits` to a uint32 along the input dimension. Dequantization is
`(code - max_int) * scale`; it is written as a TE compute so TVM fuses it into the matmul that
consumes it (on WebGPU the GEMV kernel reads packed codes straight from the shard bytes).

Rows whose length is not a multiple of `group_size` are zero-padded on the right; the padding is
never read back because the dequantize compute only covers the true `in` columns.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op


@dataclasses.dataclass(frozen=True)
class GroupQuantSpec:
    bits: int = 4
    group_size: int = 32
    storage_dtype: str = "uint32"

    @property
    def per_storage(self) -> int:
        return 32 // self.bits

    @property
    def max_int(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def padded_in(self, in_features: int) -> int:
        return -(-in_features // self.group_size) * self.group_size

    def shapes(self, out_features: int, in_features: int) -> tuple[tuple[int, int], tuple[int, int]]:
        padded = self.padded_in(in_features)
        return (out_features, padded // self.per_storage), (out_features, padded // self.group_size)


def quantize_array(weight: np.ndarray, spec: GroupQuantSpec, scale_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """float [out, in] -> (packed codes uint32 [out, in_padded/per_storage], scales [out, groups])."""
    out_features, in_features = weight.shape
    padded = spec.padded_in(in_features)
    w = np.zeros((out_features, padded), dtype=np.float32)
    w[:, :in_features] = weight
    groups = w.reshape(out_features, padded // spec.group_size, spec.group_size)
    # Scales are stored in the model dtype; quantize against the *rounded* scale so that
    # dequantization in that dtype reproduces exactly what we chose here.
    scale = (np.abs(groups).max(axis=2) / spec.max_int).astype(scale_dtype)
    safe = np.where(scale == 0, 1, scale).astype(np.float32)
    codes = np.clip(np.rint(groups / safe[:, :, None]) + spec.max_int, 0, 2 * spec.max_int).astype(np.uint32)
    codes = codes.reshape(out_features, padded // spec.per_storage, spec.per_storage)
    shifts = (np.arange(spec.per_storage, dtype=np.uint32) * spec.bits)[None, None, :]
    packed = np.bitwise_or.reduce(codes << shifts, axis=2).astype(np.uint32)
    return packed, scale


def dequantize_array(packed: np.ndarray, scale: np.ndarray, in_features: int, spec: GroupQuantSpec) -> np.ndarray:
    """The numpy twin of the compiled dequantize, for tests and for `check`'s reference weights."""
    shifts = (np.arange(spec.per_storage, dtype=np.uint32) * spec.bits)[None, None, :]
    codes = (packed[:, :, None] >> shifts) & np.uint32((1 << spec.bits) - 1)
    codes = codes.reshape(packed.shape[0], -1)[:, :in_features].astype(np.float32) - spec.max_int
    scales = np.repeat(scale.astype(np.float32), spec.group_size, axis=1)[:, :in_features]
    return codes * scales


def _dequantize_te(q_weight: te.Tensor, q_scale: te.Tensor, rows, in_features: int, spec: GroupQuantSpec, dtype: str):
    mask = tirx.const((1 << spec.bits) - 1, spec.storage_dtype)

    def element(i, j):
        word = q_weight[i, j // spec.per_storage]
        shift = ((j % spec.per_storage) * spec.bits).astype(spec.storage_dtype)
        code = tirx.bitwise_and(tirx.shift_right(word, shift), mask)
        return (code.astype(dtype) - tirx.const(spec.max_int, dtype)) * q_scale[i, j // spec.group_size]

    return te.compute((rows, in_features), element, name="dequantize")


class GroupQuantLinear(nn.Module):
    """Drop-in for nn.Linear (no bias) holding packed codes + scales."""

    def __init__(self, in_features: int, out_features: int, spec: GroupQuantSpec, dtype: str):
        self.in_features = in_features
        self.out_features = out_features
        self.spec = spec
        self.dtype = dtype
        w_shape, s_shape = spec.shapes(out_features, in_features)
        self.q_weight = nn.Parameter(w_shape, spec.storage_dtype)
        self.q_scale = nn.Parameter(s_shape, dtype)

    def dequantized_weight(self) -> Tensor:
        return op.tensor_expr_op(
            lambda w, s: _dequantize_te(w, s, self.out_features, self.in_features, self.spec, self.dtype),
            "dequantize",
            args=[self.q_weight, self.q_scale],
        )

    def forward(self, x: Tensor) -> Tensor:
        return op.matmul(x, op.permute_dims(self.dequantized_weight()))


class GroupQuantEmbedding(nn.Module):
    """Drop-in for models.base.Embedding: gathers packed rows, dequantizes only those."""

    def __init__(self, num: int, dim: int, spec: GroupQuantSpec, dtype: str):
        self.num = num
        self.dim = dim
        self.spec = spec
        self.dtype = dtype
        w_shape, s_shape = spec.shapes(num, dim)
        self.q_weight = nn.Parameter(w_shape, spec.storage_dtype)
        self.q_scale = nn.Parameter(s_shape, dtype)

    def forward(self, ids: Tensor) -> Tensor:
        flat = op.reshape(ids, [-1]) if ids.ndim != 1 else ids
        rows_w = op.take(self.q_weight, flat, axis=0)
        rows_s = op.take(self.q_scale, flat, axis=0)
        out = op.tensor_expr_op(
            lambda w, s: _dequantize_te(w, s, w.shape[0], self.dim, self.spec, self.dtype),
            "dequantize_rows",
            args=[rows_w, rows_s],
        )
        if ids.ndim != 1:
            out = op.reshape(out, [*ids.shape, self.dim])
        return out

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        weight = op.tensor_expr_op(
            lambda w, s: _dequantize_te(w, s, self.num, self.dim, self.spec, self.dtype),
            "dequantize",
            args=[self.q_weight, self.q_scale],
        )
        return op.matmul(hidden, op.permute_dims(weight))

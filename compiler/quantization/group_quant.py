"""Group quantization of weight matrices: `bits`-bit codes, one scale (and minimum) per group.

A weight row of `in` values is split into groups of `group_size`; codes are packed `32 // bits`
to a uint32 along the input dimension. Two flavours share everything else:

- symmetric (`q*_0`, MLC's q4f16_1 numerics): scale = max|w| / max_int, code = round(w/scale) +
  max_int, w = (code - max_int) * scale;
- asymmetric (`q*_1`, like GGUF's Q4_1): scale = (max - min) / (2^bits - 1), code =
  round((w - min) / scale), w = code * scale + min. One more value per group, but it uses all
  2^bits levels over the group's actual range; measured on SmolLM2-135M this is the difference
  between a final-layer cosine of 0.84 and 0.999 (see the issue notes).

Dequantization is a TE compute so TVM fuses it into the matmul that consumes it (on WebGPU the
GEMV kernel reads packed codes straight from the shard bytes).

Rows whose length is not a multiple of `group_size` are zero-padded on the right; the padding is
never read back because the dequantize compute only covers the true `in` columns.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from . import cpu_kernels, int8_activations


@dataclasses.dataclass(frozen=True)
class GroupQuantSpec:
    bits: int = 4
    group_size: int = 32
    symmetric: bool = False
    storage_dtype: str = "uint32"

    @property
    def per_storage(self) -> int:
        return 32 // self.bits

    @property
    def max_int(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def max_code(self) -> int:
        return 2 * self.max_int if self.symmetric else 2**self.bits - 1

    def padded_in(self, in_features: int) -> int:
        return -(-in_features // self.group_size) * self.group_size

    def shapes(self, out_features: int, in_features: int) -> tuple[tuple[int, int], tuple[int, int]]:
        padded = self.padded_in(in_features)
        return (out_features, padded // self.per_storage), (out_features, padded // self.group_size)


def quantize_array(weight: np.ndarray, spec: GroupQuantSpec, scale_dtype: str) -> dict[str, np.ndarray]:
    """float [out, in] -> {"q_weight": uint32 codes, "q_scale": [out, groups], ("q_min": [out, groups])}."""
    out_features, in_features = weight.shape
    padded = spec.padded_in(in_features)
    w = np.zeros((out_features, padded), dtype=np.float32)
    w[:, :in_features] = weight
    if padded != in_features:
        # Pad with a value already in the row's last group so padding never widens its range.
        w[:, in_features:] = w[:, in_features - 1 : in_features]
    groups = w.reshape(out_features, padded // spec.group_size, spec.group_size)
    # Scales (and minima) are stored in the model dtype; codes are chosen against the *rounded*
    # values so that dequantization in that dtype reproduces exactly what we chose here.
    if spec.symmetric:
        scale = (np.abs(groups).max(axis=2) / spec.max_int).astype(scale_dtype)
        safe = np.where(scale == 0, 1, scale).astype(np.float32)
        codes = np.rint(groups / safe[:, :, None]) + spec.max_int
        extra: dict[str, np.ndarray] = {}
    else:
        low = groups.min(axis=2).astype(scale_dtype)
        scale = ((groups.max(axis=2) - low.astype(np.float32)) / spec.max_code).astype(scale_dtype)
        safe = np.where(scale == 0, 1, scale).astype(np.float32)
        codes = np.rint((groups - low.astype(np.float32)[:, :, None]) / safe[:, :, None])
        extra = {"q_min": low}
    codes = np.clip(codes, 0, spec.max_code).astype(np.uint32)
    codes = codes.reshape(out_features, padded // spec.per_storage, spec.per_storage)
    shifts = (np.arange(spec.per_storage, dtype=np.uint32) * spec.bits)[None, None, :]
    packed = np.bitwise_or.reduce(codes << shifts, axis=2).astype(np.uint32)
    return {"q_weight": packed, "q_scale": scale, **extra}


def unpack_codes(packed: np.ndarray, in_features: int, spec: GroupQuantSpec) -> np.ndarray:
    """Stored uint32 words [out, words] -> the codes [out, in_features] (uint32)."""
    shifts = (np.arange(spec.per_storage, dtype=np.uint32) * spec.bits)[None, None, :]
    codes = (packed[:, :, None] >> shifts) & np.uint32((1 << spec.bits) - 1)
    return codes.reshape(packed.shape[0], -1)[:, :in_features]


def dequantize_array(stored: dict[str, np.ndarray], in_features: int, spec: GroupQuantSpec) -> np.ndarray:
    """The numpy twin of the compiled dequantize, for tests and for `check`'s reference weights."""
    codes = unpack_codes(stored["q_weight"], in_features, spec).astype(np.float32)
    per_elem = lambda a: np.repeat(a.astype(np.float32), spec.group_size, axis=1)[:, :in_features]
    if spec.symmetric:
        return (codes - spec.max_int) * per_elem(stored["q_scale"])
    return codes * per_elem(stored["q_scale"]) + per_elem(stored["q_min"])


def _dequantize_te(tensors: list[te.Tensor], rows, in_features: int, spec: GroupQuantSpec, dtype: str, row=None):
    """Rows of the dequantized matrix; `row(i)` gives the matrix row of output row i when the
    stored tensors are the whole matrix in the interleaved CPU layout (an embedding lookup)."""
    q_weight, q_scale = tensors[0], tensors[1]
    mask = tirx.const((1 << spec.bits) - 1, spec.storage_dtype)

    def at(t: te.Tensor, i, col):
        if row is None:
            return t[i, col]
        r = row(i)
        return t[r // cpu_kernels.ROWS, col, r % cpu_kernels.ROWS]

    def element(i, j):
        word = at(q_weight, i, j // spec.per_storage)
        shift = ((j % spec.per_storage) * spec.bits).astype(spec.storage_dtype)
        code = tirx.bitwise_and(tirx.shift_right(word, shift), mask).astype(dtype)
        group = j // spec.group_size
        if spec.symmetric:
            return (code - tirx.const(spec.max_int, dtype)) * at(q_scale, i, group).astype(dtype)
        return code * at(q_scale, i, group).astype(dtype) + at(tensors[2], i, group).astype(dtype)

    return te.compute((rows, in_features), element, name="dequantize")


def _cpu_matmul(x: Tensor, stored: list[Tensor], out_features: int, in_features: int, spec: GroupQuantSpec,
                name: str, int8_x: bool) -> Tensor:
    """x[..., in] @ W^T with the hand-written kernels on the interleaved layout: cpu_kernels'
    (f32 x) or, with `int8_x`, int8_activations' (x quantized first, then integer dot products).
    The kernels take x's leading dimensions as they are (no reshape around them)."""
    lead = list(x.shape[:-1])
    single = all(isinstance(d, int) and d == 1 for d in lead)  # decode: one row, no tile bookkeeping
    m_tile = 1 if single else cpu_kernels.M_TILE
    result = Tensor.placeholder([*lead, out_features], "float32")
    if not int8_x:
        kernel = cpu_kernels.matmul_kernel(out_features, in_features, spec, m_tile, len(lead), stored[1].dtype)
        return op.tensor_ir_op(kernel, name, args=[x, *stored], out=result)
    row_words = in_features // int8_activations.GROUP * int8_activations.ROW_WORDS_PER_GROUP
    quantize = int8_activations.quantize_kernel(in_features, parallel=not single, lead=len(lead))
    x_int8 = op.tensor_ir_op(quantize, "quantize_activations", args=[x], out=Tensor.placeholder([*lead, row_words], "int32"))
    kernel = int8_activations.matmul_kernel(out_features, in_features, m_tile, int8_activations.host_has_vnni(), stored[1].dtype,
                                            len(lead))
    return op.tensor_ir_op(kernel, name, args=[x_int8, *stored], out=result)


class _QuantizedWeight(nn.Module):
    """The stored tensors of one quantized matrix: codes, scales and (asymmetric) minima."""

    def _declare(self, out_features: int, in_features: int, spec: GroupQuantSpec, dtype: str, layout: str | None,
                 scale_dtype: str | None) -> None:
        """`layout`: None for the stored layout, cpu_kernels.LAYOUT for 16 interleaved rows
        (the native runtime repacks the stored tensors into it when it loads them). Scales and
        minima are stored in `scale_dtype` (None: the model dtype)."""
        w_shape, s_shape = spec.shapes(out_features, in_features)
        if layout is not None:
            w_shape, s_shape = cpu_kernels.interleaved_shape(w_shape), cpu_kernels.interleaved_shape(s_shape)
        self.layout = layout
        self.q_weight = nn.Parameter(w_shape, spec.storage_dtype)
        self.q_scale = nn.Parameter(s_shape, scale_dtype or dtype)
        if not spec.symmetric:
            self.q_min = nn.Parameter(s_shape, scale_dtype or dtype)

    def _stored(self) -> list[Tensor]:
        return [self.q_weight, self.q_scale] + ([] if self.spec.symmetric else [self.q_min])

    def _dequantize(self, tensors: list[Tensor], rows, in_features: int, name: str) -> Tensor:
        return op.tensor_expr_op(
            lambda *ts: _dequantize_te(list(ts), rows if rows is not None else ts[0].shape[0], in_features, self.spec, self.dtype),
            name,
            args=tensors,
        )


def _matmul_dequantized(x: te.Tensor, stored: list[te.Tensor], out_features: int, in_features: int,
                        spec: GroupQuantSpec, dtype: str) -> te.Tensor:
    """x[..., in] @ dequantize(stored)[out, in]^T as ONE kernel: a dequantize block feeding a
    matmul block. Relax's FuseOps never fuses a producer into a matmul, so written as two ops the
    whole dequantized weight would be materialised on every call; in one PrimFunc, dlight's
    GEMV/Matmul rules (GPU) and our CPU rules inline the dequantize into the reduction."""
    weight = _dequantize_te(stored, out_features, in_features, spec, dtype)
    k = te.reduce_axis((0, in_features), name="k")
    lead = list(x.shape[:-1])
    return te.compute(
        [*lead, out_features],
        lambda *idx: te.sum(x[(*idx[:-1], k)] * weight[idx[-1], k], axis=k),
        name="matmul",
    )


class GroupQuantLinear(_QuantizedWeight):
    """Drop-in for nn.Linear holding packed codes + scales (+ minima); a bias, when the layer
    has one, stays a float vector in the model dtype (it is `out` numbers, not a matrix)."""

    def __init__(self, in_features: int, out_features: int, spec: GroupQuantSpec, dtype: str, bias: bool = False,
                 layout: str | None = None, int8_activations: bool = False, scale_dtype: str | None = None):
        self.in_features = in_features
        self.int8_activations = int8_activations
        self.out_features = out_features
        self.spec = spec
        self.dtype = dtype
        self._declare(out_features, in_features, spec, dtype, layout, scale_dtype)
        self.bias = nn.Parameter((out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.layout is not None:
            out = _cpu_matmul(x, self._stored(), self.out_features, self.in_features, self.spec, "quantized_matmul",
                              self.int8_activations)
        else:
            out = op.tensor_expr_op(
                lambda xt, *ts: _matmul_dequantized(xt, list(ts), self.out_features, self.in_features, self.spec, self.dtype),
                "quantized_matmul",
                args=[x, *self._stored()],
            )
        return out + self.bias if self.bias is not None else out


class GroupQuantEmbedding(_QuantizedWeight):
    """Drop-in for models.base.Embedding: gathers packed rows, dequantizes only those."""

    def __init__(self, num: int, dim: int, spec: GroupQuantSpec, dtype: str, layout: str | None = None,
                 int8_activations: bool = False, scale_dtype: str | None = None):
        self.num = num
        self.int8_activations = int8_activations  # for the tied lm_head only: the lookup stays exact
        self.dim = dim
        self.spec = spec
        self.dtype = dtype
        self._declare(num, dim, spec, dtype, layout, scale_dtype)

    def forward(self, ids: Tensor) -> Tensor:
        flat = op.reshape(ids, [-1]) if ids.ndim != 1 else ids
        if self.layout is not None:  # row r of the matrix is lane r % 16 of block r // 16
            out = op.tensor_expr_op(
                lambda ids_te, *ts: _dequantize_te(list(ts), ids_te.shape[0], self.dim, self.spec, self.dtype,
                                                   row=lambda i: ids_te[i]),
                "dequantize_rows", args=[flat, *self._stored()])
        else:
            rows = [op.take(t, flat, axis=0) for t in self._stored()]
            out = self._dequantize(rows, None, self.dim, "dequantize_rows")
        if ids.ndim != 1:
            out = op.reshape(out, [*ids.shape, self.dim])
        return out

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        if self.layout is not None:
            return _cpu_matmul(hidden, self._stored(), self.num, self.dim, self.spec, "quantized_lm_head", self.int8_activations)
        return op.tensor_expr_op(
            lambda xt, *ts: _matmul_dequantized(xt, list(ts), self.num, self.dim, self.spec, self.dtype),
            "quantized_lm_head",
            args=[hidden, *self._stored()],
        )

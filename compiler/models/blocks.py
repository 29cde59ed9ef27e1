"""Building blocks every decoder is composed of: norms, rotary embedding, attention, MLPs, and a
vocabulary-sized embedding / LM head that may be split into parts.

Each block takes its options from `DecoderConfig` (decoder.py); an architecture file only sets
options, it never writes a network of its own. Rotary embedding is applied by TVM's KV cache
(fused with its q/k/v split) where it computes what transformers does (one base; no scaling or
llama3), and here, in the model, for everything else: layers with different rope bases (Gemma 3),
longrope factors (Phi-3), linear and yarn scaling (see DecoderConfig.rope_in_cache).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from .base import Embedding


# -- norms ---------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm over the last axis. `weight_offset=1` is Gemma's `x * (1 + w)` form: the stored
    weight stays the checkpoint's, the offset is added in the graph (a [dim] add, free)."""

    def __init__(self, dim: int, eps: float, weight_offset: float = 0.0):
        self.weight = nn.Parameter((dim,))
        self.eps = eps
        self.weight_offset = weight_offset

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight if not self.weight_offset else self.weight + self.weight_offset
        return op.rms_norm(x, weight, axes=[-1], epsilon=self.eps)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias over the last axis (Phi-style models)."""

    def __init__(self, dim: int, eps: float):
        self.weight = nn.Parameter((dim,))
        self.bias = nn.Parameter((dim,))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return op.layer_norm(x, [x.shape[-1]], self.weight, self.bias, eps=self.eps)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim, eps)
    if kind == "rms_offset":
        return RMSNorm(dim, eps, weight_offset=1.0)
    if kind == "layer":
        return LayerNorm(dim, eps)
    raise ValueError(f"unknown norm kind {kind!r}")


# -- rotary position embedding --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """One layer's rotary embedding: which dims rotate, at which frequencies, scaled how."""

    rotary_dim: int
    inv_freq: tuple[float, ...]  # rotary_dim / 2 frequencies (scaling already applied)
    attention_factor: float = 1.0  # multiplies cos and sin (longrope / yarn)
    interleaved: bool = False  # rotate (x[2i], x[2i+1]) instead of HF's (x[i], x[i + d/2])


def rope_inv_freq(theta: float, rotary_dim: int, scaling: dict[str, Any] | None) -> tuple[np.ndarray, float]:
    """Frequencies and attention factor for one rope base, as transformers computes them in
    float32 (`ROPE_INIT_FUNCTIONS`): default, linear, llama3 and longrope (short factors)."""
    exponent = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
    inv = (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return (inv / np.float32(scaling["factor"])).astype(np.float32), 1.0
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        orig = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > orig / low, inv / factor, inv)
        smooth = (orig / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < orig / high) & ~(wavelen > orig / low)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    if kind == "longrope":
        # The short factors: our context window never exceeds the original one (decoder.py
        # refuses the long range), where transformers uses the short factors too.
        ext = np.asarray(scaling["short_factor"], dtype=np.float32)
        inv = (1.0 / (ext * np.float32(theta) ** exponent)).astype(np.float32)
        factor = float(scaling["max_position_embeddings"]) / float(scaling["original_max_position_embeddings"])
        attn = scaling.get("attention_factor")
        if attn is None:
            attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(scaling["original_max_position_embeddings"]))
        return inv, float(attn)
    if kind == "yarn":
        return _yarn_inv_freq(theta, rotary_dim, scaling, exponent)
    raise ValueError(f"rope type {kind!r} has no frequency rule here")


def _yarn_inv_freq(theta: float, rotary_dim: int, scaling: dict[str, Any], exponent: np.ndarray) -> tuple[np.ndarray, float]:
    """YaRN: interpolated low frequencies, extrapolated high ones, a linear ramp between the
    correction dims, and the attention factor 0.1 ln(factor) + 1 on cos / sin."""
    factor = float(scaling["factor"])
    orig = float(scaling["original_max_position_embeddings"])
    beta_fast, beta_slow = float(scaling.get("beta_fast") or 32), float(scaling.get("beta_slow") or 1)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = scaling.get("attention_factor")
    if attn is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (rotary_dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(rotary_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = np.float32(theta) ** exponent
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv.astype(np.float32), float(attn)


def apply_rope(x: Tensor, positions: Tensor, spec: RopeSpec) -> Tensor:
    """x: [b, s, heads, head_dim]; positions: int32[b * s] (the KV cache's query positions)."""
    inv_freq = Tensor.from_const(np.asarray(spec.inv_freq, dtype=np.float32))
    rot, half = spec.rotary_dim, spec.rotary_dim // 2

    def compute(x_te: te.Tensor, pos_te: te.Tensor, freq_te: te.Tensor):
        _, s, _, d = x_te.shape

        def element(i, j, h, k):
            p = pos_te[i * s + j].astype("float32")
            if spec.interleaved:
                pair = k // 2
                partner = tirx.if_then_else(k % 2 == 0, -x_te[i, j, h, k + 1], x_te[i, j, h, k - 1])
            else:
                pair = tirx.if_then_else(k < half, k, k - half)
                partner = tirx.if_then_else(k < half, -x_te[i, j, h, k + half], x_te[i, j, h, k - half])
            angle = p * freq_te[pair]
            cos = tirx.cos(angle) * tirx.const(spec.attention_factor, "float32")
            sin = tirx.sin(angle) * tirx.const(spec.attention_factor, "float32")
            xv = x_te[i, j, h, k]
            rotated = (xv.astype("float32") * cos + partner.astype("float32") * sin).astype(x_te.dtype)
            return rotated if rot == d else tirx.if_then_else(k < rot, rotated, xv)

        return te.compute(x_te.shape, element, name="rope")

    return op.tensor_expr_op(compute, "rope", args=[x, positions, inv_freq])


# -- attention -----------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head / grouped-query attention on TVM's paged KV cache.

    Options: q/k/v bias, output bias, per-head q/k RMSNorm (Qwen3, Gemma 3), the query scale
    (Gemma 2's query_pre_attn_scalar), per-layer rope. The cache's own kernels handle causal
    masking, sliding windows and (via the model's kernel patch) logit soft-capping.
    """

    def __init__(self, cfg: Any, layer_id: int):
        self.layer_id = layer_id
        self.num_q_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.sm_scale = cfg.attention_scale
        # None: TVM's KV cache rotates q/k itself (fused with its split; see rope_in_cache).
        self.rope = None if cfg.rope_in_cache else cfg.rope_for_layer(layer_id)
        total = (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, total, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.num_q_heads * self.head_dim, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            offset = 1.0 if cfg.norm == "rms_offset" else 0.0
            self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps, offset)
            self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps, offset)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, hidden: Tensor, kv_cache: PagedKVCache, positions: Tensor) -> Tensor:
        b, s, _ = hidden.shape
        hq, hkv = self.num_q_heads, self.num_kv_heads
        qkv = op.reshape(self.qkv_proj(hidden), (b, s, hq + 2 * hkv, self.head_dim))
        if self.q_norm is not None or self.rope is not None:
            q, k, v = op.split(qkv, [hq, hq + hkv], axis=2)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if self.rope is not None:
                q, k = apply_rope(q, positions, self.rope), apply_rope(k, positions, self.rope)
            qkv = op.concat([q, k, v], dim=2)
        out = kv_cache.attention_with_fused_qkv(self.layer_id, qkv, hq, sm_scale=self.sm_scale)
        return self.o_proj(op.reshape(out, (b, s, hq * self.head_dim)))


# -- MLPs ----------------------------------------------------------------------------------------


def activation(name: str, x: Tensor) -> Tensor:
    if name == "silu":
        return op.silu(x)
    if name == "gelu_tanh":
        return op.gelu(x, approximate="tanh")
    if name == "gelu":
        return op.gelu(x)
    raise ValueError(f"unknown activation {name!r}")


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with gate and up fused into one matmul: SwiGLU (silu), GeGLU
    (tanh-GELU)."""

    def __init__(self, cfg: Any):
        self.act = cfg.hidden_act
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(activation(self.act, gate) * up)


class PlainMLP(nn.Module):
    """fc2(act(fc1(x))): GPT-style MLP (Phi-1.5/2)."""

    def __init__(self, cfg: Any):
        self.act = cfg.hidden_act
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(activation(self.act, self.fc1(x)))


def make_mlp(cfg: Any) -> nn.Module:
    return GatedMLP(cfg) if cfg.mlp == "gated" else PlainMLP(cfg)


# -- vocabulary-sized tensors -------------------------------------------------------------------


def vocab_part_rows(vocab_size: int, hidden_size: int, max_bytes: int) -> list[int]:
    """Rows of each part when a [vocab, hidden] float32 matrix is split so that no part exceeds
    `max_bytes` (a WebGPU storage binding). One part when it fits. Parts are multiples of 64 rows
    except the last, so quantized rows never straddle parts."""
    per_part = max(64, (max_bytes // (hidden_size * 4)) // 64 * 64)
    if vocab_size <= per_part:
        return [vocab_size]
    rows = [per_part] * (vocab_size // per_part)
    if vocab_size % per_part:
        rows.append(vocab_size % per_part)
    return rows


class VocabEmbedding(nn.Module):
    """The token embedding (and tied LM head) as one or several row parts.

    Large vocabularies (Gemma's 262144, Qwen's 151936) exceed WebGPU's storage-binding limit as
    one tensor; as parts each is its own binding. Each part is a plain `Embedding`, so
    quantization swaps parts like any embedding.
    """

    def __init__(self, part_rows: list[int], dim: int):
        assert len(part_rows) > 1, "a vocabulary that fits one binding is a plain Embedding"
        self.part_rows = list(part_rows)
        self.dim = dim
        self.parts = nn.ModuleList([Embedding(rows, dim) for rows in part_rows])

    def forward(self, ids: Tensor) -> Tensor:
        # Gather from every part with the ids clipped into it, then keep, per token, the part
        # the id belongs to: where(id < end_0, part_0, where(id < end_1, part_1, ... last)).
        ends = np.cumsum(self.part_rows).tolist()
        starts = [0] + ends[:-1]
        out = None
        for p in reversed(range(len(self.parts))):
            local = op.maximum(op.minimum(ids - starts[p], op.full(ids.shape, self.part_rows[p] - 1, "int32")),
                               op.zeros(ids.shape, "int32"))
            rows = self.parts[p](local)
            out = rows if out is None else _select_rows(ids, int(ends[p]), rows, out)
        return out

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        logits = [part.lm_head_forward(hidden) for part in self.parts]
        return logits[0] if len(logits) == 1 else op.concat(logits, dim=-1)


def _select_rows(ids: Tensor, end: int, rows: Tensor, other: Tensor) -> Tensor:
    """rows where id < end, else other; one kernel, so that no boolean tensor is materialised
    (WebGPU would store it as i8, which WGSL does not have)."""

    def compute(ids_te: te.Tensor, rows_te: te.Tensor, other_te: te.Tensor):
        return te.compute(rows_te.shape, lambda *i: tirx.if_then_else(ids_te[i[:-1]] < end, rows_te[i], other_te[i]),
                          name="vocab_part_select")

    return op.tensor_expr_op(compute, "vocab_part_select", args=[ids, rows, other])


class VocabLinear(nn.Module):
    """An untied LM head as one or several row parts (see VocabEmbedding)."""

    def __init__(self, part_rows: list[int], dim: int, bias: bool):
        self.parts = nn.ModuleList([nn.Linear(dim, rows, bias=bias) for rows in part_rows])

    def forward(self, hidden: Tensor) -> Tensor:
        logits = [part(hidden) for part in self.parts]
        return logits[0] if len(logits) == 1 else op.concat(logits, dim=-1)


def softcap(x: Tensor, cap: float | None) -> Tensor:
    """cap * tanh(x / cap) (Gemma 2's final-logit soft-capping); identity without a cap."""
    if not cap:
        return x
    return op.tanh(x / cap) * cap

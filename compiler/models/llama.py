"""Llama-family decoder (Llama 2/3/3.1/3.2, TinyLlama, SmolLM/SmolLM2, Mistral) in TVM's nn frontend.

Attention runs on TVM's paged KV cache (`TIRPagedKVCache`), which also applies the rotary
embedding (including Llama-3 style rope scaling), so the same module serves prefill, decode and
batched decode. q/k/v and gate/up are fused into one matmul each: fewer, larger kernels are what
both WebGPU and the CPU want. The weight-name mapping from Hugging Face lives at the bottom of this
file, beside the module it feeds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from .base import ArchitectureError, Embedding, ParamSource


@dataclasses.dataclass
class LlamaConfig:
    """The architecture numbers that change the compiled model (normalised from HF config.json)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "LlamaConfig":
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ArchitectureError(f"hidden_act={act!r} is not supported for Llama-family models (only 'silu')")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ArchitectureError("Llama variants with attention_bias/mlp_bias are not supported yet")
        rope_scaling = hf.get("rope_scaling")
        rope_theta = hf.get("rope_theta")
        # transformers 5 moved rope settings into `rope_parameters`; accept both spellings.
        params = hf.get("rope_parameters")
        if isinstance(params, dict):
            rope_theta = params.get("rope_theta", rope_theta)
            if params.get("rope_type", "default") != "default":
                rope_scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        if rope_scaling is not None:
            rope_scaling = dict(rope_scaling)
            rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
            if rope_type in (None, "default"):
                rope_scaling = None
            elif rope_type not in ("llama3", "linear"):
                raise ArchitectureError(f"rope scaling type {rope_type!r} is not supported (llama3, linear are)")
            else:
                rope_scaling["rope_type"] = rope_type
        sliding = hf.get("sliding_window")
        if hf.get("use_sliding_window") is False:
            sliding = None
        return cls(
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_hidden_layers=int(hf["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            vocab_size=int(hf["vocab_size"]),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=int(sliding) if sliding else None,
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            hidden_act=act,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        self.num_q_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.qkv_proj = nn.Linear(
            cfg.hidden_size, (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim, bias=False
        )
        self.o_proj = nn.Linear(self.num_q_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, hidden: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = hidden.shape
        qkv = op.reshape(self.qkv_proj(hidden), (b, s, self.num_q_heads + 2 * self.num_kv_heads, self.head_dim))
        out = kv_cache.attention_with_fused_qkv(layer_id, qkv, self.num_q_heads, sm_scale=self.head_dim**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.num_q_heads * self.head_dim)))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        self.intermediate_size = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), kv_cache, layer_id)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, kv_cache, layer_id)
        return self.norm(hidden)

    def hidden_states(self, hidden: Tensor, kv_cache: PagedKVCache) -> list[Tensor]:
        """The embedding output and every layer's output, the last one after the final norm:
        the same list Hugging Face returns with output_hidden_states=True (for `check --level 1`)."""
        states = [hidden]
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, kv_cache, layer_id)
            states.append(hidden)
        states[-1] = self.norm(states[-1])
        return states


def _last_position(x: Tensor) -> Tensor:
    """[b, s, h] -> [b, 1, h]: prefill only needs the logits of the prompt's last token."""

    def compute(x_te: te.Tensor):
        b, s, h = x_te.shape
        return te.compute((b, 1, h), lambda i, _, k: x_te[i, s - 1, k], name="index_last")

    return op.tensor_expr_op(compute, "index_last", args=[x])


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype: str = "float32"):
        self.cfg = cfg
        self.dtype = dtype
        self.model = LlamaModel(cfg)
        self.tie_word_embeddings = cfg.tie_word_embeddings
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    # -- pieces -----------------------------------------------------------------------------
    def _logits(self, hidden: Tensor) -> Tensor:
        if self.tie_word_embeddings:
            logits = self.model.embed_tokens.lm_head_forward(hidden)
        else:
            logits = self.lm_head(hidden)
        return logits.astype("float32") if logits.dtype != "float32" else logits

    # -- exported functions (see ARTIFACT.md) ------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        return self._logits(_last_position(hidden)), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        return self._logits(hidden), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embeds, paged_kv_cache)
        return self._logits(hidden), paged_kv_cache

    def prefill_all_logits(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        return self._logits(hidden), paged_kv_cache

    def prefill_hidden_states(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        states = self.model.hidden_states(input_embed, paged_kv_cache)
        stacked = op.concat([op.reshape(s, (1, s.shape[1], s.shape[2])) for s in states], dim=0)
        return stacked.astype("float32") if stacked.dtype != "float32" else stacked, paged_kv_cache

    def create_tir_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        import tvm  # local: Target.current() is only meaningful inside the compile's target scope

        cfg = self.cfg
        rope_scale = 1.0
        rope_scaling = cfg.rope_scaling
        if rope_scaling and rope_scaling.get("rope_type") == "linear":
            # Linear position interpolation divides positions by the factor.
            rope_scale = float(rope_scaling["factor"])
            rope_scaling = None
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=_relax_shape([0, cfg.num_hidden_layers]),
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            qk_head_dim=cfg.head_dim,
            v_head_dim=cfg.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL,
            rope_scale=rope_scale,
            rope_theta=cfg.rope_theta,
            rope_scaling=rope_scaling or {},
            rope_ext_factors=_relax_null(),
            rotary_dim=cfg.head_dim,
            enable_disaggregation=False,
            dtype=self.dtype,
            target=tvm.target.Target.current(),
        )

    def get_default_spec(self, debug_functions: bool = False) -> nn.spec.ModuleSpec:
        h = self.cfg.hidden_size
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        spec: dict[str, Any] = {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", h], self.dtype), "paged_kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, h], self.dtype), "paged_kv_cache": kv, "$": packed},
            "batch_decode": {
                "input_embeds": nn.spec.Tensor(["batch_size", 1, h], self.dtype),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "create_tir_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
        }
        if debug_functions:
            for name in ("prefill_all_logits", "prefill_hidden_states"):
                spec[name] = {"input_embed": nn.spec.Tensor([1, "seq_len", h], self.dtype), "paged_kv_cache": kv, "$": packed}
        return nn.spec.ModuleSpec.from_raw(spec, self)


def _relax_shape(values: list[int]):
    from tvm import relax

    return relax.ShapeExpr(values)


def _relax_null():
    from tvm import relax

    return relax.prim_value(0)


# -- Hugging Face weight mapping ----------------------------------------------------------------


def weight_map(cfg: LlamaConfig) -> dict[str, ParamSource]:
    """Our (unquantized) parameter name -> the HF tensors it is made of and how they combine."""

    def concat(*arrays: np.ndarray) -> np.ndarray:
        return np.concatenate(arrays, axis=0)

    mapping: dict[str, ParamSource] = {
        "model.embed_tokens.weight": ParamSource(["model.embed_tokens.weight"]),
        "model.norm.weight": ParamSource(["model.norm.weight"]),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        mapping[f"{p}.self_attn.qkv_proj.weight"] = ParamSource(
            [f"{p}.self_attn.q_proj.weight", f"{p}.self_attn.k_proj.weight", f"{p}.self_attn.v_proj.weight"], concat
        )
        mapping[f"{p}.self_attn.o_proj.weight"] = ParamSource([f"{p}.self_attn.o_proj.weight"])
        mapping[f"{p}.mlp.gate_up_proj.weight"] = ParamSource(
            [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"], concat
        )
        mapping[f"{p}.mlp.down_proj.weight"] = ParamSource([f"{p}.mlp.down_proj.weight"])
        mapping[f"{p}.input_layernorm.weight"] = ParamSource([f"{p}.input_layernorm.weight"])
        mapping[f"{p}.post_attention_layernorm.weight"] = ParamSource([f"{p}.post_attention_layernorm.weight"])
    if not cfg.tie_word_embeddings:
        mapping["lm_head.weight"] = ParamSource(["lm_head.weight"])
    return mapping

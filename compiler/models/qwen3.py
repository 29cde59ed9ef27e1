"""Qwen3 (dense): Qwen2 without the q/k/v bias, with a per-head RMSNorm on q and k before rope
and an explicit head_dim (0.6B: 16 heads of 128 on a 1024-wide model).

GGUF (`qwen3`): stored as in HF (NEOX rope: no q/k permutation); head_dim is
`attention.key_length`.
"""

from __future__ import annotations

from typing import Any

from . import gguf_common as G
from . import qwen2
from .base import Architecture
from .decoder import DecoderConfig, common_from_hf, require_activation


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    require_activation(hf, ("silu",))
    bias = bool(hf.get("attention_bias"))
    cfg = DecoderConfig(**common_from_hf(hf), qkv_bias=bias, o_bias=bias, qk_norm=True)
    qwen2.sliding_layers_from_hf(hf, cfg)
    return cfg.finish()


def gguf_config(g: G.GGUFMeta) -> dict[str, Any]:
    hf = G.common_hf_config(g, "qwen3", "Qwen3ForCausalLM")
    G.full_rotary(g, hf["head_dim"])
    hf.update(rope_scaling=G.rope_scaling_from_keys(g), hidden_act="silu", use_sliding_window=False,
              attention_bias="blk.0.attn_q.bias" in g.tensors)
    return hf


ARCH = Architecture(
    model_type="qwen3",
    hf_class="Qwen3ForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=qwen2.weight_map,
    hf_defaults={**qwen2.ARCH.hf_defaults, "head_dim": 128, "attention_bias": False},
    gguf_arch="qwen3",
    gguf_config=gguf_config,
    gguf_tensor=qwen2.gguf_tensor,
)

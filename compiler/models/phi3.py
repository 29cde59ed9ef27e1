"""Phi-3 (Phi-3-mini, Phi-3.5-mini, Phi-4-mini): the Llama network with checkpoints that store q/k/v
and gate/up fused, longrope rope scaling (short and long per-frequency factors plus an
attention factor on cos/sin), and partial rotary (Phi-4-mini rotates 3/4 of each head).

Longrope switches to the long factors past `original_max_position_embeddings`; we compile the
short-factor range only, so the context window is capped there (gen_config says so).

GGUF (`phi3`): fused tensors kept fused (`attn_qkv`, `ffn_up` = gate and up), no q/k permutation,
the factors as `rope_factors_short.weight` / `rope_factors_long.weight`, the rotary part as
`rope.dimension_count`, and no head_dim key (hidden / heads).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import gguf_common as G
from .base import Architecture, ArchitectureError, decoder_weight_map
from .decoder import DecoderConfig, common_from_hf, require_activation


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    require_activation(hf, ("silu",))
    common = common_from_hf(hf)
    scaling = common.pop("rope_scaling")
    if scaling is not None:
        scaling = dict(scaling)
        if scaling.get("rope_type") == "longrope":
            orig = int(hf.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings") or common["max_position_embeddings"])
            scaling.setdefault("original_max_position_embeddings", orig)
            scaling.setdefault("max_position_embeddings", common["max_position_embeddings"])
            if "short_factor" not in scaling:
                raise ArchitectureError("longrope rope_scaling without short_factor")
    window = hf.get("sliding_window")
    cfg = DecoderConfig(
        **common,
        rope_scaling=scaling,
        rotary_dim=int(common["head_dim"] * float(hf.get("partial_rotary_factor") or 1.0)),
        # A window on every layer (Phi-3-mini-4k: 2047) is the cache-level window, as Mistral's.
        sliding_window=int(window) if window and int(window) < common["max_position_embeddings"] else None,
        qkv_bias=bool(hf.get("attention_bias")),
    )
    return cfg.finish()


def weight_map(cfg: DecoderConfig):
    return decoder_weight_map(cfg, fused_qkv=True, fused_gate_up=True)


def gguf_config(g: G.GGUFMeta) -> dict[str, Any]:
    hf = G.common_hf_config(g, "phi3", "Phi3ForCausalLM")
    head_dim = hf["head_dim"]
    rope_dim = int(g.key("rope.dimension_count", head_dim))
    orig = int(g.key("rope.scaling.original_context_length", hf["max_position_embeddings"]))
    scaling = None
    factors = [n for n in ("rope_factors_short.weight", "rope_factors_long.weight") if n in g.tensors]
    if factors:
        if len(factors) != 2:
            raise g.fail(f"longrope needs both rope_factors_short.weight and rope_factors_long.weight; the file has only {factors[0]}")
        scaling = {"rope_type": "longrope"}
        for name, key in (("rope_factors_short.weight", "short_factor"), ("rope_factors_long.weight", "long_factor")):
            values = g.read(name).ravel()
            if values.size != rope_dim // 2:
                raise g.fail(f"{name} has {values.size} factors; the rotary part ({rope_dim} dimensions) needs {rope_dim // 2}")
            scaling[key] = [G.tidy_float(x) for x in values]
        # llama.cpp's converter writes the attention factor it computed from the context lengths
        # (what transformers computes too); keep it only where it says something else.
        attn = g.key("rope.scaling.attn_factor")
        scale = hf["max_position_embeddings"] / orig
        default = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
        if attn is not None and not math.isclose(float(attn), default, rel_tol=1e-6):
            scaling["attention_factor"] = G.tidy_float(attn)
    window = g.key("attention.sliding_window")
    hf.update(
        hidden_act="silu", rope_scaling=scaling, original_max_position_embeddings=orig,
        partial_rotary_factor=rope_dim / head_dim, sliding_window=int(window) if window else None,
    )
    return hf


def gguf_tensor(hf_name: str, w: np.ndarray, hf: dict[str, Any]) -> np.ndarray:
    return w  # stored as in HF


ARCH = Architecture(
    model_type="phi3",
    hf_class="Phi3ForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=weight_map,
    hf_defaults={"max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                 "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 32000},
    gguf_arch="phi3",
    gguf_config=gguf_config,
    gguf_tensor=gguf_tensor,
    gguf_extra_tensors=("rope_factors_short.weight", "rope_factors_long.weight"),
)

"""Gemma 1: GeGLU MLP (tanh-GELU), (1 + w) RMSNorms, embeddings scaled by sqrt(hidden), tied
LM head, head_dim 256, multi-query attention on the 2B.

GGUF (`gemma`): llama.cpp's converter adds 1 to every norm weight (undone here), keeps q/k as in
HF (NEOX rope), never writes an output matrix (tied), and writes no rope base (llama.cpp then
assumes 10000).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import gguf_common as G
from .base import Architecture, decoder_weight_map
from .decoder import DecoderConfig, common_from_hf, require_activation


def activation_of(hf: dict[str, Any]) -> str:
    # Gemma configs spell it hidden_activation (newer) or hidden_act (the first releases, whose
    # "gelu" transformers also runs as tanh-GELU for Gemma).
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act == "gelu":
        act = "gelu_pytorch_tanh"
    return require_activation({**hf, "hidden_act": act}, ("gelu_pytorch_tanh",))


def gemma_options(hf: dict[str, Any]) -> dict[str, Any]:
    """What every Gemma generation shares."""
    return dict(norm="rms_offset", hidden_act=activation_of(hf), embed_scale=math.sqrt(int(hf["hidden_size"])))


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    bias = bool(hf.get("attention_bias"))
    return DecoderConfig(**common_from_hf(hf), **gemma_options(hf), qkv_bias=bias, o_bias=bias).finish()


def weight_map(cfg: DecoderConfig):
    return decoder_weight_map(cfg)


def gguf_config(g: G.GGUFMeta) -> dict[str, Any]:
    hf = G.common_hf_config(g, "gemma", "GemmaForCausalLM")
    G.full_rotary(g, hf["head_dim"])
    hf.update(hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, attention_bias=False)
    return hf


def gguf_tensor(hf_name: str, w: np.ndarray, hf: dict[str, Any]) -> np.ndarray:
    # The converter stored 1 + w for every norm. For 1 + w in [0.5, 2] (trained Gemma norms)
    # the float32 subtraction below is exact (Sterbenz), so we get what the file holds minus one;
    # the low bits of w that the converter's 1 + w rounded away (< 2**-24 for |w| < 1) are gone.
    return (w - np.float32(1.0)).astype(np.float32) if G.is_norm_weight(hf_name) else w


ARCH = Architecture(
    model_type="gemma",
    hf_class="GemmaForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=weight_map,
    hf_defaults={"max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "head_dim": 256,
                 "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
    gguf_arch="gemma",
    gguf_config=gguf_config,
    gguf_tensor=gguf_tensor,
)

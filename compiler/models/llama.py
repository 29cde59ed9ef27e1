"""Llama (Llama 2/3/3.1/3.2, TinyLlama, SmolLM/SmolLM2, OpenBuddy, ...): the plain decoder.

HF: SwiGLU MLP, RMSNorm, optional attention/MLP biases, llama3 or linear rope scaling.
GGUF (`general.architecture = "llama"`): llama.cpp's converter permutes q/k rows for its
interleaved rope (undone here) and stores Llama 3.1's rope scaling as per-frequency divisors in
`rope_freqs.weight` (turned back into HF's `rope_scaling`). llama.cpp also files Mistral under
"llama".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import gguf_common as G
from .base import Architecture, decoder_weight_map
from .decoder import DecoderConfig, common_from_hf, require_activation


def config_from_hf(hf: dict[str, Any], sliding_window: int | None = None) -> DecoderConfig:
    """Llama's config; `sliding_window` (a window on every layer) is Mistral's one addition."""
    require_activation(hf, ("silu",))
    bias = bool(hf.get("attention_bias"))
    return DecoderConfig(
        **common_from_hf(hf), qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias")),
        sliding_window=sliding_window,
    ).finish()


def weight_map(cfg: DecoderConfig):
    return decoder_weight_map(cfg)


def _llama3_rope_scaling(g: G.GGUFMeta, factors: np.ndarray, theta: float, head_dim: int) -> dict[str, Any]:
    """Recover HF's llama3 rope_scaling from llama.cpp's per-frequency `rope_freqs` divisors.

    llama.cpp stores the result of Llama 3.1's frequency rule, not its parameters. Meta's released
    models all use low_freq_factor=1, high_freq_factor=4 and an original context of 8192, with
    `factor` = the largest divisor. We recompute the divisors from those and accept only an exact
    match, so an unusual model fails loudly instead of silently getting a different rope.
    """
    factor = float(factors.max())
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    orig_ctx = g.key("rope.scaling.original_context_length")
    for orig in [c for c in (orig_ctx, 8192) if c]:
        low, high = 1.0, 4.0
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - low) / (high - low)
        expect = np.where(wavelen < orig / high, 1.0,
                          np.where(wavelen > orig / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
        if expect.shape == factors.shape and np.allclose(expect, factors, rtol=1e-4):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                    "high_freq_factor": high, "original_max_position_embeddings": int(orig)}
    raise g.fail("rope_freqs tensor does not match Llama 3's rope scaling with the standard parameters; "
                 "this rope variant is not supported from GGUF. Load the model's Hugging Face folder instead.")


def gguf_config(g: G.GGUFMeta) -> dict[str, Any]:
    hf = G.common_hf_config(g, "llama", "LlamaForCausalLM")
    G.full_rotary(g, hf["head_dim"])
    scaling = G.rope_scaling_from_keys(g)
    if "rope_freqs.weight" in g.tensors:
        if scaling is not None:
            raise g.fail(f"both rope_freqs and rope.scaling.type={scaling['rope_type']!r}")
        factors = g.read("rope_freqs.weight").astype(np.float64).ravel()
        scaling = _llama3_rope_scaling(g, factors, hf["rope_theta"], hf["head_dim"])
    hf.update(rope_scaling=scaling, hidden_act="silu", attention_bias="blk.0.attn_q.bias" in g.tensors,
              mlp_bias="blk.0.ffn_down.bias" in g.tensors)
    return hf


def gguf_tensor(hf_name: str, w: np.ndarray, hf: dict[str, Any]) -> np.ndarray:
    if ".self_attn.q_proj." in hf_name:
        return G.interleaved_to_half_split(w, hf["num_attention_heads"])
    if ".self_attn.k_proj." in hf_name:
        return G.interleaved_to_half_split(w, hf["num_key_value_heads"])
    return w


ARCH = Architecture(
    model_type="llama",
    hf_class="LlamaForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=weight_map,
    hf_defaults={"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                 "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2},
    gguf_arch="llama",
    gguf_config=gguf_config,
    gguf_tensor=gguf_tensor,
    gguf_extra_tensors=("rope_freqs.weight",),
)

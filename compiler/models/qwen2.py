"""Qwen2 (Qwen1.5, Qwen2, Qwen2.5 and their -Coder / -Math / -Instruct variants).

HF: the Llama network with a bias on q/k/v (not on o_proj); tied or untied embeddings; an
optional sliding window on the layers `layer_types` marks (off in every released model).
GGUF (`qwen2`): llama.cpp uses NEOX rope for Qwen, so its converter does not permute q/k;
tensors are stored as in HF.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import gguf_common as G
from .base import Architecture, decoder_weight_map
from .decoder import DecoderConfig, common_from_hf, require_activation


def sliding_layers_from_hf(hf: dict[str, Any], cfg: DecoderConfig) -> None:
    """Qwen's optional window: only with use_sliding_window, on the layers layer_types names
    (transformers derives them from max_window_layers when the config predates layer_types)."""
    if not hf.get("use_sliding_window") or not hf.get("sliding_window"):
        return
    types = hf.get("layer_types") or [
        "sliding_attention" if i >= int(hf.get("max_window_layers", 0)) else "full_attention"
        for i in range(cfg.num_hidden_layers)
    ]
    cfg.layer_types = ["sliding" if t == "sliding_attention" else "full" for t in types]
    cfg.sliding_window = int(hf["sliding_window"])


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    require_activation(hf, ("silu",))
    cfg = DecoderConfig(**common_from_hf(hf), qkv_bias=True)
    sliding_layers_from_hf(hf, cfg)
    return cfg.finish()


def weight_map(cfg: DecoderConfig):
    return decoder_weight_map(cfg)


def gguf_config(g: G.GGUFMeta) -> dict[str, Any]:
    hf = G.common_hf_config(g, "qwen2", "Qwen2ForCausalLM")
    G.full_rotary(g, hf["head_dim"])
    hf.update(rope_scaling=G.rope_scaling_from_keys(g), hidden_act="silu", use_sliding_window=False)
    return hf


def gguf_tensor(hf_name: str, w: np.ndarray, hf: dict[str, Any]) -> np.ndarray:
    return w  # stored as in HF


ARCH = Architecture(
    model_type="qwen2",
    hf_class="Qwen2ForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=weight_map,
    hf_defaults={"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                 "tie_word_embeddings": False, "hidden_act": "silu", "use_sliding_window": False},
    gguf_arch="qwen2",
    gguf_config=gguf_config,
    gguf_tensor=gguf_tensor,
)

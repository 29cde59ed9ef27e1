"""MiniCPM 1/2 (remote-code `MiniCPMForCausalLM`, model_type "minicpm"): Llama's network and
checkpoint layout with three scalings from its "tensor programs" training recipe:

- embeddings * scale_emb (in the model dtype, as its code multiplies them);
- each attention and MLP output * scale_depth / sqrt(num_hidden_layers) before its residual add;
- the final hidden state / (hidden_size / dim_model_base) before the LM head (tied or not).

transformers has no class for it: `check` compares against LlamaForCausalLM with the scalings
folded into the weights (`reference_weights`): the embedding scaled, o_proj and down_proj scaled,
the LM head divided (untied in the reference, so the embedding scale does not reach it). That is
the same function up to float rounding.
MiniCPM3 (multi-head latent attention, model_type "minicpm3") is another network, not read here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import llama
from .base import Architecture, ParamSource, decoder_weight_map
from .decoder import DecoderConfig


def _scales(hf: dict[str, Any]) -> tuple[float, float, float]:
    """(embedding scale, residual scale, logit divisor)."""
    residual = float(hf.get("scale_depth", 1.0)) / math.sqrt(int(hf["num_hidden_layers"]))
    return float(hf.get("scale_emb", 1.0)), residual, int(hf["hidden_size"]) / float(hf.get("dim_model_base", 1.0))


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    cfg = llama.config_from_hf(hf)
    cfg.embed_scale, cfg.residual_scale, cfg.logit_divisor = _scales(hf)
    return cfg


def weight_map(cfg: DecoderConfig):
    return decoder_weight_map(cfg)


def reference_config(hf: dict[str, Any]) -> dict[str, Any]:
    drop = ("scale_emb", "scale_depth", "dim_model_base", "auto_map")
    return {**{k: v for k, v in hf.items() if k not in drop}, "model_type": "llama",
            "architectures": ["LlamaForCausalLM"], "tie_word_embeddings": False}


def _times(c: float):
    return lambda w: (w.astype(np.float32) * np.float32(c))


def reference_weights(hf: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], ParamSource]]:
    """LlamaForCausalLM's tensor name -> (its shape, how it is made from this checkpoint)."""
    cfg = llama.config_from_hf(hf)
    embed, residual, divisor = _scales(hf)
    h, vocab = cfg.hidden_size, cfg.vocab_size
    out: dict[str, tuple[tuple[int, ...], ParamSource]] = {}
    for ours, src in decoder_weight_map(cfg).items():
        if ours.startswith(("model.embed_tokens", "lm_head")):
            continue
        scale = residual if ours.endswith(("o_proj.weight", "o_proj.bias", "down_proj.weight", "down_proj.bias")) else None
        for name, shape in zip(src.hf_names, src.hf_shapes):
            out[name] = (tuple(shape), ParamSource([name], [shape], _times(scale) if scale else None))
    out["model.embed_tokens.weight"] = ((vocab, h), ParamSource(["model.embed_tokens.weight"], [(vocab, h)], _times(embed)))
    head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    out["lm_head.weight"] = ((vocab, h), ParamSource([head], [(vocab, h)], _times(1.0 / divisor)))
    return out


ARCH = Architecture(
    model_type="minicpm",
    hf_class="MiniCPMForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=weight_map,
    hf_defaults={**llama.ARCH.hf_defaults, "scale_emb": 1.0, "scale_depth": 1.0, "dim_model_base": 1.0},
    reference_config=reference_config,
    reference_weights=reference_weights,
)

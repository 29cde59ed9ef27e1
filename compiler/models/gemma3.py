"""Gemma 3 (text): Gemma 2's sandwich norms plus per-head q/k (1 + w) RMSNorm, five sliding
(local) layers to each global one, and a rope base per kind of layer: local layers use
`rope_local_base_freq` (10000) unscaled, global layers `rope_theta` (1e6) with the config's
rope scaling (linear x8 on 4B and up). No attention soft-capping.

Multimodal `gemma3` checkpoints (Gemma3ForConditionalGeneration) are read for their text model:
the config's `text_config` and the `language_model` tensors; the vision tower is ignored.

GGUF (`gemma3`): norms stored as 1 + w (q/k norms too), NEOX rope. The local rope base is
`rope.freq_base_swa` in newer files (10000 when absent); llama.cpp's converter does not store
the window pattern (llama.cpp: every 6th layer global; `attention.sliding_window_pattern`, an
int period or one bool per layer, where a file has it), and writes no window at all for a
model whose layers are all global.
"""

from __future__ import annotations

from typing import Any

from . import gemma, gemma2
from . import gguf_common as G
from .base import Architecture
from .decoder import DecoderConfig


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    return DecoderConfig(
        **gemma2.sandwich_options(hf, int(hf.get("sliding_window_pattern") or 6)),
        qk_norm=True,
        local_rope_theta=float(hf.get("rope_local_base_freq") or 10000.0),
        local_rope_scaling=hf.get("local_rope_scaling"),
    ).finish()


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A Gemma3ForConditionalGeneration config -> its text model's config (gemma3_text)."""
    if raw.get("model_type") != "gemma3" or not isinstance(raw.get("text_config"), dict):
        return raw
    text = dict(raw["text_config"])
    text["model_type"] = "gemma3_text"
    text["architectures"] = ["Gemma3ForCausalLM"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key not in text and key in raw:
            text[key] = raw[key]
    return text


def text_tensor_name(name: str) -> str | None:
    """Tensor names of a multimodal checkpoint -> the text model's; None for the vision parts."""
    for prefix, ours in (("model.language_model.model.", "model."), ("model.language_model.", "model."), ("language_model.model.", "model."),
                         ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head.")):
        if name.startswith(prefix):
            return ours + name[len(prefix):]
    return None


def gguf_config(g: G.GGUFMeta) -> dict[str, Any]:
    hf = G.common_hf_config(g, "gemma3_text", "Gemma3ForCausalLM")
    G.full_rotary(g, hf["head_dim"])
    n_layers = hf["num_hidden_layers"]
    window = g.key("attention.sliding_window")
    # llama.cpp: every 6th layer global when the file has a window; some converters store the
    # pattern (an int period, or one bool per layer, true = sliding). No window: all global
    # (the converter omits the window for sliding_window_pattern == 1).
    pattern = g.key("attention.sliding_window_pattern", 6, per_layer=True)
    if not window:
        sliding = [False] * n_layers
    elif isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise g.fail(f"{g.arch}.attention.sliding_window_pattern lists {len(pattern)} layers, the model has {n_layers}")
        sliding = [bool(p) for p in pattern]
    else:
        sliding = [bool((i + 1) % int(pattern)) for i in range(n_layers)]
    hf.update(
        hidden_activation="gelu_pytorch_tanh", attention_bias=False,
        rope_scaling=G.rope_scaling_from_keys(g),
        rope_local_base_freq=G.tidy_float(g.key("rope.freq_base_swa", 10000.0)),
        final_logit_softcapping=G.tidy_float(cap) if (cap := g.key("final_logit_softcapping")) else None,
        attn_logit_softcapping=None,
        query_pre_attn_scalar=gemma2.query_pre_attn_scalar(hf, 62),
        sliding_window=int(window) if window else None,
        layer_types=["sliding_attention" if s else "full_attention" for s in sliding],
    )
    if isinstance(pattern, int):
        hf["sliding_window_pattern"] = int(pattern)
    return hf


ARCH = Architecture(
    model_type="gemma3_text",
    hf_class="Gemma3ForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=gemma2.weight_map,
    hf_defaults={**gemma.ARCH.hf_defaults, "max_position_embeddings": 131072, "rope_theta": 1000000.0,
                 "query_pre_attn_scalar": 256, "sliding_window": 4096, "rope_local_base_freq": 10000.0,
                 "final_logit_softcapping": None, "attn_logit_softcapping": None},
    aliases=("gemma3",),
    gguf_arch="gemma3",
    gguf_config=gguf_config,
    gguf_tensor=gemma.gguf_tensor,
    hf_text_config=text_config,
    hf_tensor_name=text_tensor_name,
)

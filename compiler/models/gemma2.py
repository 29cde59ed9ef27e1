"""Gemma 2: Gemma with sandwich norms (each attention and MLP output normalised again before its
residual add), a sliding window on every other layer (layer 0 slides), attention-logit and
final-logit soft-capping, and `query_pre_attn_scalar` for the attention scale.

GGUF (`gemma2`): as Gemma (norm weights stored as 1 + w, tied, NEOX rope), plus
`attn_logit_softcapping`, `final_logit_softcapping` (llama.cpp assumes 50 and 30 where a file
lacks them) and `attention.sliding_window`. It stores no query_pre_attn_scalar: llama.cpp uses
hidden/heads for the 46-layer 27B and head_dim otherwise, and so do we.
"""

from __future__ import annotations

from typing import Any

from . import gemma
from . import gguf_common as G
from .base import Architecture, decoder_weight_map
from .decoder import DecoderConfig, common_from_hf

# Our per-layer norm names -> Gemma 2/3's. Careful: HF's post_attention_layernorm normalises the
# attention output here, while in Llama it is the MLP's input norm.
SANDWICH_NORMS = {
    "input_layernorm": "input_layernorm",
    "attn_output_norm": "post_attention_layernorm",
    "post_attention_layernorm": "pre_feedforward_layernorm",
    "mlp_output_norm": "post_feedforward_layernorm",
}


def layer_types_from_hf(hf: dict[str, Any], n_layers: int, every: int) -> list[str]:
    """HF's layer_types, or the pattern its config class derives: every `every`-th layer global."""
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n_layers)]
    return ["sliding" if t == "sliding_attention" else "full" for t in types]


def sandwich_options(hf: dict[str, Any], global_every: int) -> dict[str, Any]:
    """The DecoderConfig fields Gemma 2 and Gemma 3 read alike (every `global_every`-th layer
    attends globally unless the config lists layer_types)."""
    common = common_from_hf(hf)
    bias = bool(hf.get("attention_bias"))
    return dict(
        **common,
        **gemma.gemma_options(hf),
        sandwich_norms=True,
        qkv_bias=bias,
        o_bias=bias,
        query_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5,
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        layer_types=layer_types_from_hf(hf, common["num_hidden_layers"], global_every),
        sliding_window=int(hf.get("sliding_window") or 4096),
    )


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    return DecoderConfig(**sandwich_options(hf, 2)).finish()


def weight_map(cfg: DecoderConfig):
    return decoder_weight_map(cfg, norms=SANDWICH_NORMS)


def query_pre_attn_scalar(hf: dict[str, Any], big_model_layers: int) -> int:
    """llama.cpp's rule for the scalar GGUF does not store. An int: transformers' Gemma 2/3
    config classes refuse a float here."""
    if hf["num_hidden_layers"] == big_model_layers:
        return int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    return int(hf["head_dim"])


def gguf_config(g: G.GGUFMeta) -> dict[str, Any]:
    hf = G.common_hf_config(g, "gemma2", "Gemma2ForCausalLM")
    G.full_rotary(g, hf["head_dim"])
    hf.update(
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, attention_bias=False,
        # Absent keys: llama.cpp's defaults for Gemma 2 (50 and 30), not "no soft-capping".
        attn_logit_softcapping=G.tidy_float(g.key("attn_logit_softcapping", 50.0)),
        final_logit_softcapping=G.tidy_float(g.key("final_logit_softcapping", 30.0)),
        sliding_window=int(g.key("attention.sliding_window", 4096)),
        query_pre_attn_scalar=query_pre_attn_scalar(hf, 46),
    )
    return hf


ARCH = Architecture(
    model_type="gemma2",
    hf_class="Gemma2ForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=weight_map,
    hf_defaults={**gemma.ARCH.hf_defaults, "query_pre_attn_scalar": 256, "sliding_window": 4096,
                 "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
    gguf_arch="gemma2",
    gguf_config=gguf_config,
    gguf_tensor=gemma.gguf_tensor,
)

"""Phi (Phi-1, Phi-1.5, Phi-2): one LayerNorm (with bias) feeding attention and MLP in parallel,
their outputs summed with the residual; partial rotary (`partial_rotary_factor`, 0.4 on Phi-2);
a plain tanh-GELU MLP (fc1 / fc2); biases on every dense layer and on the LM head.

GGUF (`phi2`): tensors as in HF (q/k/v separate, no permutation: NEOX rope), the rotary part as
`rope.dimension_count`, the norm epsilon as `attention.layer_norm_epsilon`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import gguf_common as G
from .base import Architecture, ArchitectureError, ParamSource, _concat, vocab_sources
from .decoder import DecoderConfig, common_from_hf, require_activation


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    act = require_activation(hf, ("gelu_new", "gelu_pytorch_tanh"))
    if hf.get("qk_layernorm"):
        raise ArchitectureError("qk_layernorm=true (LayerNorm on q and k) is not supported for phi")
    common = common_from_hf(hf)
    common["norm_eps"] = float(hf.get("layer_norm_eps", 1e-5))
    return DecoderConfig(
        **common, norm="layer", mlp="plain", hidden_act=act, parallel_block=True,
        qkv_bias=True, o_bias=True, mlp_bias=True, lm_head_bias=not common["tie_word_embeddings"],
        rotary_dim=int(common["head_dim"] * float(hf.get("partial_rotary_factor", 0.5))),
    ).finish()


def weight_map(cfg: DecoderConfig) -> dict[str, ParamSource]:
    """Phi's checkpoint layout: self_attn.dense is the output projection, final_layernorm the
    last norm; every dense layer and norm has a bias."""
    h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    m: dict[str, ParamSource] = dict(vocab_sources("model.embed_tokens", "model.embed_tokens.weight", cfg))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        a = f"{p}.self_attn"
        m[f"{a}.qkv_proj.weight"] = ParamSource([f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"],
                                                [(q, h), (kv, h), (kv, h)], _concat)
        m[f"{a}.qkv_proj.bias"] = ParamSource([f"{a}.q_proj.bias", f"{a}.k_proj.bias", f"{a}.v_proj.bias"],
                                              [(q,), (kv,), (kv,)], _concat)
        m[f"{a}.o_proj.weight"] = ParamSource([f"{a}.dense.weight"], [(h, q)])
        m[f"{a}.o_proj.bias"] = ParamSource([f"{a}.dense.bias"], [(h,)])
        for name, shape in (("fc1", (inter, h)), ("fc2", (h, inter))):
            m[f"{p}.mlp.{name}.weight"] = ParamSource([f"{p}.mlp.{name}.weight"], [shape])
            m[f"{p}.mlp.{name}.bias"] = ParamSource([f"{p}.mlp.{name}.bias"], [(shape[0],)])
        for kind in ("weight", "bias"):
            m[f"{p}.input_layernorm.{kind}"] = ParamSource([f"{p}.input_layernorm.{kind}"], [(h,)])
    for kind in ("weight", "bias"):
        m[f"model.norm.{kind}"] = ParamSource([f"model.final_layernorm.{kind}"], [(h,)])
    if not cfg.tie_word_embeddings:
        m.update(vocab_sources("lm_head", "lm_head.weight", cfg))
        m.update(vocab_sources("lm_head", "lm_head.bias", cfg, kind="bias"))
    return m


def gguf_config(g: G.GGUFMeta) -> dict[str, Any]:
    hf = G.common_hf_config(g, "phi", "PhiForCausalLM")
    rope_dim = int(g.key("rope.dimension_count", hf["head_dim"]))
    hf.update(hidden_act="gelu_new", layer_norm_eps=G.tidy_float(g.key("attention.layer_norm_epsilon", 1e-5)),
              partial_rotary_factor=rope_dim / hf["head_dim"], rope_scaling=G.rope_scaling_from_keys(g))
    return hf


def gguf_tensor(hf_name: str, w: np.ndarray, hf: dict[str, Any]) -> np.ndarray:
    return w  # stored as in HF


ARCH = Architecture(
    model_type="phi",
    hf_class="PhiForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=weight_map,
    hf_defaults={"max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "rope_theta": 10000.0,
                 "partial_rotary_factor": 0.5, "tie_word_embeddings": False, "hidden_act": "gelu_new",
                 "bos_token_id": 1, "eos_token_id": 2},
    gguf_arch="phi2",
    gguf_config=gguf_config,
    gguf_tensor=gguf_tensor,
)

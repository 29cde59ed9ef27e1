"""GLM-4 (transformers' `GlmForCausalLM`, glm-4-9b-chat-hf and relatives): the Llama network with
rope on the first half of each head (`partial_rotary_factor`, 0.5) rotating interleaved pairs
(x[2i], x[2i+1]), a bias on q/k/v (not on o_proj), grouped-query attention, and checkpoints that
store the MLP's gate and up projections as one matrix (gate rows first).

The original remote-code checkpoints of the same network (ChatGLM3, glm-4-9b-chat) are chatglm.py.
GGUF files of it are not read (llama.cpp files them as "chatglm").
"""

from __future__ import annotations

from typing import Any

from .base import Architecture, decoder_weight_map
from .decoder import DecoderConfig, common_from_hf, require_activation


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    require_activation(hf, ("silu",))
    common = common_from_hf(hf)
    return DecoderConfig(
        **common, qkv_bias=bool(hf.get("attention_bias", True)), rope_interleaved=True,
        rotary_dim=int(common["head_dim"] * float(hf.get("partial_rotary_factor", 0.5))),
    ).finish()


def weight_map(cfg: DecoderConfig):
    return decoder_weight_map(cfg, fused_gate_up=True)


ARCH = Architecture(
    model_type="glm",
    hf_class="GlmForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=weight_map,
    hf_defaults={"max_position_embeddings": 131072, "rms_norm_eps": 1.5625e-07, "rope_theta": 10000.0,
                 "partial_rotary_factor": 0.5, "attention_bias": True, "tie_word_embeddings": False,
                 "hidden_act": "silu", "pad_token_id": 151329, "eos_token_id": [151329, 151336, 151338]},
)

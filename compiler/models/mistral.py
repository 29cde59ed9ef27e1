"""Mistral: the Llama decoder with sliding-window attention on every layer.

The network and weights are Llama's; what differs is that attention only looks back
`sliding_window` tokens. That window is not a kernel property here: the paged KV cache is created
with sliding-window support and each sequence is switched to it at run time (ARTIFACT.md,
"Sliding-window models"). GGUF files of Mistral models say `general.architecture = "llama"`.
"""

from __future__ import annotations

from typing import Any

from . import llama
from .base import Architecture
from .decoder import DecoderConfig


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    sliding = hf.get("sliding_window")
    if hf.get("use_sliding_window") is False:
        sliding = None
    # A window as long as the context is no window at all; run it as plain attention.
    if sliding and int(sliding) >= int(hf.get("max_position_embeddings", 4096 * 32)):
        sliding = None
    return llama.config_from_hf(hf, sliding_window=int(sliding) if sliding else None)


ARCH = Architecture(
    model_type="mistral",
    hf_class="MistralForCausalLM",
    config_from_hf=config_from_hf,
    weight_map=llama.weight_map,
    hf_defaults={**llama.ARCH.hf_defaults, "max_position_embeddings": 4096 * 32, "sliding_window": 4096},
)

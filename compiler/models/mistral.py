"""Mistral: the Llama decoder with sliding-window attention.

The network is Llama's (same weights, same names); what differs is that attention only looks back
`sliding_window` tokens. That window is not a kernel property here: the paged KV cache is created
with sliding-window support and each sequence is switched to it at run time
(`attention_kv_cache_enable_sliding_window_for_seq`), so this file only normalises the config.
"""

from __future__ import annotations

from typing import Any

from .llama import LlamaConfig, LlamaForCausalLM, weight_map  # noqa: F401  (re-exported for the registry)


def config_from_hf(hf: dict[str, Any]) -> LlamaConfig:
    cfg = LlamaConfig.from_hf(hf)
    if cfg.sliding_window is not None and cfg.sliding_window >= cfg.max_position_embeddings:
        # A window as long as the context is no window at all; run it as plain attention.
        cfg.sliding_window = None
    return cfg

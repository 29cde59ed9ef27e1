"""The tiny random models of each architecture family, shared by the native and browser tests.

`FAMILIES[name] = (model_type, overrides)`: `make_family(root, name)` makes the model with
conftest.make_tiny_model (stories260K tokenizer, vocab 512, hidden 64, 2 layers unless
overridden). Each family is sized to exercise what sets it apart:

- qwen2: q/k/v biases;            qwen3: per-head q/k RMSNorm, head_dim 32 (not hidden / heads);
- gemma: multi-query attention (one KV head), head_dim 32, tied embeddings, embedding scale;
- gemma2: sliding window 16 on alternate layers (PROMPT crosses it), final-logit soft-capping;
- gemma3_text: 6 layers so the 5:1 sliding/global pattern has a global layer, window 16, linear
  rope scaling on the global layers and a different rope base on the sliding ones;
- phi: parallel attention + MLP from one LayerNorm with bias, partial rotary 0.4, biased LM head;
- phi3: longrope (short factors inside original_max_position_embeddings), partial rotary 0.5.

The folder name carries a digest of the family's entry, so editing the table can never reuse a
model made from an older entry (make_tiny_model reuses any folder that has a config.json).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from conftest import make_tiny_model

# Larger weights than make_tiny_model's default, and biases / norm weights moved off their
# defaults, so that every option matters and greedy output varies.
VARY = dict(weight_std=0.15, vector_std=0.3)
# Gemma scales its tied embedding by sqrt(hidden): a large one makes the model repeat its last
# token, so its embedding gets a smaller scale.
GEMMA_VARY = dict(VARY, embed_std=0.03)

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2": ("qwen2", dict(VARY, tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(VARY, head_dim=32)),
    "gemma": ("gemma", dict(GEMMA_VARY, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True)),
    "gemma2": ("gemma2", dict(
        GEMMA_VARY, head_dim=32, sliding_window=16, query_pre_attn_scalar=24, tie_word_embeddings=True,
        attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
    )),
    "gemma3": ("gemma3_text", dict(
        GEMMA_VARY, head_dim=32, num_hidden_layers=6, sliding_window=16, query_pre_attn_scalar=24, tie_word_embeddings=True,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    )),
    # Phi-2: one LayerNorm (with bias) feeding attention and MLP in parallel, partial rotary 0.4,
    # tanh-GELU fc1/fc2, biases everywhere including the LM head
    "phi": ("phi", dict(VARY, num_key_value_heads=4, partial_rotary_factor=0.4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attention_dropout=0.0)),
    "phi3": ("phi3", dict(
        VARY, pad_token_id=0, partial_rotary_factor=0.5, max_position_embeddings=256, original_max_position_embeddings=128,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3], "long_factor": [2.0] * 4},
    )),
}

# ~72 tokens with the stories260K tokenizer (73 with BOS): past the gemma2/gemma3 window of 16.
PROMPT = (
    "Once upon a time there was a little dog. The dog liked to run in the park with his friend the cat "
    "every day. One day they found a big red ball under a tree, and they played with it until the sun went down."
)


def family_dir(root: Path, name: str) -> Path:
    model_type, overrides = FAMILIES[name]
    digest = hashlib.sha256(json.dumps([model_type, overrides], sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / f"fam-{name}-{digest}"


def make_family(root: Path, name: str) -> Path:
    """The tiny HF model folder of family `name` under `root` (made once, then reused)."""
    model_type, overrides = FAMILIES[name]
    return make_tiny_model(family_dir(root, name), model_type, **overrides)

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
- glm: rope on half of each head with interleaved pairs, q/k/v biases, fused gate/up weights;
- chatglm: the same network as a ChatGLM3 checkpoint (its config keys, fused query_key_value,
  its tensor names, a saved rope table, rope_ratio 1.5, and its tokenizer as a SentencePiece
  tokenizer.model with ChatGLM's command tokens and no tokenizer.json); made from a tiny glm;
- minicpm: embedding, residual and logit scalings with a tied head; made from a tiny llama.

transformers has no class for chatglm or minicpm: their reference in `check` is GlmForCausalLM
on the same weights, and LlamaForCausalLM with MiniCPM's scalings folded into the weights (the
architecture files say how); here the tiny checkpoints are written the way those models ship.

The folder name carries a digest of the family's entry, so editing the table can never reuse a
model made from an older entry (make_tiny_model reuses any folder that has a config.json).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from conftest import STORIES, make_tiny_model
from safetensors.numpy import load_file, save_file

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
    "glm": ("glm", dict(VARY, head_dim=16, pad_token_id=0)),
    # vocab: the stories tokenizer.model's 512 pieces plus ChatGLM's 9 command tokens
    "chatglm": ("chatglm", dict(VARY, head_dim=16, pad_token_id=0, vocab_size=521, rope_ratio=1.5)),
    "minicpm": ("minicpm", dict(VARY, tie_word_embeddings=True, scale_emb=4.0, scale_depth=1.4, dim_model_base=16)),
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
    out = family_dir(root, name)
    if model_type == "chatglm":
        return _remote_code_model(out, _as_chatglm, "glm", overrides, ("rope_ratio",))
    if model_type == "minicpm":
        return _remote_code_model(out, _as_minicpm, "llama", overrides, ("scale_emb", "scale_depth", "dim_model_base"))
    return make_tiny_model(out, model_type, **overrides)


def _remote_code_model(out: Path, rewrite, base_type: str, overrides: dict[str, Any], own_keys: tuple[str, ...]) -> Path:
    """A tiny model of `base_type` (a transformers class), rewritten by `rewrite` into a
    remote-code checkpoint; `own_keys` are the remote-code config's own settings."""
    if (out / "config.json").is_file():
        return out
    own = {k: overrides[k] for k in own_keys}
    base_kw = {k: v for k, v in overrides.items() if k not in own_keys}
    if "rope_ratio" in own:
        base_kw["rope_theta"] = 10000.0 * own["rope_ratio"]
    base = make_tiny_model(out.with_name(out.name + "-base"), base_type, **base_kw)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    rewrite(base, tmp, own)
    # config.json last: make_tiny_model (and this) reuse any folder that has one.
    config = tmp / "config.json.new"
    config.rename(tmp / "config.json")
    tmp.rename(out)
    return out


def _as_chatglm(base: Path, out: Path, own: dict[str, Any]) -> None:
    hf = json.loads((base / "config.json").read_text())
    w = load_file(str(base / "model.safetensors"))
    t: dict[str, np.ndarray] = {
        "transformer.embedding.word_embeddings.weight": w["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": w["model.norm.weight"],
        "transformer.output_layer.weight": w["lm_head.weight"],
        "transformer.rotary_pos_emb.inv_freq": np.zeros(hf["head_dim"] // 4, np.float32),  # recomputed by every runtime
    }
    for i in range(hf["num_hidden_layers"]):
        p, q = f"model.layers.{i}", f"transformer.encoder.layers.{i}"
        for kind in ("weight", "bias"):
            t[f"{q}.self_attention.query_key_value.{kind}"] = np.concatenate(
                [w[f"{p}.self_attn.{n}_proj.{kind}"] for n in "qkv"])
        t[f"{q}.self_attention.dense.weight"] = w[f"{p}.self_attn.o_proj.weight"]
        t[f"{q}.mlp.dense_h_to_4h.weight"] = w[f"{p}.mlp.gate_up_proj.weight"]
        t[f"{q}.mlp.dense_4h_to_h.weight"] = w[f"{p}.mlp.down_proj.weight"]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            t[f"{q}.{norm}.weight"] = w[f"{p}.{norm}.weight"]
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "num_layers": hf["num_hidden_layers"], "padded_vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
        "ffn_hidden_size": hf["intermediate_size"], "kv_channels": hf["head_dim"],
        "num_attention_heads": hf["num_attention_heads"], "multi_query_attention": True,
        "multi_query_group_num": hf["num_key_value_heads"], "seq_length": hf["max_position_embeddings"],
        "layernorm_epsilon": hf["rms_norm_eps"], "rmsnorm": True, "add_qkv_bias": True, "add_bias_linear": False,
        "post_layer_norm": True, "apply_residual_connection_post_layernorm": False, "rope_ratio": own["rope_ratio"],
        "original_rope": True, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
    }
    (out / "config.json.new").write_text(json.dumps(config, indent=2))
    shutil.copy(STORIES / "tokenizer.model", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "ChatGLMTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        "chat_template": "[gMASK]sop{% for m in messages %}<|{{ m['role'] }}|>\n {{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    }))


def _as_minicpm(base: Path, out: Path, own: dict[str, Any]) -> None:
    """Llama weights as they are: the scalings are MiniCPM's own (our model applies them, the
    reference folds them into a Llama's weights), so they change the function computed."""
    for f in base.iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    hf = json.loads((base / "config.json").read_text())
    hf.update(model_type="minicpm", architectures=["MiniCPMForCausalLM"], **own)
    (out / "config.json.new").write_text(json.dumps(hf, indent=2))

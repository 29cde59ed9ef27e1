"""ChatGLM2/3 and the original glm-4-9b-chat (remote-code `ChatGLMForConditionalGeneration`,
model_type "chatglm"): the GLM network of glm.py under its own config keys and tensor names.

- config: num_layers, ffn_hidden_size, kv_channels (head_dim), padded_vocab_size, seq_length,
  layernorm_epsilon, multi_query_group_num (KV heads, when multi_query_attention), add_qkv_bias,
  rope_ratio (the rope base is 10000 * rope_ratio); rope on half of each head, interleaved pairs.
- tensors: `transformer.encoder.layers.N.self_attention.query_key_value` (q, k, v rows, as we
  fuse them), `self_attention.dense` (output), `mlp.dense_h_to_4h` (gate and up rows),
  `mlp.dense_4h_to_h`, `transformer.embedding.word_embeddings`, `transformer.output_layer`.
- tokenizer: ChatGLM3 ships a SentencePiece `tokenizer.model` and no tokenizer.json; its code
  appends the command tokens below after the SentencePiece pieces (`SPECIAL_TOKENS`), and prompts
  start with [gMASK] sop (written by the chat template, so no BOS is added).

Variants the remote code can build but no released chat model uses (LayerNorm instead of RMSNorm,
biases on every dense layer, the residual taken after the norm, p-tuning prefixes) are refused.
transformers has no class for it: `check` compares against GlmForCausalLM with the same weights
(`reference_config` / `reference_weights`), which computes the same function.
"""

from __future__ import annotations

from typing import Any

from . import glm
from .base import Architecture, ArchitectureError, ParamSource, _rows, vocab_sources
from .decoder import DecoderConfig

SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")

# What ChatGLMConfig assumes for keys a config.json omits.
_DEFAULTS: dict[str, Any] = {
    "num_layers": 28, "padded_vocab_size": 65024, "hidden_size": 4096, "ffn_hidden_size": 13696,
    "kv_channels": 128, "num_attention_heads": 32, "seq_length": 2048, "layernorm_epsilon": 1e-5,
    "rmsnorm": True, "apply_residual_connection_post_layernorm": False, "post_layer_norm": True,
    "add_bias_linear": False, "add_qkv_bias": False, "multi_query_attention": False,
    "multi_query_group_num": 1, "rope_ratio": 1, "original_rope": True, "pre_seq_len": None,
    "tie_word_embeddings": False,
}
_REFUSED = {  # key: (the only supported value, what another value means)
    "rmsnorm": (True, "LayerNorm instead of RMSNorm"),
    "apply_residual_connection_post_layernorm": (False, "the residual taken after the norm"),
    "post_layer_norm": (True, "no final norm"),
    "add_bias_linear": (False, "biases on every dense layer"),
    "original_rope": (True, "the non-original rope"),
    "pre_seq_len": (None, "a p-tuning prefix"),
}


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """ChatGLM's keys, with the Llama-style keys the shared readers use (glm.config_from_hf)."""
    c = {**_DEFAULTS, **raw}
    heads = int(c["num_attention_heads"])
    c.update(
        num_hidden_layers=int(c["num_layers"]), intermediate_size=int(c["ffn_hidden_size"]),
        vocab_size=int(c["padded_vocab_size"]), head_dim=int(c["kv_channels"] or int(c["hidden_size"]) // heads),
        num_key_value_heads=int(c["multi_query_group_num"]) if c["multi_query_attention"] else heads,
        max_position_embeddings=int(c["seq_length"]), rms_norm_eps=float(c["layernorm_epsilon"]),
        rope_theta=10000.0 * float(c["rope_ratio"]), partial_rotary_factor=0.5,
        attention_bias=bool(c["add_qkv_bias"]), hidden_act="silu",
    )
    return c


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    for key, (ok, meaning) in _REFUSED.items():
        if hf.get(key, ok) != ok:
            raise ArchitectureError(f"chatglm with {key}={hf[key]!r} ({meaning}) is not supported")
    return glm.config_from_hf(hf)


def weight_map(cfg: DecoderConfig) -> dict[str, ParamSource]:
    h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d
    m = dict(vocab_sources("model.embed_tokens", "transformer.embedding.word_embeddings.weight", cfg))
    for i in range(cfg.num_hidden_layers):
        ours, theirs = f"model.layers.{i}", f"transformer.encoder.layers.{i}"
        m[f"{ours}.self_attn.qkv_proj.weight"] = ParamSource([f"{theirs}.self_attention.query_key_value.weight"], [(qkv, h)])
        if cfg.qkv_bias:
            m[f"{ours}.self_attn.qkv_proj.bias"] = ParamSource([f"{theirs}.self_attention.query_key_value.bias"], [(qkv,)])
        m[f"{ours}.self_attn.o_proj.weight"] = ParamSource([f"{theirs}.self_attention.dense.weight"], [(h, cfg.num_attention_heads * d)])
        m[f"{ours}.mlp.gate_up_proj.weight"] = ParamSource([f"{theirs}.mlp.dense_h_to_4h.weight"], [(2 * inter, h)])
        m[f"{ours}.mlp.down_proj.weight"] = ParamSource([f"{theirs}.mlp.dense_4h_to_h.weight"], [(h, inter)])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            m[f"{ours}.{norm}.weight"] = ParamSource([f"{theirs}.{norm}.weight"], [(h,)])
    m["model.norm.weight"] = ParamSource(["transformer.encoder.final_layernorm.weight"], [(h,)])
    if not cfg.tie_word_embeddings:
        m.update(vocab_sources("lm_head", "transformer.output_layer.weight", cfg))
    return m


# -- the transformers reference: GlmForCausalLM on the same weights ---------------------------------

def reference_config(hf: dict[str, Any]) -> dict[str, Any]:
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta",
            "partial_rotary_factor", "attention_bias", "hidden_act", "tie_word_embeddings", "eos_token_id", "pad_token_id")
    return {"model_type": "glm", "architectures": ["GlmForCausalLM"], **{k: hf.get(k) for k in keys}}


def reference_weights(hf: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], ParamSource]]:
    """GlmForCausalLM's tensor name -> (its shape, how it is read from this checkpoint)."""
    cfg = config_from_hf(hf)
    h, d, inter, vocab = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d

    def same(name: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ParamSource]:
        return shape, ParamSource([name], [shape])

    out = {"model.embed_tokens.weight": same("transformer.embedding.word_embeddings.weight", (vocab, h))}
    for i in range(cfg.num_hidden_layers):
        r, t = f"model.layers.{i}", f"transformer.encoder.layers.{i}"
        for kind in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            fused = (q + 2 * kv, h) if kind == "weight" else (q + 2 * kv,)
            for proj, (a, b) in (("q_proj", (0, q)), ("k_proj", (q, q + kv)), ("v_proj", (q + kv, q + 2 * kv))):
                src = ParamSource([f"{t}.self_attention.query_key_value.{kind}"], [fused], _rows(a, b))
                out[f"{r}.self_attn.{proj}.{kind}"] = ((b - a, *fused[1:]), src)
        out[f"{r}.self_attn.o_proj.weight"] = same(f"{t}.self_attention.dense.weight", (h, q))
        out[f"{r}.mlp.gate_up_proj.weight"] = same(f"{t}.mlp.dense_h_to_4h.weight", (2 * inter, h))
        out[f"{r}.mlp.down_proj.weight"] = same(f"{t}.mlp.dense_4h_to_h.weight", (h, inter))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{r}.{norm}.weight"] = same(f"{t}.{norm}.weight", (h,))
    out["model.norm.weight"] = same("transformer.encoder.final_layernorm.weight", (h,))
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = same("transformer.output_layer.weight", (vocab, h))
    return out


ARCH = Architecture(
    model_type="chatglm",
    hf_class="ChatGLMForConditionalGeneration",
    config_from_hf=config_from_hf,
    weight_map=weight_map,
    hf_text_config=text_config,
    reference_config=reference_config,
    reference_weights=reference_weights,
    tokenizer_extra_specials=SPECIAL_TOKENS,
    tokenizer_add_bos=False,
)

"""What every architecture file declares (`Architecture`), and the pieces they share: errors, the
weight-source record, a tied embedding, and the standard Hugging Face weight map.

An architecture file (llama.py, qwen2.py, ...) is the one place that knows an architecture: how
its Hugging Face config and its GGUF metadata read, which `DecoderConfig` options it switches on,
where each compiled parameter comes from in a Hugging Face checkpoint, and what llama.cpp's
converter did to its tensors (undone here so that GGUF weights equal the HF originals).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op


class ArchitectureError(ValueError):
    """The model's architecture (or one of its settings) is not one we can compile."""


@dataclasses.dataclass
class ParamSource:
    """One compiled parameter: the Hugging Face tensors it is built from (with the shapes the
    config implies for them), and how they combine. The default takes the single array as is."""

    hf_names: list[str]
    hf_shapes: list[tuple[int, ...]]
    combine: Callable[..., np.ndarray] | None = None

    def build(self, arrays: list[np.ndarray]) -> np.ndarray:
        if self.combine is None:
            (only,) = arrays
            return only
        return self.combine(*arrays)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Everything particular to one architecture (see the module docstring).

    - `config_from_hf(hf) -> DecoderConfig`: the only reader of HF config keys for it;
    - `hf_defaults`: what transformers' config class assumes for keys a config.json may omit;
    - `weight_map(cfg)`: compiled parameter name -> ParamSource;
    - `gguf_arch` / `gguf_config(meta) -> HF config dict` / `gguf_tensor(hf_name, array, hf)`:
      llama.cpp's `general.architecture`, its metadata, and the inverse of its converter's
      transforms (None when GGUF files of this architecture are not read).

    The network itself is `decoder.DecoderForCausalLM` for every architecture.
    """

    model_type: str
    hf_class: str
    config_from_hf: Callable[[dict[str, Any]], Any]
    weight_map: Callable[[Any], dict[str, ParamSource]]
    hf_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    aliases: tuple[str, ...] = ()  # other HF model_types read the same way
    gguf_arch: str | None = None
    gguf_config: Callable[..., dict[str, Any]] | None = None
    gguf_tensor: Callable[[str, np.ndarray, dict[str, Any]], np.ndarray] | None = None
    # GGUF tensors that hold config, not weights (read by gguf_config: rope factors).
    gguf_extra_tensors: tuple[str, ...] = ()
    # Wrapped checkpoints (a multimodal model's text part): the config and tensor names to read;
    # `hf_tensor_name` returns None for tensors that are not this model's (a vision tower).
    hf_text_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    hf_tensor_name: Callable[[str], str | None] | None = None
    # Architectures transformers has no class for (remote-code checkpoints: ChatGLM, MiniCPM) name
    # an equivalent model it does have, for `check`: its config made from ours, and each of its
    # tensors as (shape, how it is made from this checkpoint's tensors).
    reference_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    reference_weights: Callable[[dict[str, Any]], dict[str, tuple[tuple[int, ...], ParamSource]]] | None = None
    # A SentencePiece tokenizer.model (no tokenizer.json) gets these tokens appended after its
    # pieces, as the checkpoint's tokenizer code does (ChatGLM's [gMASK], sop, <|user|>, ...);
    # tokenizer_add_bos=False where its prompts start otherwise than with BOS.
    tokenizer_extra_specials: tuple[str, ...] = ()
    tokenizer_add_bos: bool | None = None

    def build(self, cfg: Any, dtype: str = "float32") -> nn.Module:
        from .decoder import DecoderForCausalLM

        return DecoderForCausalLM(cfg, dtype)

    def hf_tensor_shapes(self, hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """Every tensor a checkpoint of this config must hold, with its HF shape, in order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for src in self.weight_map(self.config_from_hf(hf)).values():
            for name, shape in zip(src.hf_names, src.hf_shapes):
                shapes.setdefault(name, tuple(shape))
        return shapes


class Embedding(nn.Embedding):
    """nn.Embedding that can also act as the (tied) LM head: logits = hidden @ weight.T."""

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        return op.matmul(hidden, op.permute_dims(self.weight))


# -- the standard Hugging Face weight map ---------------------------------------------------------

# Our layer norm names -> the HF names of the Llama layout. Gemma 2/3 rename them (gemma2.py).
LLAMA_NORMS = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm"}


def _concat(*arrays: np.ndarray) -> np.ndarray:
    return np.concatenate(arrays, axis=0)


def _rows(start: int, stop: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda w: np.ascontiguousarray(w[start:stop])


def vocab_sources(our: str, hf_name: str, cfg: Any, kind: str = "weight") -> dict[str, ParamSource]:
    """The embedding or LM head (its weight, or its bias): one parameter, or one per row part
    (blocks.VocabEmbedding / VocabLinear)."""
    parts = cfg.vocab_parts or [cfg.vocab_size]
    full = [(cfg.vocab_size, cfg.hidden_size) if kind == "weight" else (cfg.vocab_size,)]
    if len(parts) == 1:
        return {f"{our}.{kind}": ParamSource([hf_name], full)}
    out, start = {}, 0
    for p, rows in enumerate(parts):
        out[f"{our}.parts.{p}.{kind}"] = ParamSource([hf_name], full, _rows(start, start + rows))
        start += rows
    return out


def decoder_weight_map(
    cfg: Any,
    *,
    norms: dict[str, str] = LLAMA_NORMS,
    fused_qkv: bool = False,
    fused_gate_up: bool = False,
) -> dict[str, ParamSource]:
    """Compiled parameter name -> HF tensors for the Llama-style checkpoint layout
    (`model.layers.N.self_attn.q_proj.weight`, ...), with the options `cfg` switches on.

    `norms` maps our per-layer norm names to the checkpoint's; `fused_qkv` / `fused_gate_up` say
    the checkpoint already stores q/k/v (or gate/up) as one matrix, in our order (Phi-3).
    """
    h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q_out, kv_out = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    m: dict[str, ParamSource] = dict(vocab_sources("model.embed_tokens", "model.embed_tokens.weight", cfg))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        a = f"{p}.self_attn"
        for kind in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            shape = (lambda n: (n, h)) if kind == "weight" else (lambda n: (n,))
            if fused_qkv:
                m[f"{a}.qkv_proj.{kind}"] = ParamSource([f"{a}.qkv_proj.{kind}"], [shape(q_out + 2 * kv_out)])
            else:
                m[f"{a}.qkv_proj.{kind}"] = ParamSource(
                    [f"{a}.q_proj.{kind}", f"{a}.k_proj.{kind}", f"{a}.v_proj.{kind}"],
                    [shape(q_out), shape(kv_out), shape(kv_out)], _concat)
        m[f"{a}.o_proj.weight"] = ParamSource([f"{a}.o_proj.weight"], [(h, q_out)])
        if cfg.o_bias:
            m[f"{a}.o_proj.bias"] = ParamSource([f"{a}.o_proj.bias"], [(h,)])
        if cfg.qk_norm:
            m[f"{a}.q_norm.weight"] = ParamSource([f"{a}.q_norm.weight"], [(d,)])
            m[f"{a}.k_norm.weight"] = ParamSource([f"{a}.k_norm.weight"], [(d,)])
        for kind in ("weight", "bias") if cfg.mlp_bias else ("weight",):
            shape = (lambda r, c: (r, c)) if kind == "weight" else (lambda r, c: (r,))
            if fused_gate_up:
                m[f"{p}.mlp.gate_up_proj.{kind}"] = ParamSource([f"{p}.mlp.gate_up_proj.{kind}"], [shape(2 * inter, h)])
            else:
                m[f"{p}.mlp.gate_up_proj.{kind}"] = ParamSource(
                    [f"{p}.mlp.gate_proj.{kind}", f"{p}.mlp.up_proj.{kind}"], [shape(inter, h), shape(inter, h)], _concat)
            m[f"{p}.mlp.down_proj.{kind}"] = ParamSource([f"{p}.mlp.down_proj.{kind}"], [shape(h, inter)])
        for ours, theirs in norms.items():
            m[f"{p}.{ours}.weight"] = ParamSource([f"{p}.{theirs}.weight"], [(h,)])
    m["model.norm.weight"] = ParamSource(["model.norm.weight"], [(h,)])
    if not cfg.tie_word_embeddings:
        m.update(vocab_sources("lm_head", "lm_head.weight", cfg))
    return m

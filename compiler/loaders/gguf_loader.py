"""GGUF files (llama.cpp's format): metadata -> HF config, tensors -> HF names and layouts,
tokenizer metadata -> tokenizer.json.

Three things differ from a Hugging Face checkpoint and are undone here:
1. Dimensions are stored fastest-first (ggml's ne[0] is the row length), i.e. reversed relative to
   numpy: a GGUF matrix [in, out] is numpy (out, in) -- exactly PyTorch's Linear layout -- and
   the embedding [hidden, vocab] is numpy (vocab, hidden). `GGUFTensor.shape` is numpy order,
   and every shape is checked against what the config implies.
2. llama.cpp's converter permutes the rows of q/k projections so that rope rotates adjacent pairs
   (Meta's original layout). Hugging Face rotates the two halves of each head instead; we apply
   the inverse permutation (per head: n_head for q, n_head_kv for k).
3. Weights may be quantized (Q8_0, Q4_K, ...): `gguf.quants.dequantize` turns them into float32.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    ModelSourceError,
    SourceModel,
    check_tensor_set,
    interleaved_to_half_split,
    normalize_hf_config,
)
from .gguf_format import GGUFFile
from .tokenizer_build import VocabSpec, build_tokenizer_files

# general.architecture -> HF model_type. llama.cpp files Mistral-7B and friends under "llama".
GGUF_ARCHITECTURES: dict[str, str] = {"llama": "llama"}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
# Tensors that hold no weights of their own: rope_freqs is read into rope_scaling; attn_rot_embd
# is a leftover of very old converters.
_NON_WEIGHTS = {"rope_freqs.weight"}
_NON_WEIGHT_SUFFIXES = (".attn_rot_embd",)


def gguf_to_hf_name(name: str) -> str | None:
    """HF parameter name for a GGUF tensor name; None when the name is unknown."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.match(name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"
    return None


def _tidy_float(x: float) -> float:
    """GGUF stores float32; 1e-5 comes back as 9.999999747378752e-06. Print-round it."""
    return float(str(np.float32(x)))


def _llama3_rope_scaling(factors: np.ndarray, theta: float, head_dim: int,
                         original_ctx: int | None, where: str) -> dict[str, Any]:
    """Recover HF's llama3 rope_scaling from llama.cpp's per-frequency `rope_freqs` divisors.

    llama.cpp stores the result of Llama 3.1's frequency rule, not its parameters. The rule has
    4 parameters; Meta's released models all use low_freq_factor=1, high_freq_factor=4 and an
    original context of 8192, with `factor` = the largest divisor. We recompute the divisors from
    those and accept only an exact match, so an unusual model fails loudly instead of silently
    getting a different rope.
    """
    factor = float(factors.max())
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    for orig in [c for c in (original_ctx, 8192) if c]:
        for low, high in ((1.0, 4.0),):
            wavelen = 2 * math.pi / inv
            smooth = (orig / wavelen - low) / (high - low)
            expect = np.where(
                wavelen < orig / high, 1.0,
                np.where(wavelen > orig / low, factor, 1.0 / ((1 - smooth) / factor + smooth)),
            )
            if expect.shape == factors.shape and np.allclose(expect, factors, rtol=1e-4):
                return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                        "high_freq_factor": high, "original_max_position_embeddings": int(orig)}
    raise ModelSourceError(
        f"{where}: rope_freqs tensor does not match Llama 3's rope scaling with the standard "
        f"parameters; this rope variant is not supported from GGUF. Load the model's Hugging "
        f"Face folder instead."
    )


def _hf_config(meta: dict[str, Any], tensors: dict[str, Any], rope_freqs: np.ndarray | None,
               where: str) -> tuple[dict[str, Any], str]:
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ModelSourceError(
            f"{where}: GGUF general.architecture {arch!r} is not supported (supported: "
            f"{sorted(GGUF_ARCHITECTURES)}). Use a model of a supported architecture."
        )
    model_type = GGUF_ARCHITECTURES[arch]

    def key(name: str, default: Any = None, required: bool = False) -> Any:
        v = meta.get(f"{arch}.{name}", default)
        if required and v is None:
            raise ModelSourceError(f"{where}: GGUF metadata key {arch}.{name} is missing")
        if isinstance(v, list):
            raise ModelSourceError(
                f"{where}: {arch}.{name} varies per layer ({v[:4]}...); models with per-layer "
                f"shapes are not supported"
            )
        return v

    hidden = int(key("embedding_length", required=True))
    n_head = int(key("attention.head_count", required=True))
    n_kv = int(key("attention.head_count_kv", n_head))
    head_dim = int(key("attention.key_length", hidden // n_head))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise ModelSourceError(f"{where}: key and value head sizes differ; not a Llama model")
    rope_dim = int(key("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ModelSourceError(
            f"{where}: rope covers {rope_dim} of {head_dim} head dimensions (partial rotary); "
            f"not supported for {arch}"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = key("vocab_size")
    if vocab is None:
        # The embedding's row count is the model's vocabulary (it may be padded past the
        # tokenizer's); the token list is the fallback.
        if "token_embd.weight" in tensors:
            vocab = tensors["token_embd.weight"].shape[0]  # (vocab, hidden) in numpy order
        elif tokens:
            vocab = len(tokens)
        else:
            raise ModelSourceError(f"{where}: cannot tell the vocabulary size (no tokens, no "
                                   f"token_embd.weight)")
    theta = _tidy_float(key("rope.freq_base", 10000.0))

    scaling: dict[str, Any] | None = None
    kind = key("rope.scaling.type")
    factor = key("rope.scaling.factor")
    orig_ctx = key("rope.scaling.original_context_length")
    if kind in (None, "none"):
        linear = key("rope.scale_linear")  # older files
        if linear and float(linear) != 1.0:
            scaling = {"rope_type": "linear", "factor": _tidy_float(linear)}
    elif kind == "linear":
        scaling = {"rope_type": "linear", "factor": _tidy_float(factor)}
    elif kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": _tidy_float(factor)}
        if orig_ctx:
            scaling["original_max_position_embeddings"] = int(orig_ctx)
        attn = key("rope.scaling.attn_factor")
        if attn:
            scaling["attention_factor"] = _tidy_float(attn)
    else:
        raise ModelSourceError(f"{where}: rope scaling type {kind!r} is not supported")
    if rope_freqs is not None:
        if scaling is not None:
            raise ModelSourceError(f"{where}: both rope_freqs and rope.scaling.type={kind!r}")
        scaling = _llama3_rope_scaling(rope_freqs, theta, head_dim,
                                       int(orig_ctx) if orig_ctx else None, where)

    eos = meta.get("tokenizer.ggml.eos_token_id")
    eos_ids = [int(eos)] if eos is not None else []
    # End-of-turn / end-of-message ids (Llama 3's <|eot_id|>, <|eom_id|>) also end generation.
    for extra_key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        extra = meta.get(extra_key)
        if extra is not None and int(extra) not in eos_ids:
            eos_ids.append(int(extra))

    raw = {
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length", required=True)),
        "num_hidden_layers": int(key("block_count", required=True)),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "vocab_size": int(vocab),
        "max_position_embeddings": int(key("context_length", 2048)),
        "rms_norm_eps": _tidy_float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": False,
        # No separate output matrix in the file means the embedding doubles as the LM head.
        "tie_word_embeddings": "output.weight" not in tensors,
        "sliding_window": None,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": (eos_ids[0] if len(eos_ids) == 1 else eos_ids) if eos_ids else None,
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    return normalize_hf_config(raw, where), arch


def _vocab_spec(meta: dict[str, Any], where: str) -> VocabSpec | None:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        return None
    model = meta.get("tokenizer.ggml.model")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)

    def opt_id(k: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{k}")
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:
        # llama.cpp's default when the flag is absent: SentencePiece vocabularies add BOS.
        add_bos = model == "llama"
    return VocabSpec(
        model=str(model),
        tokens=list(tokens),
        token_types=[int(t) for t in types],
        scores=meta.get("tokenizer.ggml.scores"),
        merges=meta.get("tokenizer.ggml.merges"),
        pre=meta.get("tokenizer.ggml.pre"),
        bos_id=opt_id("bos_token_id"),
        eos_id=opt_id("eos_token_id"),
        unk_id=opt_id("unknown_token_id"),
        pad_id=opt_id("padding_token_id"),
        add_bos=bool(add_bos),
        add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        prefix_after_special=True,  # a GGUF's native tokenizer is llama.cpp's
        chat_template=meta.get("tokenizer.chat_template"),
        model_max_length=None,
        where=where,
    )


def gguf_tokenizer_files(path: Path | str) -> dict[str, bytes]:
    """Only the tokenizer files rebuilt from a GGUF's metadata (no tensors are read or checked)."""
    path = Path(path)
    meta = GGUFFile(path).metadata
    spec = _vocab_spec(meta, str(path))
    if spec is None:
        raise ModelSourceError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.tokens)")
    arch = meta.get("general.architecture")
    ctx = meta.get(f"{arch}.context_length")
    spec.model_max_length = int(ctx) if ctx else None
    return _tokenizer_files(spec, meta)


def _tokenizer_files(spec: VocabSpec, meta: dict[str, Any]) -> dict[str, bytes]:
    files = build_tokenizer_files(spec)
    embedded = meta.get("tokenizer.huggingface.json")
    if isinstance(embedded, str) and embedded.strip():
        # Some converters embed the model's original tokenizer.json: that is the ground truth,
        # so it wins over our rebuild (the rebuild still ran, validating the vocabulary).
        files["tokenizer.json"] = embedded.encode("utf-8")
    return files


def load_gguf(path: Path) -> SourceModel:
    f = GGUFFile(path)
    meta = f.metadata
    where = str(path)
    by_name = f.tensors

    rope_freqs = None
    if "rope_freqs.weight" in by_name:
        rope_freqs = f.dequantize("rope_freqs.weight").astype(np.float64).ravel()
    cfg, arch = _hf_config(meta, by_name, rope_freqs, where)

    hf_to_gguf: dict[str, str] = {}
    for name in by_name:
        if name in _NON_WEIGHTS or name.endswith(_NON_WEIGHT_SUFFIXES):
            continue
        hf = gguf_to_hf_name(name)
        if hf is None:
            raise ModelSourceError(
                f"{where}: tensor {name!r} has no Hugging Face counterpart the loader knows "
                f"(architecture {arch!r}); this model variant (e.g. mixture-of-experts) is not "
                f"supported."
            )
        hf_to_gguf[hf] = name
    shapes = {hf: by_name[g].shape for hf, g in hf_to_gguf.items()}
    names = check_tensor_set(shapes, cfg, where)

    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def read(hf_name: str) -> np.ndarray:
        w = f.dequantize(hf_to_gguf[hf_name])
        if ".self_attn.q_proj." in hf_name:
            w = interleaved_to_half_split(w, n_head)
        elif ".self_attn.k_proj." in hf_name:
            w = interleaved_to_half_split(w, n_kv)
        return w

    spec = _vocab_spec(meta, where)
    if spec is None:
        raise ModelSourceError(
            f"{where}: the GGUF has no tokenizer (tokenizer.ggml.tokens); the compiler needs one"
        )
    spec.model_max_length = cfg["max_position_embeddings"]
    tokenizer_files = _tokenizer_files(spec, meta)

    return SourceModel(
        path=path,
        format="gguf",
        hf_config=cfg,
        tensor_names=names,
        tokenizer_files=tokenizer_files,
        tensor_shapes={n: shapes[n] for n in names},
        source_dtypes={n: by_name[hf_to_gguf[n]].type_name for n in names},
        metadata={k: v for k, v in meta.items() if k.startswith("general.")}
        | {"tokenizer_notes": spec.notes},
        _reader=read,
    )

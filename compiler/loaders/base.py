"""The normalized in-memory model source every loader produces, and the checks they share.

Every input format (Hugging Face safetensors / .bin, GGUF, llama2.c) is turned into one
`SourceModel`: a Hugging Face style `config.json` dict, Hugging Face parameter names and layouts,
and tokenizer files in the Hugging Face `tokenizers` form. Everything downstream (model
definition, quantization, export for reference checks) only ever sees this one form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ModelSourceError",
    "SourceModel",
    "SUPPORTED_ARCHITECTURES",
    "normalize_hf_config",
    "expected_tensor_shapes",
    "check_tensor_set",
    "interleaved_to_half_split",
    "half_split_to_interleaved",
]

# Hugging Face `model_type`s whose weights and config this package understands. The lead extends
# this set when a model definition for another architecture lands (e.g. "qwen2"); a loader refuses
# anything outside it up front, instead of failing later with a confusing missing-tensor error.
SUPPORTED_ARCHITECTURES: set[str] = {"llama", "mistral"}

# HF class name written to `architectures` for each supported model_type.
ARCHITECTURE_CLASSES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
}


class ModelSourceError(ValueError):
    """A model source that cannot be loaded. The message names the file / tensor and the fix."""


@dataclass
class SourceModel:
    """One loaded model source, normalized to Hugging Face names, layouts and config keys.

    Tensors are read lazily: `get_tensor` reads (memory-maps, dequantizes, converts) one tensor
    per call, so a 7B model never sits in memory twice. Arrays it returns may be read-only views
    of a memory-mapped file; copy them before writing into them.
    """

    path: Path
    format: str  # "hf-safetensors" | "hf-bin" | "gguf" | "llama2c"
    hf_config: dict[str, Any]
    tensor_names: list[str] = field(repr=False)
    # File name -> bytes; at least tokenizer.json + tokenizer_config.json whenever the source has a
    # tokenizer (HF folders also pass special_tokens_map.json / generation_config.json through).
    tokenizer_files: dict[str, bytes] = field(repr=False)
    # Shape of every tensor in `tensor_names`, known without reading data (for planning/export).
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    # Storage type of every tensor as the source holds it ("F32", "BF16", "Q4_1", ...): information
    # only; `get_tensor` always returns float32.
    source_dtypes: dict[str, str] = field(default_factory=dict, repr=False)
    # Free-form facts about the source worth reporting (GGUF general.* keys, llama2.c header ...).
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    _reader: Callable[[str], np.ndarray] | None = field(default=None, repr=False)

    def get_tensor(self, name: str) -> np.ndarray:
        """The tensor `name` as float32 numpy in Hugging Face layout."""
        if name not in self.tensor_shapes:
            raise ModelSourceError(
                f"{self.path}: no tensor named {name!r} in this {self.format} source "
                f"(it has {len(self.tensor_names)} tensors, e.g. {self.tensor_names[:3]})"
            )
        assert self._reader is not None
        array = self._reader(name)
        expected = self.tensor_shapes[name]
        if tuple(array.shape) != expected:
            # A loader bug or a lying header; never hand a wrongly shaped tensor to the compiler.
            raise ModelSourceError(
                f"{self.path}: tensor {name!r} decoded to shape {tuple(array.shape)}, "
                f"expected {expected}"
            )
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        return array

    def iter_tensors(self):
        """Yield `(name, float32 array)` in `tensor_names` order, one tensor in memory at a time."""
        for name in self.tensor_names:
            yield name, self.get_tensor(name)


# ---------------------------------------------------------------------------------------------
# Config normalization
# ---------------------------------------------------------------------------------------------

def _rope_from_parameters(cfg: dict[str, Any]) -> None:
    """Fold transformers-5 `rope_parameters` into the classic `rope_theta` + `rope_scaling` keys.

    transformers 5 saves `{"rope_parameters": {"rope_type": "default", "rope_theta": ...}}`;
    older releases (and most checkpoints on the Hub) save `rope_theta` and `rope_scaling`. We
    keep one spelling -- the classic one, which transformers 5 still reads -- so consumers look in
    one place.
    """
    params = cfg.pop("rope_parameters", None)
    if isinstance(params, dict):
        params = dict(params)
        if "rope_theta" in params:
            cfg["rope_theta"] = float(params.pop("rope_theta"))
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in (None, "default"):
            cfg["rope_scaling"] = params
        else:
            cfg.setdefault("rope_scaling", None)
    scaling = cfg.get("rope_scaling")
    if isinstance(scaling, dict):
        scaling = dict(scaling)
        # Old configs spell the kind "type"; transformers and our model code read "rope_type".
        if "rope_type" not in scaling and "type" in scaling:
            scaling["rope_type"] = scaling["type"]
        scaling.pop("type", None)
        if scaling.get("rope_type") in (None, "default"):
            scaling = None
        cfg["rope_scaling"] = scaling


def normalize_hf_config(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate a Hugging Face config dict and fill the defaults transformers would apply.

    `where` names the file (or source) in error messages. The result always has:
    model_type, architectures, hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, head_dim, vocab_size, max_position_embeddings,
    rms_norm_eps, rope_theta, rope_scaling (None or a dict with "rope_type"), tie_word_embeddings,
    sliding_window, hidden_act, attention_bias, mlp_bias, bos_token_id, eos_token_id
    (int, list or None), pad_token_id. Unknown keys are kept.
    """
    cfg = dict(raw)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelSourceError(
            f"{where}: model_type {model_type!r} is not supported "
            f"(supported: {sorted(SUPPORTED_ARCHITECTURES)}). Use a model of a supported "
            f"architecture, or add a model definition and extend "
            f"sphere_aae.loaders.SUPPORTED_ARCHITECTURES."
        )
    if cfg.get("quantization_config"):
        method = cfg["quantization_config"].get("quant_method", "?")
        raise ModelSourceError(
            f"{where}: this checkpoint is already quantized ({method}); pre-quantized Hugging "
            f"Face checkpoints are not supported. Use the float16/bfloat16/float32 checkpoint "
            f"(or a GGUF file) and let the compiler quantize it."
        )
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads", "vocab_size") if not cfg.get(k)]
    if missing:
        raise ModelSourceError(f"{where}: config is missing required key(s) {missing}")

    cfg.setdefault("architectures", [ARCHITECTURE_CLASSES[model_type]])
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    if cfg["num_key_value_heads"] is None:
        cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    if not cfg.get("head_dim"):
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ModelSourceError(
            f"{where}: num_attention_heads={cfg['num_attention_heads']} is not a multiple of "
            f"num_key_value_heads={cfg['num_key_value_heads']}"
        )
    # Defaults below are the ones LlamaConfig / MistralConfig use when a key is absent.
    is_mistral = model_type == "mistral"
    cfg.setdefault("max_position_embeddings", 4096 * 32 if is_mistral else 2048)
    cfg.setdefault("rms_norm_eps", 1e-6)
    _rope_from_parameters(cfg)
    cfg.setdefault("rope_theta", 10000.0)
    cfg.setdefault("rope_scaling", None)
    cfg["rope_theta"] = float(cfg["rope_theta"])
    cfg.setdefault("tie_word_embeddings", False)
    cfg.setdefault("sliding_window", 4096 if is_mistral else None)
    cfg.setdefault("hidden_act", "silu")
    cfg.setdefault("attention_bias", False)
    cfg.setdefault("mlp_bias", False)
    cfg.setdefault("bos_token_id", 1)
    cfg.setdefault("eos_token_id", 2)
    cfg.setdefault("pad_token_id", None)
    return cfg


# ---------------------------------------------------------------------------------------------
# Expected tensors and shapes (Llama-family layout)
# ---------------------------------------------------------------------------------------------

def expected_tensor_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every parameter a Llama/Mistral checkpoint must have, with its Hugging Face shape.

    `lm_head.weight` is listed only when embeddings are untied: a tied model reuses
    `model.embed_tokens.weight`.
    """
    hidden = cfg["hidden_size"]
    inter = cfg["intermediate_size"]
    vocab = cfg["vocab_size"]
    head_dim = cfg["head_dim"]
    q_out = cfg["num_attention_heads"] * head_dim
    kv_out = cfg["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (q_out, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (kv_out, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (kv_out, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, q_out)
        if cfg.get("attention_bias"):
            shapes[p + "self_attn.q_proj.bias"] = (q_out,)
            shapes[p + "self_attn.k_proj.bias"] = (kv_out,)
            shapes[p + "self_attn.v_proj.bias"] = (kv_out,)
            shapes[p + "self_attn.o_proj.bias"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        if cfg.get("mlp_bias"):
            shapes[p + "mlp.gate_proj.bias"] = (inter,)
            shapes[p + "mlp.up_proj.bias"] = (inter,)
            shapes[p + "mlp.down_proj.bias"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


# Buffers some old checkpoints saved that carry no information (recomputed from the config).
_IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)


def check_tensor_set(
    found: dict[str, tuple[int, ...]], cfg: dict[str, Any], where: str
) -> list[str]:
    """Check a checkpoint's tensors against the config; return the HF names to expose, in order.

    Raises ModelSourceError naming the first missing tensor, unexpected tensor, or shape mismatch.
    A tied model that nevertheless stores `lm_head.weight` (some exporters write both) has the
    copy dropped, so `tensor_names` holds lm_head only when it is really separate.
    """
    expected = expected_tensor_shapes(cfg)
    missing = [n for n in expected if n not in found]
    if missing:
        hint = ""
        if missing == ["lm_head.weight"]:
            hint = (" The config says tie_word_embeddings=false; if the model shares its "
                    "embedding with the output layer, set tie_word_embeddings=true in config.json.")
        raise ModelSourceError(
            f"{where}: missing {len(missing)} tensor(s), first {missing[:3]}; the checkpoint "
            f"does not match its config ({cfg['model_type']}, {cfg['num_hidden_layers']} "
            f"layers).{hint}"
        )
    unexpected = [
        n for n in found
        if n not in expected
        and not n.endswith(_IGNORABLE_SUFFIXES)
        and not (n == "lm_head.weight" and cfg.get("tie_word_embeddings"))
    ]
    if unexpected:
        raise ModelSourceError(
            f"{where}: unexpected tensor(s) {unexpected[:3]} (total {len(unexpected)}) for a "
            f"{cfg['model_type']} model; this checkpoint is a variant the loader does not know "
            f"(check config.json's model_type / attention_bias / mlp_bias)."
        )
    for name, shape in expected.items():
        if tuple(found[name]) != shape:
            raise ModelSourceError(
                f"{where}: tensor {name!r} has shape {tuple(found[name])}, but config.json "
                f"implies {shape} (hidden_size={cfg['hidden_size']}, "
                f"intermediate_size={cfg['intermediate_size']}, "
                f"heads={cfg['num_attention_heads']}/{cfg['num_key_value_heads']}, "
                f"head_dim={cfg['head_dim']}, vocab_size={cfg['vocab_size']}). The config and "
                f"the weights do not belong together."
            )
    return list(expected)


# ---------------------------------------------------------------------------------------------
# Rope layout
# ---------------------------------------------------------------------------------------------
# Meta's original Llama code (and llama2.c, and llama.cpp / GGUF) rotate adjacent pairs
# (x[2i], x[2i+1]) of each head; Hugging Face rotates (x[i], x[i + head_dim/2]). The two are the
# same model once the output rows of q_proj / k_proj are reordered within each head. In the
# interleaved layout row 2i+j of a head (j in {0, 1}) is row j*head_dim/2 + i of the HF layout.

def interleaved_to_half_split(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k projection rows from interleaved-pair rope layout to HF's half-split layout.

    `w` is (n_heads * head_dim, ...) (a weight or a bias); `n_heads` is the number of heads the
    rows belong to: num_attention_heads for q, num_key_value_heads for k.
    """
    rows = w.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ModelSourceError(
            f"cannot un-permute rope rows: {rows} rows do not split into {n_heads} heads of "
            f"even size"
        )
    head_dim = rows // n_heads
    rest = w.shape[1:]
    # (head, pair index i, j) -> (head, j, i): rows [h, 2i + j] move to [h, j * hd/2 + i].
    return (
        w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)
    )


def half_split_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `interleaved_to_half_split` (what llama.cpp's converter applies)."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    rest = w.shape[1:]
    return (
        w.reshape(n_heads, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(rows, *rest)
    )


def num_elements(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))

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

from .. import models
# Llama's q/k row order in GGUF and llama2.c (defined with the GGUF transforms, used by llama2c.py).
from ..models.gguf_common import half_split_to_interleaved, interleaved_to_half_split

__all__ = [
    "ModelSourceError",
    "SourceModel",
    "normalize_hf_config",
    "expected_tensor_shapes",
    "check_tensor_set",
    "interleaved_to_half_split",
    "half_split_to_interleaved",
]

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

def _fold_rope(cfg: dict[str, Any], params: dict[str, Any], theta_key: str, scaling_key: str) -> None:
    params = dict(params)
    if "rope_theta" in params:
        cfg[theta_key] = float(params.pop("rope_theta"))
    if "partial_rotary_factor" in params:
        cfg["partial_rotary_factor"] = params.pop("partial_rotary_factor")
    rope_type = params.get("rope_type", params.get("type", "default"))
    cfg[scaling_key] = params if rope_type not in (None, "default") else None


def _rope_from_parameters(cfg: dict[str, Any]) -> None:
    """Fold transformers-5 `rope_parameters` into the classic `rope_theta` + `rope_scaling` keys.

    transformers 5 saves `{"rope_parameters": {"rope_type": "default", "rope_theta": ...}}` (per
    kind of layer for Gemma 3: `{"full_attention": {...}, "sliding_attention": {...}}`); older
    releases (and most checkpoints on the Hub) save `rope_theta` and `rope_scaling` (and Gemma 3's
    `rope_local_base_freq`). We keep the classic spelling, which transformers 5 still reads, so
    consumers look in one place.
    """
    params = cfg.pop("rope_parameters", None)
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        _fold_rope(cfg, params.get("full_attention", {}), "rope_theta", "rope_scaling")
        if "sliding_attention" in params:
            _fold_rope(cfg, params["sliding_attention"], "rope_local_base_freq", "local_rope_scaling")
    elif isinstance(params, dict):
        _fold_rope(cfg, params, "rope_theta", "rope_scaling")
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

    `where` names the file (or source) in error messages. The architecture (from the registry)
    supplies its config class's defaults; the result always has model_type, architectures,
    num_key_value_heads, head_dim, rope_theta and rope_scaling (None or a dict with
    "rope_type"). Unknown keys are kept: the architecture file reads what it needs.
    """
    try:
        arch = models.get_architecture(raw.get("model_type"))
    except models.ArchitectureError as e:
        raise ModelSourceError(f"{where}: {e}") from None
    if arch.hf_text_config is not None:
        raw = arch.hf_text_config(raw)
    raw = dict(raw)
    _rope_from_parameters(raw)  # before the defaults: rope_parameters speaks for the checkpoint
    cfg = {**arch.hf_defaults, **raw}  # an explicit null (no softcap, no window) stays null
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
    cfg.setdefault("architectures", [arch.hf_class])
    if cfg.get("num_key_value_heads") is None:
        cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    if not cfg.get("head_dim"):
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["rope_theta"] = float(cfg.get("rope_theta") or 10000.0)
    cfg.setdefault("rope_scaling", None)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        cfg.setdefault(key, None)
    try:
        arch.config_from_hf(cfg)  # every option is read (and refused) in the architecture file
    except models.ArchitectureError as e:
        raise ModelSourceError(f"{where}: {e}") from None
    return cfg


def expected_tensor_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of this (normalised) config must have, with its HF shape.

    `lm_head.weight` is listed only when embeddings are untied: a tied model reuses
    `model.embed_tokens.weight`.
    """
    return models.get_architecture(cfg["model_type"]).hf_tensor_shapes(cfg)


# Buffers some old checkpoints saved that carry no information (recomputed from the config).
# Rope tables some checkpoints save (Llama's older exports, ChatGLM's rotary_pos_emb): recomputed.
_IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq")


def check_tensor_set(
    found: dict[str, tuple[int, ...]], cfg: dict[str, Any], where: str,
    expected: dict[str, tuple[int, ...]] | None = None,
) -> list[str]:
    """Check a checkpoint's tensors against the config; return the HF names to expose, in order.

    Raises ModelSourceError naming the first missing tensor, unexpected tensor, or shape mismatch.
    A tied model that nevertheless stores `lm_head.weight` (some exporters write both) has the
    copy dropped, so `tensor_names` holds lm_head only when it is really separate. `expected`
    is expected_tensor_shapes(cfg), for a caller that already has it.
    """
    expected = expected if expected is not None else expected_tensor_shapes(cfg)
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
            f"(check config.json's model_type and its bias / norm options)."
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


def num_elements(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))

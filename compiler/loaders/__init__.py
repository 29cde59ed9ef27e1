"""Model-source loaders: any supported input -> one normalized `SourceModel`.

    from sphere_aae.loaders import load_source, export_hf_dir
    src = load_source("SmolLM2-135M-Instruct.Q4_1.gguf")   # or an HF folder, or a llama2.c .bin
    src.hf_config["num_hidden_layers"], src.tensor_names[:3]
    w = src.get_tensor("model.layers.0.self_attn.q_proj.weight")   # float32, HF layout
    export_hf_dir(src, "/tmp/smollm2-hf")   # transformers-loadable copy of the same weights

Supported inputs:
* a Hugging Face folder: config.json + model.safetensors (or model.safetensors.index.json and
  shards) or pytorch_model.bin (or pytorch_model.bin.index.json and shards);
* a .gguf file (any architecture in the registry with a GGUF map; F32/F16/BF16 and every quantization the `gguf` package can
  dequantize, e.g. Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K);
* a llama2.c v0 checkpoint .bin, with its tokenizer .bin beside it or passed as `tokenizer=`.
"""

from __future__ import annotations

from pathlib import Path

from ..models import ARCHITECTURES as _ARCHITECTURES
from .base import (
    ModelSourceError,
    SourceModel,
    expected_tensor_shapes,
    half_split_to_interleaved,
    interleaved_to_half_split,
)
from .export import export_hf_dir
from .gguf_loader import gguf_tokenizer_files, load_gguf
from .hf import is_hf_folder, load_hf_folder
from .llama2c import is_llama2c_checkpoint, load_llama2c
from .tokenizer_build import BYTE_LEVEL_PRE

# HF model_types the registry (sphere_aae.models) knows; a loader refuses anything else up front.
SUPPORTED_ARCHITECTURES: set[str] = set(_ARCHITECTURES)

__all__ = [
    "BYTE_LEVEL_PRE",
    "ModelSourceError",
    "SUPPORTED_ARCHITECTURES",
    "SourceModel",
    "expected_tensor_shapes",
    "export_hf_dir",
    "gguf_tokenizer_files",
    "half_split_to_interleaved",
    "interleaved_to_half_split",
    "load_source",
]


def load_source(path: str | Path, tokenizer: str | Path | None = None) -> SourceModel:
    """Load a model source (see module docstring) into a `SourceModel`.

    `tokenizer` is only used for llama2.c checkpoints (their tokenizer .bin); other formats carry
    their tokenizer. Raises `ModelSourceError` with a message naming the file and the fix.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelSourceError(
            f"{p}: no such file or folder. Pass a Hugging Face model folder, a .gguf file or a "
            f"llama2.c .bin checkpoint."
        )
    if p.is_dir():
        if is_hf_folder(p):
            return load_hf_folder(p)
        ggufs = sorted(p.glob("*.gguf"))
        hint = f" It holds {len(ggufs)} .gguf file(s): pass one of them directly." if ggufs else ""
        raise ModelSourceError(
            f"{p}: not a Hugging Face model folder (no config.json).{hint}"
        )
    with p.open("rb") as f:
        magic = f.read(4)
    if magic == b"GGUF" or p.suffix == ".gguf":
        return load_gguf(p)
    if p.suffix == ".bin" and is_llama2c_checkpoint(p):
        return load_llama2c(p, Path(tokenizer) if tokenizer is not None else None)
    if (p.parent / "config.json").is_file() and p.suffix in (".safetensors", ".bin", ".json"):
        # A file inside a Hugging Face folder (weights, a shard, the index, config.json): the
        # folder is what the user means.
        return load_hf_folder(p.parent)
    hint = ""
    if magic == b"PK\x03\x04" or p.suffix == ".safetensors":
        hint = (" It looks like Hugging Face weights: put it in a folder with the model's "
                "config.json and tokenizer files, and pass the folder.")
    raise ModelSourceError(
        f"{p}: unrecognised model file (starts with {magic!r}). Supported: a Hugging Face folder, "
        f"a .gguf file, a llama2.c .bin checkpoint.{hint}"
    )

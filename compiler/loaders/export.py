"""Write a SourceModel back out as a plain Hugging Face folder.

Used to give transformers exactly the weights our compiler sees (after dequantization and layout
fixes) for numerics checks: AutoModelForCausalLM / AutoTokenizer.from_pretrained(out_dir).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import models
from ..artifact import atomic_write_bytes
from .base import SourceModel
from .safetensors_io import write_safetensors


def export_hf_dir(src: SourceModel, out_dir: Path | str) -> Path:
    """config.json + model.safetensors (float32) + tokenizer files in `out_dir`; returns it.

    Tied models get no lm_head.weight (transformers ties it to the embedding itself).
    Weights are streamed one tensor at a time, so peak memory is one tensor, not the model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(src.hf_config)
    # Float32 throughout: transformers 5 reads "dtype", transformers 4 "torch_dtype".
    config["dtype"] = "float32"
    config["torch_dtype"] = "float32"
    write_safetensors(
        out / "model.safetensors", src.tensor_names, src.tensor_shapes, src.get_tensor,
        metadata={"format": "pt"},
    )
    for name, data in src.tokenizer_files.items():
        atomic_write_bytes(out / name, data)
    # config.json last: a folder with a config.json is a complete folder.
    atomic_write_bytes(out / "config.json", json.dumps(config, indent=2).encode("utf-8"))
    return out


def needs_reference_export(src_config: dict) -> bool:
    """Whether transformers reads this checkpoint only through `reference_source` (no class of its own)."""
    return models.get_architecture(src_config.get("model_type")).reference_config is not None


def reference_source(src: SourceModel) -> SourceModel:
    """The source as transformers can load it: itself, or for an architecture transformers has no
    class for, the equivalent model the architecture names (Architecture.reference_config)."""
    arch = models.get_architecture(src.hf_config.get("model_type"))
    if arch.reference_config is None:
        return src
    assert arch.reference_weights is not None
    tensors = arch.reference_weights(src.hf_config)

    def read(name: str):
        _, how = tensors[name]
        return how.build([src.get_tensor(n) for n in how.hf_names])

    return SourceModel(
        path=src.path, format=src.format, hf_config=arch.reference_config(src.hf_config),
        tensor_names=list(tensors), tokenizer_files=src.tokenizer_files,
        tensor_shapes={n: shape for n, (shape, _) in tensors.items()}, _reader=read,
    )

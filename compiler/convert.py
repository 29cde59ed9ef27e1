"""`convert_weight`: source model -> quantized tensors in 64-byte-aligned shards + tensor manifest.

Tensors are produced in the compiled functions' parameter order and streamed into shards, so the
whole model is never held twice in memory. Each HF source tensor is read once; a parameter built
from several (fused q/k/v) is combined before quantization.
"""

from __future__ import annotations

import hashlib
import io
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import artifact
from .loaders import SourceModel
from .models import Architecture, get_architecture
from .quantization import QuantScheme, convert_param, quantize_model, unquantized_kind, unquantized_reason


class WeightError(ValueError):
    """A source tensor is missing or has the wrong shape for the architecture."""


def declared_params(arch: Architecture, cfg: Any, scheme: QuantScheme) -> tuple[dict[str, tuple[int, ...]], list[tuple[str, tuple[int, ...], str]], dict[str, int]]:
    """(unquantized name -> shape, stored params in order [(name, shape, dtype)], quantized names)."""
    plain = arch.build(cfg, "float32")
    float_shapes = {name: tuple(int(d) for d in p.shape) for name, p in plain.named_parameters()}
    model, quantized, _ = quantize_model(arch.build(cfg, "float32"), scheme)
    stored = [(name, tuple(int(d) for d in p.shape), p.dtype) for name, p in model.named_parameters()]
    return float_shapes, stored, quantized


def _stored_to_source(name: str, float_shapes: dict[str, tuple[int, ...]]) -> str:
    if name in float_shapes:
        return name
    for suffix in (".q_weight", ".q_scale", ".q_min"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".weight"
    raise KeyError(name)


class _ShardWriter:
    def __init__(self, out_dir: Path, shard_bytes: int):
        self.out_dir = out_dir
        self.shard_bytes = shard_bytes
        self.shards: list[dict[str, Any]] = []
        self.buf = io.BytesIO()

    def add(self, data: bytes) -> tuple[int, int]:
        """Append one tensor; returns (shard index, byte offset)."""
        pos = self.buf.tell()
        aligned = -(-pos // artifact.TENSOR_ALIGNMENT) * artifact.TENSOR_ALIGNMENT
        if pos > 0 and aligned + len(data) > self.shard_bytes:
            self.flush()
            aligned = 0
        self.buf.write(b"\0" * (aligned - self.buf.tell()))
        self.buf.write(data)
        return len(self.shards), aligned

    def flush(self) -> None:
        if self.buf.tell() == 0:
            return
        data = self.buf.getvalue()
        name = artifact.shard_name(len(self.shards))
        artifact.atomic_write_bytes(self.out_dir / name, data)
        self.shards.append({"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        self.buf = io.BytesIO()


def convert_weight(
    source: SourceModel,
    quantization: QuantScheme,
    out_dir: Path,
    *,
    shard_bytes: int = artifact.DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> dict[str, Any]:
    """Write `params/shard-*.bin` and `tensor-manifest.json` into out_dir; returns the manifest."""
    out_dir = Path(out_dir)
    arch = get_architecture(source.hf_config.get("model_type"))
    cfg = arch.config_from_hf(source.hf_config)
    float_shapes, stored, quantized = declared_params(arch, cfg, quantization)
    mapping = arch.weight_map(cfg)
    missing_keys = set(float_shapes) - set(mapping)
    assert not missing_keys, f"weight_map lacks {missing_keys}"  # a bug in the architecture file
    available = set(source.tensor_names)
    for name, src in mapping.items():
        absent = [n for n in src.hf_names if n not in available]
        if absent:
            raise WeightError(f"{source.path}: tensor {absent[0]!r} (needed for {name}) is missing from the checkpoint")

    writer = _ShardWriter(out_dir, shard_bytes)
    tensors: list[dict[str, Any]] = []
    pending: dict[str, np.ndarray] = {}  # stored tensors converted alongside an earlier one
    bar = tqdm(total=len(stored), desc=f"convert {quantization.name}", unit="tensor", disable=not progress)
    for name, shape, dtype in stored:
        if name not in pending:
            src_name = _stored_to_source(name, float_shapes)
            src = mapping[src_name]
            arrays = []
            for hf_name in src.hf_names:
                arr = np.asarray(source.get_tensor(hf_name))
                arrays.append(arr)
            weight = src.build(arrays)
            if tuple(weight.shape) != float_shapes[src_name]:
                raise WeightError(
                    f"{source.path}: {', '.join(src.hf_names)} give shape {tuple(weight.shape)} for {src_name}, "
                    f"the config says {float_shapes[src_name]}; the checkpoint does not match its config.json"
                )
            pending.update(convert_param(src_name, weight, quantization, quantized))
        data = np.ascontiguousarray(pending.pop(name))
        assert tuple(data.shape) == shape and str(data.dtype) == dtype, (name, data.shape, data.dtype, shape, dtype)
        shard, offset = writer.add(data.tobytes())
        tensors.append(
            {"name": name, "shape": list(shape), "dtype": dtype, "shard": shard, "byte_offset": offset, "bytes": data.nbytes}
        )
        bar.update(1)
    writer.flush()
    bar.close()
    # Nothing is left in float silently: every such tensor is listed, with the reason.
    left = [(n, s) for n, s, _ in stored if _stored_to_source(n, float_shapes) not in quantized]
    unquantized = [{"name": n, "reason": unquantized_reason(n, s, quantization)} for n, s in left]
    if progress and quantization.weight is not None:
        kinds = Counter(unquantized_kind(n, s) for n, s in left)
        summary = ", ".join(f"{count} x {kind}" for kind, count in kinds.items())
        print(f"[convert] {len(quantized)} matrices quantized; left in {quantization.model_dtype}: {summary} "
              f"(listed in {artifact.MANIFEST} under 'unquantized')", file=sys.stderr, flush=True)
    manifest = {
        "format_version": artifact.FORMAT_VERSION,
        "quantization": quantization.name,
        "total_bytes": sum(s["bytes"] for s in writer.shards),
        "shards": writer.shards,
        "tensors": tensors,
        "unquantized": unquantized,
    }
    artifact.atomic_write_json(out_dir / artifact.MANIFEST, manifest)
    return manifest

"""`aae-web build`: one self-contained, hostable model folder (config + shards + wasm).

The folder holds two model libraries over the same shards: the WebGPU one (`model_lib.webgpu`)
and the CPU fallback (`model_lib.wasm`, `compile --device wasm`), which the browser engine runs
where WebGPU is missing or cannot run the model; `--no-wasm` leaves the fallback out.

The folder lands in `<output>/<model-id>/`, and `<output>/models.json` lists every built model
(the demo site's model picker reads it). `model_url` entries are relative to models.json, so the
whole output folder can be hosted anywhere as it is.

Before anything is written, the model's stored tensors (from its config and the scheme, without
converting) are checked against the artifact's `max_binding_bytes`: WebGPU binds each weight
tensor as one storage buffer, and compatibility-mode adapters allow 128 MiB. Vocabulary-sized
tensors are split into row parts by the compiler and pass; any other tensor above the limit is
refused with its name, its size and the fix (a quantized scheme).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from .. import artifact
from ..compile import compile_model
from ..pipeline import (
    DEFAULT_MODEL,
    _source_fingerprint,
    build_model_folder,
    code_fingerprint,
    default_model_id,
    library_key,
    resolve_model_path,
)

MODELS_LIST = "models.json"
# Schemes suggested, in order, when a tensor is too large for one binding.
SUGGESTED_SCHEMES = ("q4f32_1", "q4f16_1")
# Chat-config key recording what the converted weights were made from (see _weights_key).
WEIGHTS_KEY = "weights_key"


def _weights_key(source: Path, quantization: str) -> str:
    """Source files (names, sizes, mtimes), scheme and converter code: what the shards depend on.

    A rebuild is skipped only when all three are unchanged, so an edited source model or a changed
    quantization scheme can never leave stale shards behind a fresh wasm.
    """
    material = f"{source}|{_source_fingerprint(source)}|{quantization}|{code_fingerprint()}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _stale(folder: Path, quantization: str, key: str) -> bool:
    try:
        cfg = artifact.read_chat_config(folder)
        manifest = artifact.read_manifest(folder)
    except artifact.ArtifactError:
        return True
    if cfg.get("quantization") != quantization or cfg.get(WEIGHTS_KEY) != key:
        return True
    # A shard deleted or truncated by hand also means rebuilding (hashing 100 MB is not needed:
    # sizes catch truncation, and the browser verifies every shard's sha256 anyway).
    return any(
        not (folder / s["file"]).is_file() or (folder / s["file"]).stat().st_size != s["bytes"] for s in manifest["shards"]
    )


class BindingLimitError(ValueError):
    """A model tensor would exceed one WebGPU storage binding (artifact max_binding_bytes)."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def oversized_tensors(hf_config: dict[str, Any], quantization: str) -> list[tuple[str, tuple[int, ...], str, int]]:
    """(name, shape, dtype, bytes) of every tensor `quantization` stores above max_binding_bytes,
    largest first, computed from the config alone (nothing is converted)."""
    from ..convert import declared_params
    from ..models import get_architecture
    from ..quantization import get_scheme

    arch = get_architecture(hf_config.get("model_type"))
    cfg = arch.config_from_hf(hf_config)
    _, stored, _ = declared_params(arch, cfg, get_scheme(quantization))
    out = []
    for name, shape, dtype in stored:
        size = math.prod(shape) * artifact.DTYPE_BYTES[str(dtype)]
        if size > artifact.MAX_BINDING_BYTES:
            out.append((name, tuple(shape), str(dtype), size))
    return sorted(out, key=lambda t: -t[3])


def check_binding_limits(source: Path, hf_config: dict[str, Any], quantization: str) -> None:
    """Raise BindingLimitError (naming the tensor, its size, the limit and the fix) when some tensor
    of `quantization` would not fit one WebGPU storage binding."""
    too_big = oversized_tensors(hf_config, quantization)
    if not too_big:
        return
    name, shape, dtype, size = too_big[0]
    others = f" (and {len(too_big) - 1} more tensor(s) above it)" if len(too_big) > 1 else ""
    fits = [q for q in SUGGESTED_SCHEMES if q != quantization and not oversized_tensors(hf_config, q)]
    if fits:
        fix = (f"Use a quantized scheme such as {fits[0]} (`aae-web build {source} --quantization {fits[0]}`), "
               f"whose tensors all fit.")
    else:
        fix = f"Even {' and '.join(SUGGESTED_SCHEMES)} leave a tensor above it: this model is too large for the browser engine."
    raise BindingLimitError(
        f"{source}: tensor {name} {list(shape)} {dtype} is {_mib(size)} ({size} bytes) in {quantization}{others}, "
        f"above the {_mib(artifact.MAX_BINDING_BYTES)} one WebGPU storage binding may hold on compatibility-mode "
        f"adapters (max_binding_bytes in artifact_format.json). {fix} Nothing was written."
    )


def register_model(output: Path, config: dict[str, Any], folder: Path) -> None:
    """Add or replace the model's entry in output/models.json (atomically)."""
    path = output / MODELS_LIST
    entries = json.loads(path.read_text()) if path.is_file() else []
    entries = [e for e in entries if e.get("model_id") != config["model_id"]]
    manifest = artifact.read_manifest(folder)
    entries.append({
        "model_id": config["model_id"],
        "model_url": f"{folder.name}/",
        "quantization": config["quantization"],
        "model_type": config["model_type"],
        "required_features": config["required_features"],
        "context_window_size": config["context_window_size"],
        "weights_bytes": manifest["total_bytes"],
        "wasm": config["model_lib"]["webgpu"],
        "model_lib": config["model_lib"],  # every library of the folder, by device
    })
    entries.sort(key=lambda e: e["model_id"])
    artifact.atomic_write_json(path, entries)


def build_web_model(
    model: str = DEFAULT_MODEL,
    *,
    quantization: str = "q4f32_1",
    output: Path = Path("dist"),
    model_id: str | None = None,
    force: bool = False,
    progress: bool = True,
    wasm: bool = True,
) -> Path:
    """Build `model` into `output/<model-id>/`; `wasm`: also the CPU fallback library."""
    from ..loaders import load_source

    output = Path(output)
    source = resolve_model_path(model)
    if (source / artifact.CHAT_CONFIG).is_file():
        raise ValueError(f"{source} is already a built model folder; give aae-web build the source model (HF folder, GGUF, catalog name)")
    # Before anything is written: every tensor must fit one storage binding.
    check_binding_limits(source, load_source(source).hf_config, quantization)
    model_id = model_id or default_model_id(source, quantization)
    folder = output / model_id
    weights_key = _weights_key(source, quantization)
    if force or _stale(folder, quantization, weights_key):
        build_model_folder(source, quantization, folder, model_id=model_id, progress=progress)
    elif progress:
        print(f"[build] reusing converted weights in {folder}", flush=True)
    config = artifact.read_chat_config(folder)
    config[WEIGHTS_KEY] = weights_key
    config["model_lib"] = dict(config.get("model_lib", {}))
    config["model_lib_key"] = dict(config.get("model_lib_key", {}))
    for device in ("webgpu", "wasm"):
        lib_name = artifact.model_lib_name(model_id, device)
        lib = folder / lib_name
        if device == "wasm" and not wasm:
            # Left out: no entry, and no stale file of an earlier build beside the shards.
            config["model_lib"].pop(device, None)
            config["model_lib_key"].pop(device, None)
            lib.unlink(missing_ok=True)
            continue
        # A library depends only on the config it is keyed by; reuse it when that is unchanged.
        key = library_key(config, device, False)
        if force or not lib.is_file() or config["model_lib_key"].get(device) != key:
            compile_model(folder, device, lib, progress=progress)
        config["model_lib"][device] = lib_name
        config["model_lib_key"][device] = key
    artifact.atomic_write_json(folder / artifact.CHAT_CONFIG, config)
    register_model(output, config, folder)
    return folder

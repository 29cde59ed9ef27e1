"""Read and write the model artifact described in ARTIFACT.md (its constants: artifact_format.json).

Everything here writes atomically: data goes to a temporary file in the destination folder, is
flushed to disk, then renamed over the target, so readers never see half a file.
"""

from __future__ import annotations

import json
import os
import tempfile

# mkstemp/mkdtemp create 0600/0700 entries; built models are meant to be hosted, so published
# files get the usual permissions (as open() would give them) before they are renamed in.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK
from pathlib import Path
from typing import Any

FORMAT: dict[str, Any] = json.loads((Path(__file__).with_name("artifact_format.json")).read_text())
FORMAT_VERSION: int = FORMAT["format_version"]
FILES: dict[str, str] = FORMAT["files"]
CHAT_CONFIG = FILES["chat_config"]
MANIFEST = FILES["manifest"]
TENSOR_ALIGNMENT: int = FORMAT["tensor_alignment"]
DEFAULT_SHARD_BYTES: int = FORMAT["default_shard_bytes"]
KV_PAGE_SIZE: int = FORMAT["kv_page_size"]
MAX_BINDING_BYTES: int = FORMAT["max_binding_bytes"]
DTYPE_BYTES: dict[str, int] = FORMAT["dtype_bytes"]
CHAT_CONFIG_OPTIONAL: dict[str, Any] = FORMAT["chat_config_optional"]
MESSAGES: dict[str, str] = FORMAT["messages"]
VM_FUNCTIONS: dict[str, list[str]] = FORMAT["functions"]
KV_BUILTINS: dict[str, str] = FORMAT["kv_builtins"]


class ArtifactError(ValueError):
    """A model folder is missing a file, has a malformed one, or fails verification."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def atomic_copy(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, Path(src).read_bytes())


def model_lib_name(model_id: str, device: str) -> str:
    ext = "wasm" if device == "webgpu" else "so"
    return FILES["model_lib_pattern"].format(model_id=model_id, device=device, ext=ext)


def shard_name(index: int) -> str:
    return FILES["shard_pattern"].format(index=index)


def _require(obj: dict[str, Any], keys: list[str], what: str, path: Path) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ArtifactError(f"{path}: {what} lacks {', '.join(missing)}; rebuild the model with `sphere_aae convert_weight/gen_config`")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; build the model folder with `aae-web build` or `sphere_aae convert_weight` + `gen_config`")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); rebuild it") from e
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {version}, this sphere_aae reads {FORMAT_VERSION}; rebuild the model")
    return obj


def read_chat_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / CHAT_CONFIG
    cfg = _read_json(path)
    _require(cfg, FORMAT["chat_config_required"], "chat config", path)
    check_single_device(cfg, path)
    return cfg


def check_single_device(cfg: dict[str, Any], path: Path) -> None:
    """Refuse a config made for tensor parallelism: every AAE build is single-device, so such a
    model cannot load as configured (web/src/artifact.ts gives the same message)."""
    shards = cfg.get("tensor_parallel_shards", CHAT_CONFIG_OPTIONAL["tensor_parallel_shards"])
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ArtifactError(f"{path}: tensor_parallel_shards must be an integer >= 1, got {shards!r}")
    if shards != 1:
        raise ArtifactError(f"{path}: " + MESSAGES["tensor_parallel_shards"].format(shards=shards))


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST
    man = _read_json(path)
    _require(man, FORMAT["manifest_required"], "manifest", path)
    for shard in man["shards"]:
        _require(shard, FORMAT["shard_required"], "shard entry", path)
    for t in man["tensors"]:
        _require(t, FORMAT["tensor_required"], f"tensor {t.get('name')!r}", path)
    return man

"""Read and write the model artifact described in ARTIFACT.md (its constants: artifact_format.json).

Everything here writes atomically: data goes to a temporary file in the destination folder, is
flushed to disk, then renamed over the target, so readers never see half a file.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile

# mkstemp/mkdtemp create 0600/0700 entries; built models are meant to be hosted, so published
# files get the usual permissions (as open() would give them) before they are renamed in.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK
from pathlib import Path
from typing import Any, NoReturn

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
MODEL_LIB_DEVICES: dict[str, str] = FORMAT["model_lib_devices"]  # device -> library file extension
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
    ext = MODEL_LIB_DEVICES[device]
    return FILES["model_lib_pattern"].format(model_id=model_id, device=device, ext=ext)


def shard_name(index: int) -> str:
    return FILES["shard_pattern"].format(index=index)


# ---------------------------------------------------------------------------------------------
# Validation: the same checks, in the same order and with the same messages (artifact_format.json
# "messages"), as web/src/artifact.ts's parseChatConfig / parseManifest, so a malformed model
# folder fails the same way natively and in the browser (tests/fixtures/artifact_cases.json).
# Numbers are judged as JSON.parse reads them: 2.0 is the integer 2 (and is stored back as one),
# true is not a number, and integers must be exact in a double (|n| <= 2**53 - 1).

_MAX_SAFE_INTEGER = 2**53 - 1
_MISSING = object()
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _fail(path: Path, key: str, **values: Any) -> NoReturn:
    raise ArtifactError(f"{path}: " + MESSAGES[key].format(**values))


def _show(v: Any) -> str:
    """A value as JSON text, as JSON.stringify writes it ("missing" when absent)."""
    if v is _MISSING:
        return "missing"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def _int(v: Any) -> int | None:
    """v as an integer if JavaScript's Number.isSafeInteger would accept the parsed value."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        return None
    n = int(v)
    return n if abs(n) <= _MAX_SAFE_INTEGER else None


def _count(v: Any) -> int | None:
    n = _int(v)
    return n if n is not None and n >= 0 else None


def _require(obj: dict[str, Any], keys: list[str], what: str, path: Path) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        _fail(path, "lacks", what=what, keys=", ".join(missing))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; build the model folder with `aae-web build` or `sphere_aae convert_weight` + `gen_config`")

    def no_constant(name: str) -> None:  # NaN / Infinity: Python reads them, JSON (and a browser) does not
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constant)
    except ValueError as e:  # JSONDecodeError, a bad constant, bytes that are not UTF-8
        raise ArtifactError(f"{path} is not valid JSON ({e}); rebuild it") from e


def _check_document(obj: Any, required: list[str], what: str, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        _fail(path, "not_object")
    version = obj.get("format_version", _MISSING)
    if _int(version) != FORMAT_VERSION:
        _fail(path, "format_version", got=_show(version), expected=FORMAT_VERSION)
    _require(obj, required, what, path)
    return obj


def check_relative_path(file: Any, what: str, path: Path) -> str:
    """A file name from a model's JSON stays inside the model folder: relative, no "." or ".."
    segment, no scheme (web/src/artifact.ts checkRelativePath)."""
    if not isinstance(file, str) or not file:
        _fail(path, "non_empty_string", what=what)
    if _SCHEME.match(file) or file.startswith(("/", "\\")):
        _fail(path, "relative_path", what=what, file=_show(file))
    if any(seg in (".", "..") for seg in re.split(r"[\\/]", file)):
        _fail(path, "dot_segments", what=what, file=_show(file))
    return file


def _positive(obj: dict[str, Any], key: str, what: str, path: Path) -> None:
    n = _int(obj.get(key))
    if n is None or n < 1:
        _fail(path, "positive_integer", what=what)
    obj[key] = n


def _counts(v: Any) -> list[int] | None:
    """v as a list of non-negative integers, or None."""
    ids = [_count(t) for t in v] if isinstance(v, list) else None
    return None if ids is None or None in ids else ids  # type: ignore[return-value]


def read_chat_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / CHAT_CONFIG
    return check_chat_config(_read_json(path), path)


def check_chat_config(raw: Any, path: Path) -> dict[str, Any]:
    """`raw` (a parsed aae-chat-config.json) if it is valid, else ArtifactError naming `path`."""
    cfg = _check_document(raw, FORMAT["chat_config_required"], "chat config", path)
    if not isinstance(cfg["model_id"], str) or not cfg["model_id"]:
        _fail(path, "non_empty_string", what="model_id")
    for k in ("context_window_size", "prefill_chunk_size", "max_batch_size"):
        _positive(cfg, k, k, path)
    window = _int(cfg["sliding_window_size"])
    if window is None:
        _fail(path, "sliding_window_size")
    cfg["sliding_window_size"] = window
    if not isinstance(cfg["model_config"], dict):
        _fail(path, "object", what="model_config")
    for k in ("hidden_size", "vocab_size"):
        _positive(cfg["model_config"], k, f"model_config.{k}", path)
    eos = _counts(cfg["eos_token_ids"])
    if eos is None:
        _fail(path, "token_ids", what="eos_token_ids")
    cfg["eos_token_ids"] = eos
    if cfg["bos_token_id"] is not None:
        bos = _count(cfg["bos_token_id"])
        if bos is None:
            _fail(path, "token_id_or_null", what="bos_token_id")
        cfg["bos_token_id"] = bos
    if cfg["chat_template"] is not None and not isinstance(cfg["chat_template"], str):
        _fail(path, "string_or_null", what="chat_template")
    features = cfg["required_features"]
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        _fail(path, "strings", what="required_features")
    if not isinstance(cfg["model_lib"], dict):
        _fail(path, "model_lib")
    for device, file in cfg["model_lib"].items():
        if device not in MODEL_LIB_DEVICES:
            _fail(path, "model_lib_device", device=device, devices=", ".join(MODEL_LIB_DEVICES))
        check_relative_path(file, f"model_lib.{device}", path)
    check_relative_path(cfg["manifest"], "manifest", path)
    if not isinstance(cfg["tokenizer_files"], list):
        _fail(path, "array", what="tokenizer_files")
    for i, file in enumerate(cfg["tokenizer_files"]):
        check_relative_path(file, f"tokenizer_files[{i}]", path)
    if not isinstance(cfg["sampling"], dict):
        _fail(path, "object", what="sampling")
    check_single_device(cfg, path)
    return cfg


def check_single_device(cfg: dict[str, Any], path: Path) -> None:
    """Refuse a config made for tensor parallelism: every AAE build is single-device, so such a
    model cannot load as configured (web/src/artifact.ts gives the same message)."""
    given = cfg.get("tensor_parallel_shards", _MISSING)  # only absence means the default: null is malformed
    shards = _int(CHAT_CONFIG_OPTIONAL["tensor_parallel_shards"] if given is _MISSING else given)
    if shards is None or shards < 1:
        _fail(path, "tensor_parallel_shards_type", got=_show(given))
    if given is not _MISSING:
        cfg["tensor_parallel_shards"] = shards
    if shards != 1:
        _fail(path, "tensor_parallel_shards", shards=shards)


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST
    return check_manifest(_read_json(path), path)


def check_manifest(raw: Any, path: Path) -> dict[str, Any]:
    """`raw` (a parsed tensor-manifest.json) if it is valid, else ArtifactError naming `path`."""
    man = _check_document(raw, FORMAT["manifest_required"], "manifest", path)
    shards, tensors = man["shards"], man["tensors"]
    if not isinstance(shards, list):
        _fail(path, "array", what="shards")
    if not isinstance(tensors, list):
        _fail(path, "array", what="tensors")

    total = 0
    for i, s in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(s, dict):
            _fail(path, "object", what=where)
        _require(s, FORMAT["shard_required"], where, path)
        check_relative_path(s["file"], f"{where}.file", path)
        size = _count(s["bytes"])
        if size is None:
            _fail(path, "non_negative_integer", what=f"{where}.bytes")
        s["bytes"] = size
        if not isinstance(s["sha256"], str) or not _SHA256.fullmatch(s["sha256"]):
            _fail(path, "sha256", what=f"{where}.sha256")
        total += size
    if _int(man["total_bytes"]) != total:
        _fail(path, "total_bytes", got=_show(man["total_bytes"]), sum=total)
    man["total_bytes"] = total

    names: set[str] = set()
    for i, t in enumerate(tensors):
        what = f"tensors[{i}]"
        if not isinstance(t, dict):
            _fail(path, "object", what=what)
        _require(t, FORMAT["tensor_required"], what, path)
        name = t["name"]
        if not isinstance(name, str):
            _fail(path, "string", what=f"{what}.name")
        if name in names:
            _fail(path, "duplicate_tensor", what=what, name=name)
        names.add(name)
        shape = _counts(t["shape"])
        if shape is None:
            _fail(path, "shape", what=what, name=name)
        t["shape"] = shape
        itemsize = DTYPE_BYTES.get(t["dtype"]) if isinstance(t["dtype"], str) else None
        if itemsize is None:
            _fail(path, "dtype", what=what, name=name, dtype=_show(t["dtype"]))
        shard = _count(t["shard"])
        if shard is None or shard >= len(shards):
            _fail(path, "shard_index", what=what, name=name, shard=_show(t["shard"]))
        offset = _count(t["byte_offset"])
        if offset is None or offset % TENSOR_ALIGNMENT:
            _fail(path, "byte_offset", what=what, name=name, alignment=TENSOR_ALIGNMENT)
        expected = math.prod(shape) * itemsize
        if _int(t["bytes"]) != expected:
            _fail(path, "tensor_bytes", what=what, name=name, got=_show(t["bytes"]), expected=expected)
        t["shard"], t["byte_offset"], t["bytes"] = shard, offset, expected
        end = offset + expected
        if end > shards[shard]["bytes"]:
            _fail(path, "past_shard_end", what=what, name=name, end=end, shard_file=shards[shard]["file"], size=shards[shard]["bytes"])
    return man

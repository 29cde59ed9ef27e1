"""Reading and writing the safetensors format directly.

Why not the `safetensors` package's `safe_open`? Its numpy backend cannot return bfloat16, and we
want (a) to memory-map each file once and hand out zero-copy float32 views, and (b) to tell a
truncated file apart from a corrupt one with a message that says which. The format is tiny:
8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, then
the raw little-endian tensor bytes, offsets relative to the end of the header.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import ModelSourceError, num_elements

# safetensors dtype name -> numpy dtype used to read the raw bytes. BF16 has no numpy dtype:
# read it as uint16 and widen (see `_to_float32`).
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}

# A header bigger than this is a corrupt length field, not a real header.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (as uint16) -> float32: bfloat16 is the top half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


@dataclass
class SafetensorsEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


class SafetensorsFile:
    """One .safetensors file: its header, parsed and checked, and a lazily opened memory map."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
        except OSError as e:
            raise ModelSourceError(f"{path}: cannot read ({e.strerror})") from e
        if size < 8:
            raise ModelSourceError(
                f"{path}: {size} bytes is too short to be a safetensors file (truncated "
                f"download?). Download the file again."
            )
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > _MAX_HEADER_BYTES:
                raise ModelSourceError(
                    f"{path}: not a safetensors file (header length field {header_len} is "
                    f"absurd). Is this really a .safetensors file?"
                )
            if 8 + header_len > size:
                raise ModelSourceError(
                    f"{path}: truncated: header says {header_len} bytes of JSON but the file has "
                    f"only {size - 8} after the length field. Download the file again."
                )
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ModelSourceError(f"{path}: corrupt safetensors header ({e})") from e
        if not isinstance(header, dict):
            raise ModelSourceError(f"{path}: corrupt safetensors header (not a JSON object)")
        data_start = 8 + header_len
        self.metadata: dict = header.pop("__metadata__", None) or {}
        self.entries: dict[str, SafetensorsEntry] = {}
        for name, info in header.items():
            try:
                dtype = info["dtype"]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise ModelSourceError(f"{path}: corrupt header entry for tensor {name!r}") from e
            if dtype not in _DTYPES:
                raise ModelSourceError(
                    f"{path}: tensor {name!r} has dtype {dtype}, which the loader cannot read "
                    f"(supported: {sorted(_DTYPES)})"
                )
            if end - begin != num_elements(shape) * _DTYPES[dtype].itemsize:
                raise ModelSourceError(
                    f"{path}: tensor {name!r}: header offsets span {end - begin} bytes but shape "
                    f"{shape} of {dtype} needs {num_elements(shape) * _DTYPES[dtype].itemsize}"
                )
            if data_start + end > size:
                raise ModelSourceError(
                    f"{path}: truncated: tensor {name!r} ends at byte {data_start + end} but the "
                    f"file is {size} bytes. The download was cut short; download it again."
                )
            self.entries[name] = SafetensorsEntry(dtype, shape, data_start + begin, data_start + end)
        self._map: np.memmap | None = None

    def _mmap(self) -> np.memmap:
        if self._map is None:
            # mode "r": read-only, shared with the page cache -- nothing is copied until used.
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored values (BF16 as uint16 bits), a read-only view of the file."""
        e = self.entries[name]
        dt = _DTYPES[e.dtype]
        return self._mmap()[e.begin:e.end].view(dt).reshape(e.shape)

    def float32(self, name: str) -> np.ndarray:
        e = self.entries[name]
        if e.dtype not in _FLOAT_DTYPES:
            raise ModelSourceError(
                f"{self.path}: tensor {name!r} is {e.dtype}, not a floating-point weight"
            )
        raw = self.raw(name)
        if e.dtype == "BF16":
            return bf16_to_float32(raw)
        if e.dtype == "F32":
            return raw  # zero-copy view
        return raw.astype(np.float32)


def write_safetensors(
    path: Path,
    names: Iterable[str],
    shapes: dict[str, tuple[int, ...]],
    get: Callable[[str], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Stream float32 tensors into `path` atomically, one tensor in memory at a time.

    The header needs every offset before any data, and the offsets only need shapes -- so we
    write the header from `shapes`, then fetch and write each tensor in turn. The file is written
    under a temporary name in the same folder and renamed into place at the end, so a crash leaves
    no half-written `model.safetensors`.
    """
    names = list(names)
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name in names:
        nbytes = num_elements(shapes[name]) * 4
        header[name] = {"dtype": "F32", "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad with spaces to a multiple of 8 so that tensor data is aligned for zero-copy readers.
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name in names:
                arr = np.ascontiguousarray(get(name), dtype="<f4")
                if tuple(arr.shape) != tuple(shapes[name]):
                    raise ModelSourceError(
                        f"tensor {name!r}: got shape {arr.shape}, header says {shapes[name]}"
                    )
                f.write(memoryview(arr).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

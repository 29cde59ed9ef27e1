"""A small, fast GGUF container parser (metadata + tensor directory; data stays memory-mapped).

Why not `gguf.GGUFReader`? It builds a numpy view per metadata element, which for a vocabulary of
~50k tokens and ~50k merges costs 3-10 s on these machines; parsing the same bytes with `struct`
takes a fraction of a second. We still use the `gguf` package for what it is good at: the
quantization block sizes and the dequantization kernels.

Layout (little-endian, GGUF v2/v3): "GGUF", u32 version, u64 tensor_count, u64 kv_count; kv_count
x (string key, u32 type, value); tensor_count x (string name, u32 n_dims, u64 dims[n_dims] in
ggml order (fastest-varying first), u32 ggml_type, u64 offset); padding to `general.alignment`
(default 32); tensor data, each tensor at data_start + offset. A string is u64 length + UTF-8 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelSourceError

# GGUF metadata value types.
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = range(10)
_UINT64, _INT64, _FLOAT64 = 10, 11, 12
_SCALARS: dict[int, str] = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
    _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
}
_NUMPY: dict[int, str] = {
    _UINT8: "<u1", _INT8: "<i1", _UINT16: "<u2", _INT16: "<i2", _UINT32: "<u4", _INT32: "<i4",
    _FLOAT32: "<f4", _BOOL: "?", _UINT64: "<u8", _INT64: "<i8", _FLOAT64: "<f8",
}


class _Truncated(Exception):
    pass


@dataclass
class GGUFTensor:
    name: str
    dims: tuple[int, ...]  # ggml order: dims[0] is the row length
    ggml_type: int
    offset: int  # absolute file offset of the data
    n_bytes: int
    row_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy / Hugging Face order."""
        return tuple(reversed(self.dims))

    @property
    def type_name(self) -> str:
        import gguf

        try:
            return gguf.GGMLQuantizationType(self.ggml_type).name
        except ValueError:
            return f"ggml_type_{self.ggml_type}"


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise _Truncated
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        # "replace" keeps a file with a stray non-UTF-8 token loadable; such tokens are rare and
        # reported by the tokenizer rebuild as unreachable, not silently renumbered.
        return bytes(self.take(n)).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.scalar("<I")
            count = self.scalar("<Q")
            if etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype])
                arr = np.frombuffer(self.take(count * dt.itemsize), dtype=dt)
                return arr.tolist()
            return [self.value(etype) for _ in range(count)]
        raise ValueError(f"unknown GGUF metadata value type {vtype}")


class GGUFFile:
    """Parsed GGUF header; tensor bytes are read lazily through a read-only memory map."""

    def __init__(self, path: Path):
        import gguf

        self.path = path
        self.size = path.stat().st_size
        with path.open("rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ModelSourceError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        cur = _Cursor(memoryview(self._map))
        try:
            cur.take(4)
            version = cur.scalar("<I")
            if version not in (2, 3):
                swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
                what = "a big-endian GGUF" if swapped in (2, 3) else f"GGUF version {version}"
                raise ModelSourceError(
                    f"{path}: {what} is not supported (little-endian GGUF v2/v3 only); "
                    f"re-convert the model with a current llama.cpp"
                )
            n_tensors = cur.scalar("<Q")
            n_kv = cur.scalar("<Q")
            self.version = version
            self.metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string()
                self.metadata[key] = cur.value(cur.scalar("<I"))
            infos = []
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.scalar("<I")
                dims = tuple(cur.scalar("<Q") for _ in range(n_dims))
                infos.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
        except _Truncated:
            raise ModelSourceError(
                f"{path}: truncated: the file ({self.size} bytes) ends inside the GGUF header / "
                f"metadata. The download or copy was cut short; get the file again."
            ) from None
        except (ValueError, OverflowError, MemoryError) as e:
            if isinstance(e, ModelSourceError):
                raise
            raise ModelSourceError(f"{path}: corrupt GGUF header ({e})") from e

        alignment = int(self.metadata.get("general.alignment", 32))
        data_start = -(-cur.pos // alignment) * alignment
        self.tensors: dict[str, GGUFTensor] = {}
        for name, dims, ggml_type, offset in infos:
            if name in self.tensors:
                raise ModelSourceError(f"{path}: tensor {name!r} appears twice")
            try:
                qtype = gguf.GGMLQuantizationType(ggml_type)
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise ModelSourceError(
                    f"{path}: tensor {name!r} has ggml type {ggml_type}, unknown to the installed "
                    f"gguf package (upgrade gguf, or use a GGUF with common quantization types)"
                ) from None
            if not dims or dims[0] % block:
                raise ModelSourceError(
                    f"{path}: tensor {name!r} row length {dims[0] if dims else 0} is not a "
                    f"multiple of the {qtype.name} block size {block}"
                )
            row_bytes = dims[0] // block * type_size
            n_rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
            t = GGUFTensor(name, dims, ggml_type, data_start + offset, row_bytes * n_rows,
                           row_bytes)
            if t.offset + t.n_bytes > self.size:
                raise ModelSourceError(
                    f"{path}: truncated: tensor {name!r} ends at byte {t.offset + t.n_bytes} but "
                    f"the file has {self.size} bytes. Download it again."
                )
            self.tensors[name] = t

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 (*shape[:-1], row_bytes): the form gguf's kernels take."""
        t = self.tensors[name]
        return self._map[t.offset:t.offset + t.n_bytes].reshape(*t.shape[:-1], t.row_bytes)

    def dequantize(self, name: str) -> np.ndarray:
        """float32 array in numpy (HF) order."""
        import gguf

        t = self.tensors[name]
        qtype = gguf.GGMLQuantizationType(t.ggml_type)
        raw = self.raw(name)
        if qtype == gguf.GGMLQuantizationType.F32:
            return raw.view("<f4")  # zero-copy
        if qtype == gguf.GGMLQuantizationType.F16:
            return raw.view("<f2").astype(np.float32)
        try:
            out = gguf.quants.dequantize(raw, qtype)
        except NotImplementedError:
            raise ModelSourceError(
                f"{self.path}: tensor {name!r} is {qtype.name}, which the gguf package cannot "
                f"dequantize; use a GGUF with a common type (F16, Q8_0, Q4_0/1, Q4_K, Q5_K, Q6_K)"
            ) from None
        return np.asarray(out, dtype=np.float32).reshape(t.shape)

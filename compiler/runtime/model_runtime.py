"""Run a compiled model library natively (cpu, or cuda where present) on TVM's Relax VM.

This is the Python twin of web/src/model_runtime.ts: load the shards listed in the manifest
(verifying their sha256), create the paged KV cache, and expose prefill/decode per sequence.
Sampling, templates and the OpenAI surface live above it (engine.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tvm
# Runtime-side TVM only (no tvm.relax, tvm.target): the engines may load TVM without its
# compiler (tvm_lib.py).
from tvm.runtime import ShapeTuple
from tvm.runtime.vm import VirtualMachine

from .. import artifact
from . import layouts as param_layouts


class ContextWindowError(ValueError):
    """A sequence would grow past the context window the library was built/configured for."""


def _device(name: str) -> tvm.runtime.Device:
    if name == "cpu":
        return tvm.cpu()
    if name == "cuda":
        dev = tvm.cuda()
        if not dev.exist:
            raise RuntimeError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu")
        return dev
    raise ValueError(f"the native runtime runs on cpu or cuda, not {name!r} (webgpu models run in the browser: aae-web)")


def _read_shard(model_dir: Path, shard: dict[str, Any], verify: bool) -> bytes:
    path = Path(model_dir) / shard["file"]
    if not path.is_file():
        raise artifact.ArtifactError(f"weight shard {path} is missing; re-run convert_weight")
    data = path.read_bytes()
    if len(data) != shard["bytes"]:
        raise artifact.ArtifactError(
            f"weight shard {path} has {len(data)} bytes, the manifest says {shard['bytes']} (truncated?); re-run convert_weight"
        )
    if verify and hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise artifact.ArtifactError(f"weight shard {path} fails its sha256 check (corrupt); re-run convert_weight")
    return data


def load_params(model_dir: Path, device: tvm.runtime.Device, *, verify: bool = True,
                layouts: dict[str, str] | None = None) -> list[tvm.runtime.Tensor]:
    """Every tensor of the manifest, in order, on `device`. Corrupt or short shards are errors.
    `layouts` (a library's `param_layouts`) names tensors the library declares in another layout
    than the stored one; they are repacked here, once (runtime/layouts.py interleave_rows).

    One shard is in memory at a time, its tensors read as views of it: the peak is the weights
    plus one shard, not twice the weights (SmolLM2 q4f32_1: ~70 MB less peak RSS)."""
    manifest = artifact.read_manifest(model_dir)
    tensors = manifest["tensors"]
    params: list[tvm.runtime.Tensor | None] = [None] * len(tensors)
    for index, shard in enumerate(manifest["shards"]):
        data = memoryview(_read_shard(model_dir, shard, verify))
        for i, t in enumerate(tensors):
            if t["shard"] != index:
                continue
            raw = data[t["byte_offset"] : t["byte_offset"] + t["bytes"]]
            arr = np.frombuffer(raw, dtype=t["dtype"]).reshape(t["shape"])
            layout = (layouts or {}).get(t["name"])
            if layout is not None:
                if layout != param_layouts.LAYOUT:
                    raise artifact.ArtifactError(f"the library wants {t['name']} in layout {layout!r}, which this runtime cannot make; recompile")
                arr = param_layouts.interleave_rows(arr)
            params[i] = tvm.runtime.tensor(arr, device)
        del data
    missing = [t["name"] for t, p in zip(tensors, params) if p is None]
    if missing:
        raise artifact.ArtifactError(f"{model_dir}: tensor {missing[0]} names a shard the manifest does not list; re-run convert_weight")
    return params  # type: ignore[return-value]


def prefill_chunk_length(seq_len: int, prefill_chunk_size: int, sliding_window_size: int) -> int:
    """Tokens the next prefill call may take for a sequence holding `seq_len` tokens (ARTIFACT.md,
    "Sliding-window models"; web/src/model_runtime.ts's prefillChunkLength is its twin, and
    tests/fixtures/runtime_cases.json holds both sides to the same answers).

    TVM 0.27's windowed prefill kernels are exact only while no key of the chunk's queries
    falls out of the window: its within-chunk kernel ignores the window, and its CPU kernel
    over cached keys yields NaN when the first cached key is masked. So chunks stay inside
    the window; past it, tokens go one at a time (the decode kernels, which are exact), and
    only long prompts on sliding-window models ever get there.
    """
    if sliding_window_size <= 0:
        return prefill_chunk_size
    return max(1, min(prefill_chunk_size, sliding_window_size - seq_len))


def kv_cache_args(context_window_size: int, prefill_chunk_size: int, max_batch_size: int) -> list[int]:
    """`create_tir_paged_kv_cache`'s arguments, in order (ARTIFACT.md): room for every sequence's
    whole context window, and TVM's evicting sliding window off for every model (windows live in
    the kernels of the layers that have one). Twin: web/src/model_runtime.ts kvCacheArgs."""
    return [max_batch_size, context_window_size * max_batch_size, prefill_chunk_size, artifact.KV_PAGE_SIZE, 0]


class ModelRuntime:
    """One compiled model on one device with one paged KV cache shared by its sequences.

    Not thread-safe by itself: a lock serialises calls so an engine's scheduler thread and a
    caller cannot interleave begin_forward/end_forward pairs.
    """

    def __init__(
        self,
        model_dir: Path,
        lib_path: Path,
        device: str = "cpu",
        *,
        context_window_size: int | None = None,
        prefill_chunk_size: int | None = None,
        max_batch_size: int | None = None,
        verify_weights: bool = True,
    ):
        self.model_dir = Path(model_dir)
        self.config: dict[str, Any] = artifact.read_chat_config(self.model_dir)
        if context_window_size:
            self.config["context_window_size"] = int(context_window_size)
        if prefill_chunk_size:
            self.config["prefill_chunk_size"] = int(prefill_chunk_size)
        if max_batch_size:
            self.config["max_batch_size"] = int(max_batch_size)
        self.device_name = device
        self.device = _device(device)
        self._lock = threading.RLock()
        self.lib = tvm.runtime.load_module(str(lib_path))
        self.vm = VirtualMachine(self.lib, self.device)
        self.metadata: dict[str, Any] = json.loads(str(self.vm["_metadata"]()))
        if self.metadata["model_type"] != self.config["model_type"] or self.metadata["quantization"] != self.config["quantization"]:
            raise artifact.ArtifactError(
                f"{lib_path} was built for {self.metadata['model_type']}/{self.metadata['quantization']}, "
                f"the model folder is {self.config['model_type']}/{self.config['quantization']}; recompile"
            )
        self.params = load_params(self.model_dir, self.device, verify=verify_weights,
                                  layouts=self.metadata.get("param_layouts"))
        self.vocab_size = int(self.config["model_config"]["vocab_size"])
        self.context_window_size = int(self.config["context_window_size"])
        self.prefill_chunk_size = int(self.config["prefill_chunk_size"])
        self.max_batch_size = int(self.config["max_batch_size"])
        self.sliding_window_size = int(self.config.get("sliding_window_size", -1))
        # The CPU and CUDA kernels append several tokens to a non-empty sequence exactly; TVM
        # 0.27's WebGPU ones do not for large heads (artifact_format.json, web/src/model_runtime.ts).
        self.exact_paged_prefill = True
        self._f_embed = self.vm["embed"]
        self._f_prefill = self.vm["prefill"]
        self._f_decode = self.vm["decode"]
        self._f_batch_decode = self.vm["batch_decode"]
        get = tvm.get_global_func
        names = artifact.KV_BUILTINS
        self._kv_add = get(names["add_sequence"])
        self._kv_remove = get(names["remove_sequence"])
        self._kv_begin = get(names["begin_forward"])
        self._kv_end = get(names["end_forward"])
        self._kv_clear = get(names["clear"])
        self._kv_popn = get(names["popn"])
        self.kv = self._create_kv_cache()
        self._lengths: dict[int, int] = {}
        self._next_seq = 0

    def _create_kv_cache(self):
        args = kv_cache_args(self.context_window_size, self.prefill_chunk_size, self.max_batch_size)
        return self.vm["create_tir_paged_kv_cache"](*(ShapeTuple([a]) for a in args))

    # -- sequences ----------------------------------------------------------------------------
    def add_sequence(self) -> int:
        with self._lock:
            seq_id = self._next_seq
            self._next_seq += 1
            self._kv_add(self.kv, seq_id)
            self._lengths[seq_id] = 0
            return seq_id

    def remove_sequence(self, seq_id: int) -> None:
        with self._lock:
            if seq_id in self._lengths:
                self._kv_remove(self.kv, seq_id)
                del self._lengths[seq_id]

    @property
    def active_sequences(self) -> list[int]:
        return list(self._lengths)

    def sequence_length(self, seq_id: int) -> int:
        return self._lengths[seq_id]

    def pop_tokens(self, seq_id: int, n: int) -> None:
        """Drop the sequence's last `n` tokens (a new request reusing a cached prefix)."""
        with self._lock:
            if not 0 <= n <= self._lengths[seq_id]:
                raise ValueError(f"cannot pop {n} of sequence {seq_id}'s {self._lengths[seq_id]} tokens")
            if n:
                self._kv_popn(self.kv, seq_id, n)
                self._lengths[seq_id] -= n

    def reset(self) -> None:
        with self._lock:
            self._kv_clear(self.kv)
            self._lengths.clear()

    def _check_room(self, seq_id: int, extra: int) -> None:
        if seq_id not in self._lengths:
            raise KeyError(f"unknown sequence {seq_id}")
        total = self._lengths[seq_id] + extra
        if total > self.context_window_size:
            raise ContextWindowError(
                f"sequence needs {total} tokens, the context window is {self.context_window_size}; "
                "shorten the prompt or max_tokens, or raise context_window_size (--overrides)"
            )

    # -- forward ------------------------------------------------------------------------------
    def _embed(self, token_ids: list[int]):
        ids = tvm.runtime.tensor(np.asarray(token_ids, dtype="int32"), self.device)
        return self._f_embed(ids, self.params)

    def prefill(self, seq_id: int, token_ids: list[int]) -> np.ndarray:
        """Append `token_ids` to the sequence; float32[vocab] logits after its last token."""
        if not token_ids:
            raise ValueError("prefill needs at least one token")
        with self._lock:
            self._check_room(seq_id, len(token_ids))
            logits = None
            start = 0
            while start < len(token_ids):
                chunk = token_ids[start : start + self._chunk_length(seq_id)]
                start += len(chunk)
                embeds = self._embed(chunk)
                hidden = int(embeds.shape[-1])
                embeds = embeds._create_view((1, len(chunk), hidden))
                self._kv_begin(self.kv, ShapeTuple([seq_id]), ShapeTuple([len(chunk)]))
                try:
                    logits, _ = self._f_prefill(embeds, self.kv, self.params)
                finally:
                    self._kv_end(self.kv)
                self._lengths[seq_id] += len(chunk)
            return logits.numpy().reshape(-1, self.vocab_size)[-1]

    def _chunk_length(self, seq_id: int) -> int:
        return prefill_chunk_length(self._lengths[seq_id], self.prefill_chunk_size, self.sliding_window_size)

    def decode(self, seq_ids: list[int], token_ids: list[int]) -> np.ndarray:
        """One new token for each sequence (batched); float32[len(seq_ids), vocab]."""
        if len(seq_ids) != len(token_ids) or not seq_ids:
            raise ValueError("decode needs one token per sequence")
        with self._lock:
            for s in seq_ids:
                self._check_room(s, 1)
            out = []
            # The KV cache was created for max_batch_size sequences per forward pass.
            for start in range(0, len(seq_ids), self.max_batch_size):
                ids = seq_ids[start : start + self.max_batch_size]
                toks = token_ids[start : start + self.max_batch_size]
                embeds = self._embed(toks)
                embeds = embeds._create_view((len(ids), 1, int(embeds.shape[-1])))
                self._kv_begin(self.kv, ShapeTuple(ids), ShapeTuple([1] * len(ids)))
                try:
                    f = self._f_decode if len(ids) == 1 else self._f_batch_decode
                    logits, _ = f(embeds, self.kv, self.params)
                finally:
                    self._kv_end(self.kv)
                for s in ids:
                    self._lengths[s] += 1
                out.append(logits.numpy().reshape(len(ids), self.vocab_size))
            return np.concatenate(out, axis=0)

    def debug_prefill(self, token_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(all-position logits [n, vocab], hidden states [layers+1, n, hidden]) of a fresh prompt.

        Needs a library compiled with debug functions (`compile --debug-functions`). Chunks follow
        the same rules as prefill, so the numbers are those the real prefill path produces.
        """
        with self._lock:
            out = []
            for fname, seq_axis in (("prefill_all_logits", 1), ("prefill_hidden_states", 1)):
                seq = self.add_sequence()
                parts = []
                try:
                    start = 0
                    while start < len(token_ids):
                        chunk = token_ids[start : start + self._chunk_length(seq)]
                        start += len(chunk)
                        embeds = self._embed(chunk)
                        embeds = embeds._create_view((1, len(chunk), int(embeds.shape[-1])))
                        self._kv_begin(self.kv, ShapeTuple([seq]), ShapeTuple([len(chunk)]))
                        try:
                            result, _ = self.vm[fname](embeds, self.kv, self.params)
                        finally:
                            self._kv_end(self.kv)
                        self._lengths[seq] += len(chunk)
                        parts.append(result.numpy())
                finally:
                    self.remove_sequence(seq)
                out.append(np.concatenate(parts, axis=seq_axis))
            return out[0].reshape(len(token_ids), self.vocab_size), out[1]

    def close(self) -> None:
        with self._lock:
            self.params = []
            self.kv = None
            self.vm = None

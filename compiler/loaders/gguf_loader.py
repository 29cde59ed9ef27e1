"""GGUF files (llama.cpp's format): metadata -> HF config, tensors -> HF names and layouts,
tokenizer metadata -> tokenizer.json.

What is particular to an architecture (its metadata keys, tensor names, and the transforms
llama.cpp's converter applied, e.g. Llama's q/k permutation or Gemma's 1 + w norms) lives in its
file under compiler/models/; this module parses the container and asks the registry. Two things
hold for every architecture:
1. Dimensions are stored fastest-first (ggml's ne[0] is the row length), i.e. reversed relative to
   numpy: a GGUF matrix [in, out] is numpy (out, in) -- exactly PyTorch's Linear layout -- and
   the embedding [hidden, vocab] is numpy (vocab, hidden). `GGUFTensor.shape` is numpy order,
   and every shape is checked against what the config implies.
2. Weights may be quantized (Q8_0, Q4_K, ...): `gguf.quants.dequantize` turns them into float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from ..models.gguf_common import GGUFMeta, gguf_tensor_names
from .base import ModelSourceError, SourceModel, check_tensor_set, normalize_hf_config
from .gguf_format import GGUFFile
from .tokenizer_build import VocabSpec, build_tokenizer_files

# Leftovers of very old converters that hold no weights.
_NON_WEIGHT_SUFFIXES = (".attn_rot_embd",)


def _hf_config(f: GGUFFile, where: str) -> tuple[dict[str, Any], models.Architecture]:
    meta = f.metadata
    try:
        arch = models.get_gguf_architecture(meta.get("general.architecture"))
        raw = arch.gguf_config(GGUFMeta(meta, f.tensors, f.dequantize, where))
    except models.ArchitectureError as e:
        raise ModelSourceError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    return normalize_hf_config(raw, where), arch


def _vocab_spec(meta: dict[str, Any], where: str) -> VocabSpec | None:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        return None
    model = meta.get("tokenizer.ggml.model")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)

    def opt_id(k: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{k}")
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:
        # llama.cpp's default when the flag is absent: SentencePiece vocabularies add BOS.
        add_bos = model == "llama"
    return VocabSpec(
        model=str(model),
        tokens=list(tokens),
        token_types=[int(t) for t in types],
        scores=meta.get("tokenizer.ggml.scores"),
        merges=meta.get("tokenizer.ggml.merges"),
        pre=meta.get("tokenizer.ggml.pre"),
        bos_id=opt_id("bos_token_id"),
        eos_id=opt_id("eos_token_id"),
        unk_id=opt_id("unknown_token_id"),
        pad_id=opt_id("padding_token_id"),
        add_bos=bool(add_bos),
        add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        prefix_after_special=True,  # a GGUF's native tokenizer is llama.cpp's
        chat_template=meta.get("tokenizer.chat_template"),
        model_max_length=None,
        where=where,
    )


def gguf_tokenizer_files(path: Path | str) -> dict[str, bytes]:
    """Only the tokenizer files rebuilt from a GGUF's metadata (no tensors are read or checked)."""
    path = Path(path)
    meta = GGUFFile(path).metadata
    spec = _vocab_spec(meta, str(path))
    if spec is None:
        raise ModelSourceError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.tokens)")
    arch = meta.get("general.architecture")
    ctx = meta.get(f"{arch}.context_length")
    spec.model_max_length = int(ctx) if ctx else None
    return _tokenizer_files(spec, meta)


def _tokenizer_files(spec: VocabSpec, meta: dict[str, Any]) -> dict[str, bytes]:
    files = build_tokenizer_files(spec)
    embedded = meta.get("tokenizer.huggingface.json")
    if isinstance(embedded, str) and embedded.strip():
        # Some converters embed the model's original tokenizer.json: that is the ground truth,
        # so it wins over our rebuild (the rebuild still ran, validating the vocabulary).
        files["tokenizer.json"] = embedded.encode("utf-8")
    return files


def load_gguf(path: Path) -> SourceModel:
    f = GGUFFile(path)
    meta = f.metadata
    where = str(path)
    by_name = f.tensors
    cfg, arch = _hf_config(f, where)

    expected = arch.hf_tensor_shapes(cfg)
    try:
        # A tied model's file may still carry output.weight (check_tensor_set drops it).
        names_in_file = gguf_tensor_names(arch.gguf_arch, list(expected), cfg["num_hidden_layers"], optional=["lm_head.weight"])
    except models.ArchitectureError as e:
        raise ModelSourceError(f"{where}: {e}") from None
    hf_to_gguf: dict[str, str] = {}
    for name in by_name:
        if name in arch.gguf_extra_tensors or name.endswith(_NON_WEIGHT_SUFFIXES):
            continue
        hf = names_in_file.get(name)
        if hf is None:
            raise ModelSourceError(
                f"{where}: tensor {name!r} has no Hugging Face counterpart the loader knows "
                f"(architecture {arch.gguf_arch!r}); this model variant (e.g. mixture-of-experts) is not "
                f"supported."
            )
        hf_to_gguf[hf] = name
    missing = [name for name, hf in names_in_file.items() if hf in expected and hf not in hf_to_gguf]
    if missing:
        # Named as the file names them (check_tensor_set would give the HF names only).
        raise ModelSourceError(
            f"{where}: missing {len(missing)} tensor(s) a {arch.gguf_arch} model of this config has, first "
            f"{', '.join(f'{n!r} ({names_in_file[n]})' for n in missing[:3])}; the file is incomplete "
            f"or not a llama.cpp conversion of a {cfg['model_type']} model ({cfg['num_hidden_layers']} layers)."
        )
    shapes = {hf: by_name[g].shape for hf, g in hf_to_gguf.items()}
    names = check_tensor_set(shapes, cfg, where, expected)

    def read(hf_name: str) -> np.ndarray:
        return arch.gguf_tensor(hf_name, f.dequantize(hf_to_gguf[hf_name]), cfg)

    spec = _vocab_spec(meta, where)
    if spec is None:
        raise ModelSourceError(
            f"{where}: the GGUF has no tokenizer (tokenizer.ggml.tokens); the compiler needs one"
        )
    spec.model_max_length = cfg["max_position_embeddings"]
    tokenizer_files = _tokenizer_files(spec, meta)

    return SourceModel(
        path=path,
        format="gguf",
        hf_config=cfg,
        tensor_names=names,
        tokenizer_files=tokenizer_files,
        tensor_shapes={n: shapes[n] for n in names},
        source_dtypes={n: by_name[hf_to_gguf[n]].type_name for n in names},
        metadata={k: v for k, v in meta.items() if k.startswith("general.")}
        | {"tokenizer_notes": spec.notes},
        _reader=read,
    )

"""Hugging Face model folders: config.json + safetensors (single or sharded) or PyTorch .bin."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import import_torch, models
from .base import ModelSourceError, SourceModel, check_tensor_set, normalize_hf_config
from .safetensors_io import SafetensorsFile
from .sentencepiece_model import read_sentencepiece_model
from .tokenizer_build import build_tokenizer_files

# Files passed through verbatim in `tokenizer_files` when present. generation_config.json rides
# along because it holds what a chat runtime needs next to the tokenizer: extra stop ids and the
# model's default sampling settings.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "generation_config.json")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelSourceError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"{path}: not readable JSON ({e})") from e


def _index_shards(index_path: Path) -> dict[str, Path]:
    """tensor name -> shard file, from a *.index.json; every shard must exist."""
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelSourceError(f"{index_path}: no 'weight_map' in the shard index")
    out = {name: index_path.parent / shard for name, shard in weight_map.items()}
    missing = sorted({p.name for p in out.values() if not p.is_file()})
    if missing:
        raise ModelSourceError(
            f"{index_path}: shard file(s) {missing[:3]} listed in the index are missing from "
            f"{index_path.parent} ({len(missing)} missing). Download all shards."
        )
    return out


def _normalize_names(names: list[str]) -> dict[str, str]:
    """checkpoint name -> HF CausalLM name.

    A base `LlamaModel` checkpoint (no LM head wrapper) names its tensors without the "model."
    prefix; give them the prefix so both spellings load the same.
    """
    if any(n.startswith("model.") for n in names) or not any(n.startswith("layers.") for n in names):
        return {n: n for n in names}  # a CausalLM, or a layout of its own (ChatGLM's transformer.*)
    return {n: (n if n == "lm_head.weight" else "model." + n) for n in names}


def _load_safetensors(folder: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str],
                                             Callable[[str], np.ndarray]]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shard_of = _index_shards(index)
        files = {p: SafetensorsFile(p) for p in sorted(set(shard_of.values()))}
        for name, p in shard_of.items():
            if name not in files[p].entries:
                raise ModelSourceError(
                    f"{p}: the index says tensor {name!r} is in this shard, but it is not. The "
                    f"shards and the index are from different versions; download them again."
                )
    else:
        single = folder / "model.safetensors"
        if not single.is_file():
            candidates = sorted(folder.glob("model*.safetensors"))
            if len(candidates) != 1:
                raise ModelSourceError(
                    f"{folder}: found {len(candidates)} model*.safetensors files but no "
                    f"model.safetensors.index.json to say how they fit together"
                )
            single = candidates[0]
        f = SafetensorsFile(single)
        files = {single: f}
        shard_of = {name: single for name in f.entries}
    rename = _normalize_names(list(shard_of))
    back = {hf: ck for ck, hf in rename.items()}
    shapes = {rename[n]: files[p].entries[n].shape for n, p in shard_of.items()}
    dtypes = {rename[n]: files[p].entries[n].dtype for n, p in shard_of.items()}

    def read(hf_name: str) -> np.ndarray:
        ck = back[hf_name]
        return files[shard_of[ck]].float32(ck)

    return shapes, dtypes, read


def _torch_load(path: Path) -> dict[str, Any]:
    torch = import_torch()  # only needed for .bin checkpoints

    try:
        # mmap=True keeps tensors on disk until touched (zip-format checkpoints, torch >= 1.6);
        # weights_only=True refuses pickled code, which a weights file has no business holding.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" in str(e).lower() and "zip" in str(e).lower():
            # Legacy (pre-zip) serialization cannot be memory-mapped; read it whole.
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ModelSourceError(
                f"{path}: cannot read PyTorch checkpoint ({e}). The file is truncated or corrupt; "
                f"download it again."
            ) from e
    except Exception as e:  # UnpicklingError, EOFError, zipfile errors ...
        raise ModelSourceError(
            f"{path}: cannot read PyTorch checkpoint ({type(e).__name__}: {e}). The file is "
            f"truncated or corrupt (or holds more than weights); download it again."
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelSourceError(f"{path}: expected a state dict of tensors, got {type(state)}")
    return state


def _load_bin(folder: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str],
                                     Callable[[str], np.ndarray]]:
    torch = import_torch()

    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        shard_of = _index_shards(index)
        paths = sorted(set(shard_of.values()))
    else:
        paths = [folder / "pytorch_model.bin"]
    tensors: dict[str, Any] = {}
    for p in paths:
        for name, t in _torch_load(p).items():
            if isinstance(t, torch.Tensor):
                tensors[name] = t
    if index.is_file():
        missing = [n for n in shard_of if n not in tensors]
        if missing:
            raise ModelSourceError(
                f"{index}: tensor(s) {missing[:3]} listed in the index are in none of the shards"
            )
    rename = _normalize_names(list(tensors))
    back = {hf: ck for ck, hf in rename.items()}
    shapes = {rename[n]: tuple(t.shape) for n, t in tensors.items()}
    # Same spelling as safetensors' dtype names, so `source_dtypes` reads alike for both formats.
    names_of = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.float64: "F64"}
    dtypes = {rename[n]: names_of.get(t.dtype, str(t.dtype)) for n, t in tensors.items()}

    def read(hf_name: str) -> np.ndarray:
        t = tensors[back[hf_name]]
        if not t.is_floating_point():
            raise ModelSourceError(f"tensor {hf_name!r} is {t.dtype}, not a floating-point weight")
        # .float() widens bf16/fp16 (numpy has no bf16); an fp32 tensor is returned as-is.
        return t.float().numpy()

    return shapes, dtypes, read


def _sentencepiece_tokenizer(folder: Path, cfg: dict[str, Any], files: dict[str, bytes]) -> dict[str, bytes]:
    """tokenizer.json (+ a tokenizer_config.json for it) rebuilt from a SentencePiece
    tokenizer.model, for checkpoints whose tokenizer is remote code over SentencePiece (ChatGLM3).
    The folder's own tokenizer_config.json keeps what it says beyond the tokenizer class (its chat
    template above all)."""
    arch = models.get_architecture(cfg["model_type"])
    spec = read_sentencepiece_model(folder / "tokenizer.model", extra_specials=arch.tokenizer_extra_specials,
                                    add_bos=arch.tokenizer_add_bos)
    built = build_tokenizer_files(spec)
    own = json.loads(files.get("tokenizer_config.json", b"{}"))
    ours = json.loads(built["tokenizer_config.json"])
    kept = {k: v for k, v in own.items() if k not in ("tokenizer_class", "auto_map", "added_tokens_decoder") and k not in ours}
    built["tokenizer_config.json"] = json.dumps({**ours, **kept}, indent=2, ensure_ascii=False).encode()
    return built


def _tokenizer_files(folder: Path, cfg: dict[str, Any]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for name in _TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            files[name] = p.read_bytes()
    if "tokenizer.json" not in files and (folder / "tokenizer.model").is_file():
        files.update(_sentencepiece_tokenizer(folder, cfg, files))
    # transformers >= 4.47 may save the chat template beside the config as chat_template.jinja
    # (transformers 5 always does); fold it into tokenizer_config.json, where our runtimes and
    # older transformers look for it.
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        cfg = json.loads(files.get("tokenizer_config.json", b"{}"))
        cfg.setdefault("chat_template", jinja.read_text(encoding="utf-8"))
        files["tokenizer_config.json"] = json.dumps(cfg, indent=2, ensure_ascii=False).encode()
    return files


def _merge_generation_eos(cfg: dict[str, Any], folder: Path) -> None:
    """Instruct models often list extra stop ids (e.g. Llama 3's <|eot_id|>) only in
    generation_config.json; fold them into eos_token_id so every consumer stops on them."""
    gen_path = folder / "generation_config.json"
    if not gen_path.is_file():
        return
    gen = _read_json(gen_path)
    extra = gen.get("eos_token_id") if isinstance(gen, dict) else None
    if extra is None:
        return
    ids: list[int] = []
    for v in (cfg.get("eos_token_id"), extra):
        for i in (v if isinstance(v, list) else [v]):
            if i is not None and i not in ids:
                ids.append(int(i))
    cfg["eos_token_id"] = ids[0] if len(ids) == 1 else ids


def _text_model_tensors(cfg: dict[str, Any], shapes: dict[str, Any], dtypes: dict[str, str],
                        read: Callable[[str], np.ndarray]):
    """A wrapped checkpoint (Gemma 3's multimodal one) exposes only its text model's tensors,
    under the text model's names; the architecture says how they are spelled."""
    rename = models.get_architecture(cfg["model_type"]).hf_tensor_name
    if rename is None or any(n.startswith("model.layers.") for n in shapes):
        return shapes, dtypes, read
    back = {new: old for old in shapes if (new := rename(old)) is not None}
    return ({n: shapes[o] for n, o in back.items()}, {n: dtypes[o] for n, o in back.items()},
            lambda name: read(back[name]))


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def load_hf_folder(folder: Path) -> SourceModel:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(
            f"{folder}: no config.json; a Hugging Face model folder needs config.json beside its "
            f"weights (download the whole repository, not just the weights)"
        )
    raw = _read_json(config_path)
    if not isinstance(raw, dict):
        raise ModelSourceError(f"{config_path}: not a JSON object")
    cfg = normalize_hf_config(raw, str(config_path))
    _merge_generation_eos(cfg, folder)

    if (folder / "model.safetensors.index.json").is_file() or any(
        folder.glob("model*.safetensors")
    ):
        fmt = "hf-safetensors"
        shapes, dtypes, read = _load_safetensors(folder)
    elif (folder / "pytorch_model.bin.index.json").is_file() or (
        folder / "pytorch_model.bin"
    ).is_file():
        fmt = "hf-bin"
        shapes, dtypes, read = _load_bin(folder)
    else:
        raise ModelSourceError(
            f"{folder}: no weights found (expected model.safetensors, "
            f"model.safetensors.index.json + shards, pytorch_model.bin, or "
            f"pytorch_model.bin.index.json + shards)"
        )
    shapes, dtypes, read = _text_model_tensors(cfg, shapes, dtypes, read)
    names = check_tensor_set(shapes, cfg, str(folder))
    return SourceModel(
        path=folder,
        format=fmt,
        hf_config=cfg,
        tensor_names=names,
        tokenizer_files=_tokenizer_files(folder, cfg),
        tensor_shapes={n: tuple(shapes[n]) for n in names},
        source_dtypes={n: dtypes[n] for n in names},
        _reader=read,
    )

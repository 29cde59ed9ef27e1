"""`gen_config`: write aae-chat-config.json and the tokenizer files of a model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from . import artifact, conv_templates
from .loaders import SourceModel
from .models import get_architecture
from .quantization import QuantScheme

DEFAULT_CONTEXT_WINDOW = 2048
DEFAULT_PREFILL_CHUNK = 512
DEFAULT_MAX_BATCH = 4
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.95, "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}


def _token_id(tok: Tokenizer, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, dict):  # HF AddedToken serialisation
        value = value.get("content")
    return tok.token_to_id(str(value))


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def gen_config(
    source: SourceModel,
    quantization: QuantScheme,
    out_dir: Path,
    *,
    model_id: str,
    context_window_size: int | None = None,
    prefill_chunk_size: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    conv_template: str | None = None,
    tensor_parallel_shards: int = 1,
) -> dict[str, Any]:
    """Write aae-chat-config.json + tokenizer files into out_dir and return the config.

    conv_template names a template of conv_templates.json that replaces the model's own chat
    template; None keeps the model's. tensor_parallel_shards is recorded as MLC-LLM does; AAE
    libraries run on one device, so runtimes refuse a model configured for more.
    """
    out_dir = Path(out_dir)
    named = conv_templates.get(conv_template) if conv_template is not None else None  # fail before any work
    if isinstance(tensor_parallel_shards, bool) or not isinstance(tensor_parallel_shards, int) or tensor_parallel_shards < 1:
        raise ValueError(f"tensor_parallel_shards must be an integer >= 1, got {tensor_parallel_shards!r}")
    hf = source.hf_config
    model_type = hf.get("model_type")
    arch = get_architecture(model_type)
    cfg = arch.config_from_hf(hf)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if name not in source.tokenizer_files:
            raise artifact.ArtifactError(f"{source.path}: no {name} found; the model folder needs its tokenizer files")
    tok_cfg: dict[str, Any] = json.loads(source.tokenizer_files["tokenizer_config.json"])
    tok = Tokenizer.from_str(source.tokenizer_files["tokenizer.json"].decode())

    bos = _token_id(tok, tok_cfg.get("bos_token"))
    if bos is None and hf.get("bos_token_id") is not None:
        bos = int(hf["bos_token_id"])
    # Whether prompts start with BOS is what the tokenizer itself does (post-processor or
    # add_bos_token); runtimes encode without special tokens and prepend BOS when this is true.
    probe = tok.encode("a", add_special_tokens=True).ids
    add_bos = bool(tok_cfg.get("add_bos_token", bos is not None and len(probe) > 0 and probe[0] == bos))
    eos = _as_list(hf.get("eos_token_id"))
    tok_eos = _token_id(tok, tok_cfg.get("eos_token"))
    if tok_eos is not None and tok_eos not in eos:
        eos.append(tok_eos)
    pad = _token_id(tok, tok_cfg.get("pad_token"))
    if pad is None:
        pad = hf.get("pad_token_id") if hf.get("pad_token_id") is not None else (eos[0] if eos else 0)

    limit = cfg.context_limit
    ctx = int(context_window_size or min(limit, DEFAULT_CONTEXT_WINDOW))
    if ctx > limit:
        why = ("its longrope short-factor range (original_max_position_embeddings)" if limit < cfg.max_position_embeddings
               else "max_position_embeddings")
        raise ValueError(f"context_window_size={ctx} exceeds the model's {why}={limit}; pass a context window of at most {limit}")
    sampling = dict(DEFAULT_SAMPLING)
    gen_cfg = source.tokenizer_files.get("generation_config.json")
    if gen_cfg:
        g = json.loads(gen_cfg)
        for key in ("temperature", "top_p", "repetition_penalty"):
            if key in g and g[key] is not None:
                sampling[key] = float(g[key])
        for extra in _as_list(g.get("eos_token_id")):
            if extra not in eos:
                eos.append(extra)

    if named is not None:
        # A named template's turn-end tokens must stop generation even where the model's own
        # EOS is another token (e.g. ChatML on a model whose eos_token is <|endoftext|>).
        for text in named.stop_tokens:
            tid = tok.token_to_id(text)
            if tid is not None and tid not in eos:
                eos.append(tid)

    config = {
        "format_version": artifact.FORMAT_VERSION,
        "model_id": model_id,
        "model_type": model_type,
        "quantization": quantization.name,
        "model_config": cfg.to_dict(),
        "context_window_size": ctx,
        "prefill_chunk_size": int(prefill_chunk_size or min(ctx, DEFAULT_PREFILL_CHUNK)),
        "sliding_window_size": int(cfg.sliding_window) if cfg.sliding_window else -1,
        "max_batch_size": max_batch_size,
        "tokenizer_files": ["tokenizer.json", "tokenizer_config.json"],
        "chat_template": named.template if named is not None else tok_cfg.get("chat_template"),
        "conv_template": conv_template,
        "tensor_parallel_shards": tensor_parallel_shards,
        "bos_token_id": bos,
        "add_bos_token": add_bos,
        "eos_token_ids": eos,
        "pad_token_id": int(pad),
        "sampling": sampling,
        "model_lib": {},
        "required_features": ["shader-f16"] if quantization.needs_shader_f16 else [],
        "manifest": artifact.MANIFEST,
        "source": str(source.path),
    }
    for name in ("tokenizer.json", "tokenizer_config.json"):
        artifact.atomic_write_bytes(out_dir / name, source.tokenizer_files[name])
    artifact.atomic_write_json(out_dir / artifact.CHAT_CONFIG, config)
    return config

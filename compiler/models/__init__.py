"""Architecture registry: HF `model_type` (or GGUF `general.architecture`) -> its `Architecture`.

Each module below is the one home of one architecture (see base.Architecture); to add one, write
a module like qwen3.py and list it here. docs: compiler/models/README.md.
"""

from __future__ import annotations

from typing import Any

from . import chatglm, gemma, gemma2, gemma3, glm, llama, minicpm, mistral, phi, phi3, qwen2, qwen3
from .base import Architecture, ArchitectureError, ParamSource
from .decoder import DecoderConfig

_MODULES = (llama, mistral, minicpm, qwen2, qwen3, gemma, gemma2, gemma3, phi, phi3, glm, chatglm)
ARCHITECTURES: dict[str, Architecture] = {m.ARCH.model_type: m.ARCH for m in _MODULES}
_ALIASES: dict[str, str] = {alias: a.model_type for a in ARCHITECTURES.values() for alias in a.aliases}
GGUF_ARCHITECTURES: dict[str, Architecture] = {a.gguf_arch: a for a in ARCHITECTURES.values() if a.gguf_arch}


def supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def get_architecture(model_type: str | None) -> Architecture:
    name = _ALIASES.get(str(model_type), model_type)
    if name not in ARCHITECTURES:
        raise ArchitectureError(
            f"unsupported architecture {model_type!r}; supported: {supported()}. "
            "Add a file under compiler/models/ to support it (compiler/models/README.md)."
        )
    return ARCHITECTURES[name]


def get_gguf_architecture(gguf_arch: str | None) -> Architecture:
    if gguf_arch not in GGUF_ARCHITECTURES:
        raise ArchitectureError(
            f"GGUF general.architecture {gguf_arch!r} is not supported; supported: {', '.join(sorted(GGUF_ARCHITECTURES))}. "
            "Use a model of a supported architecture."
        )
    return GGUF_ARCHITECTURES[gguf_arch]


def config_from_dict(model_type: str, model_config: dict[str, Any]) -> DecoderConfig:
    """Rebuild the typed config stored in aae-chat-config.json's `model_config`."""
    get_architecture(model_type)
    return DecoderConfig(**model_config)


__all__ = [
    "ARCHITECTURES", "Architecture", "ArchitectureError", "DecoderConfig", "GGUF_ARCHITECTURES", "ParamSource",
    "config_from_dict", "get_architecture", "get_gguf_architecture", "supported",
]

"""Architecture registry: HF `model_type` -> how to read its config, build it, map its weights."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from tvm.relax.frontend import nn

from . import llama, mistral
from .base import ArchitectureError, ParamSource


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    config_cls: type  # the typed config stored (as a dict) in aae-chat-config.json's model_config
    config_from_hf: Callable[[dict[str, Any]], Any]
    build: Callable[[Any, str], nn.Module]  # (config, model dtype) -> module
    weight_map: Callable[[Any], dict[str, ParamSource]]


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", llama.LlamaConfig, llama.LlamaConfig.from_hf, llama.LlamaForCausalLM, llama.weight_map),
    "mistral": Architecture("mistral", llama.LlamaConfig, mistral.config_from_hf, mistral.LlamaForCausalLM, mistral.weight_map),
}


def get_architecture(model_type: str | None) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise ArchitectureError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Add a file under compiler/models/ to support it."
        )
    return ARCHITECTURES[model_type]


def config_from_dict(model_type: str, model_config: dict[str, Any]) -> Any:
    """Rebuild the typed config stored in aae-chat-config.json's `model_config`."""
    return get_architecture(model_type).config_cls(**model_config)


__all__ = ["ARCHITECTURES", "Architecture", "ArchitectureError", "ParamSource", "config_from_dict", "get_architecture"]

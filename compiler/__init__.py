"""Astro Agent Edge (AAE): compile open LLMs with Apache TVM for WebGPU in the browser and for
native CPU/CUDA, and run them behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The engines import TVM and the model runtime; load them only when asked for so that
# `sphere_aae --help` and the artifact helpers stay fast.
_LAZY = {"SphereAaeEngine": "engine", "AsyncSphereAaeEngine": "engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = ["AsyncSphereAaeEngine", "SphereAaeEngine", "__version__"]

"""Astro Agent Edge (AAE): compile open LLMs with Apache TVM for WebGPU in the browser and for
native CPU/CUDA, and run them behind an OpenAI-compatible API."""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"

# TVM's CPU thread pool starts with half the vCPUs on x86 (one thread on a 2-vCPU machine) unless
# TVM_NUM_THREADS is set before the runtime starts, and cannot grow afterwards: decode on all the
# cores this process may use (measured on SmolLM2 q4f32_1, 2 vCPUs: 2.1 -> 6.6 tok/s). An explicit
# setting wins.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)))

# The engines import TVM and the model runtime; load them only when asked for so that
# `sphere_aae --help` and the artifact helpers stay fast.
_LAZY = {"SphereAaeEngine": "engine", "AsyncSphereAaeEngine": "engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = ["AsyncSphereAaeEngine", "SphereAaeEngine", "__version__"]

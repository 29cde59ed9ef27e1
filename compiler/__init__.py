"""Astro Agent Edge (AAE): compile open LLMs with Apache TVM for WebGPU in the browser and for
native CPU/CUDA, and run them behind an OpenAI-compatible API."""

from __future__ import annotations

import os
import sys
from typing import Any

__version__ = "0.1.0"
DEFAULT_MODEL = "SmolLM2-135M-Instruct"  # the catalog card every command defaults to

# TVM's CPU thread pool starts with half the vCPUs on x86 (one thread on a 2-vCPU machine) unless
# TVM_NUM_THREADS is set before the runtime starts, and cannot grow afterwards: decode on all the
# cores this process may use (measured on SmolLM2 q4f32_1, 2 vCPUs: 2.1 -> 6.6 tok/s). An explicit
# setting wins.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)))


def keep_torch_out() -> None:
    """Keep PyTorch out of a process that only runs models (chat, serve, bench's worker).

    tvm_ffi imports torch whenever it is installed (for DLPack interop we never use), which adds
    ~250 MB to the resident memory of a process that needs none of it (SmolLM2 q4f32_1: peak RSS
    722 -> 473 MiB). Only effective before TVM is first imported; library users who want torch
    in the same process simply do not call it."""
    if "tvm" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # `import torch` now raises ImportError, which tvm_ffi tolerates


def import_torch() -> Any:
    """torch, for the code that needs it (reading .bin checkpoints), also in a process that
    keep_torch_out kept it out of (TVM is loaded by then; only the memory is spent)."""
    if "torch" in sys.modules and sys.modules["torch"] is None:
        del sys.modules["torch"]
    import torch

    return torch


# The engines import TVM and the model runtime; load them only when asked for so that
# `sphere_aae --help` and the artifact helpers stay fast.
_LAZY = {"SphereAaeEngine": "engine", "AsyncSphereAaeEngine": "engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = ["DEFAULT_MODEL", "AsyncSphereAaeEngine", "SphereAaeEngine", "__version__", "import_torch", "keep_torch_out"]

"""Attention-logit soft-capping (Gemma 2) inside TVM's paged-KV-cache attention kernels."""

from __future__ import annotations

import tvm


def apply_attention_softcap(mod: tvm.IRModule, cap: float) -> tvm.IRModule:
    raise NotImplementedError("attention logit soft-capping is not implemented yet")

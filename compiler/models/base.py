"""Pieces every architecture file shares: errors, the weight-source record, a tied embedding."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op


class ArchitectureError(ValueError):
    """The model's architecture (or one of its settings) is not one we can compile."""


@dataclasses.dataclass
class ParamSource:
    """One compiled parameter: the source (HF-named) tensors it is built from, and how.

    `combine` receives the source arrays in order; the default takes the single array as it is.
    """

    hf_names: list[str]
    combine: Callable[..., np.ndarray] | None = None

    def build(self, arrays: list[np.ndarray]) -> np.ndarray:
        if self.combine is None:
            (only,) = arrays
            return only
        return self.combine(*arrays)


class Embedding(nn.Embedding):
    """nn.Embedding that can also act as the (tied) LM head: logits = hidden @ weight.T."""

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        return op.matmul(hidden, op.permute_dims(self.weight))

"""Parameter layouts a compiled library may declare, and the repack the runtime does at load.

Apart from quantization/cpu_kernels.py (the kernels that read these layouts) so that a process
which only runs a library imports numpy here, not TVM's compiler (runtime/tvm_lib.py).
"""

from __future__ import annotations

import numpy as np

ROWS = 16  # rows per interleaved block: one 512-bit vector of f32 or u32
LAYOUT = "rows16"


def interleaved_shape(shape: tuple[int, int]) -> tuple[int, int, int]:
    rows, cols = shape
    return (rows // ROWS, cols, ROWS)


def interleave_rows(array: np.ndarray) -> np.ndarray:
    """[rows, cols] -> [rows / 16, cols, 16]: element (r, c) moves to (r // 16, c, r % 16)."""
    rows, cols = array.shape
    return np.ascontiguousarray(array.reshape(rows // ROWS, ROWS, cols).transpose(0, 2, 1))

"""The CPU quantized-matmul kernel (quantization/cpu_kernels.py) on its own, against numpy: the
16-row interleaved layout and the kernel for one row of x (decode) and for tiles of rows
(prefill), including a row count that is not a multiple of the tile. End-to-end numerics of
the models that use it are the family checks (test_architectures) and SmolLM2's (test_smollm2)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from sphere_aae.compile import make_target
from sphere_aae.quantization import get_scheme
from sphere_aae.quantization.cpu_kernels import ROWS, eligible, interleave_rows, matmul_kernel
from sphere_aae.quantization.group_quant import dequantize_array, quantize_array


def test_interleave_rows_moves_each_row_to_its_lane() -> None:
    a = np.arange(32 * 3, dtype=np.uint32).reshape(32, 3)
    b = interleave_rows(a)
    assert b.shape == (2, 3, ROWS)
    for r in range(32):
        assert (b[r // ROWS, :, r % ROWS] == a[r]).all()


@pytest.mark.parametrize("scheme", ["q4f32_1", "q8f32_1"])
def test_kernel_equals_numpy_on_the_dequantized_weights(scheme: str) -> None:
    spec = get_scheme(scheme).weight
    out_f, in_f = 48, 96
    assert eligible(out_f, in_f, spec, "float32") and not eligible(out_f + 8, in_f, spec, "float32")
    rng = np.random.default_rng(0)
    stored = quantize_array(rng.normal(0, 1, (out_f, in_f)).astype(np.float32), spec, "float32")
    weight = dequantize_array(stored, in_f, spec)
    target = make_target("cpu")
    for rows, tile in ((1, 1), (1, 4), (7, 4), (8, 4)):
        lib = tvm.compile(matmul_kernel(out_f, in_f, spec, tile).with_attr("global_symbol", "kernel"), target=target)
        x = rng.normal(0, 1, (rows, in_f)).astype(np.float32)
        dev = tvm.cpu()
        args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(interleave_rows(stored[k]), dev) for k in ("q_weight", "q_scale", "q_min")]
        y = tvm.runtime.tensor(np.zeros((rows, out_f), np.float32), dev)
        lib["kernel"](*args, y)
        np.testing.assert_allclose(y.numpy(), x @ weight.T, rtol=1e-5, atol=1e-4)

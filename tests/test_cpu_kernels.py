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
from sphere_aae.quantization import int8_activations as a8
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
    # [batch, sequence, in] as the model passes it (no reshape): the rows of both dimensions.
    lib = tvm.compile(matmul_kernel(out_f, in_f, spec, 4, lead=2).with_attr("global_symbol", "kernel"), target=target)
    x = rng.normal(0, 1, (2, 3, in_f)).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((2, 3, out_f), np.float32), dev)
    lib["kernel"](tvm.runtime.tensor(x, dev), *args[1:], y)
    np.testing.assert_allclose(y.numpy(), x @ weight.T, rtol=1e-5, atol=1e-4)
    # Scales and minima stored in f16 (as q4f32_1a8 stores them) are read as f32.
    stored16 = quantize_array(rng.normal(0, 1, (out_f, in_f)).astype(np.float32), spec, "float16")
    lib = tvm.compile(matmul_kernel(out_f, in_f, spec, 4, scale_dtype="float16").with_attr("global_symbol", "kernel"), target=target)
    x = rng.normal(0, 1, (5, in_f)).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((5, out_f), np.float32), dev)
    lib["kernel"](tvm.runtime.tensor(x, dev), *[tvm.runtime.tensor(interleave_rows(stored16[k]), dev) for k in ("q_weight", "q_scale", "q_min")], y)
    np.testing.assert_allclose(y.numpy(), x @ dequantize_array(stored16, in_f, spec).T, rtol=1e-5, atol=1e-4)


# --- q4f32_1a8: int8 activations (quantization/int8_activations.py) ---------------------------


def test_int8_activation_quantize_kernel_gives_the_rule_bits() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (5, 128)).astype(np.float32)
    x[0, :32] = 0  # an all-zero group: d = 0, codes 0
    x[2, :32] = np.float32(127) * np.concatenate([[1.0], np.full(31, 0.5)])  # d = 1: x * (1/d) lands on .5 ties
    x[2, 1:32:2] += 1  # ...and on odd .5s, so round-half-even is exercised both ways
    q, d, s = a8.quantize_rows(x)
    assert (q[0, :32] == 0).all() and d[0, 0] == 0
    assert q[2, 0] == 127 and q[2, 2] == 64 and q[2, 1] == 64  # 63.5 -> 64, 64.5 -> 64 (half to even)
    dev = tvm.cpu()
    for parallel in (True, False):
        kernel = a8.quantize_kernel(128, parallel).with_attr("global_symbol", "quantize")
        lib = tvm.compile(kernel, target=make_target("cpu"))
        out = tvm.runtime.tensor(np.zeros((5, 128 // a8.GROUP * a8.ROW_WORDS_PER_GROUP), np.int32), dev)
        lib["quantize"](tvm.runtime.tensor(x, dev), out)
        assert np.array_equal(out.numpy(), a8.pack_rows(q, d, s))  # every bit: codes, d and s


def test_int8_activation_matmul_equals_the_rule_with_and_without_vnni() -> None:
    spec = get_scheme("q4f32_1a8").weight
    out_f, in_f = 48, 96
    assert a8.eligible(spec) and not a8.eligible(get_scheme("q8f32_1").weight)
    rng = np.random.default_rng(2)
    scheme = get_scheme("q4f32_1a8")
    stored = quantize_array(rng.normal(0, 1, (out_f, in_f)).astype(np.float32), spec, scheme.stored_scale_dtype)
    assert stored["q_scale"].dtype == np.float16  # as GGUF's Q4_1 stores them
    weight = dequantize_array(stored, in_f, spec)
    target, dev = make_target("cpu"), tvm.cpu()
    assert a8.host_has_vnni() == tvm.target.codegen.target_has_features("avx512vnni", target)
    for rows, tile in ((1, 1), (1, 4), (7, 4), (8, 4)):
        x = rng.normal(0, 1, (rows, in_f)).astype(np.float32)
        x_int8 = tvm.runtime.tensor(a8.pack_rows(*a8.quantize_rows(x)), dev)
        reference = a8.matmul_reference(x, stored, in_f)
        # The activations' rounding is the scheme's only new error: small against the f32 product.
        exact = x @ weight.T
        assert np.linalg.norm(reference - exact) / np.linalg.norm(exact) < 0.05
        results = []
        for vnni in (True, False) if a8.host_has_vnni() else (False,):
            kernel = a8.matmul_kernel(out_f, in_f, tile, vnni, "float16").with_attr("global_symbol", "kernel")
            lib = tvm.tirx.build(tvm.IRModule({"kernel": kernel}), target=target)
            asm = lib.inspect_source("asm")
            assert ("vpdpbusd" in asm) == vnni  # the instruction the scheme exists for, and only there
            y = tvm.runtime.tensor(np.zeros((rows, out_f), np.float32), dev)
            weights = [tvm.runtime.tensor(interleave_rows(stored[k]), dev) for k in ("q_weight", "q_scale", "q_min")]
            lib["kernel"](x_int8, *weights, y)
            np.testing.assert_allclose(y.numpy(), reference, rtol=1e-5, atol=1e-5)
            results.append(y.numpy())
        # The integer sums are exact either way: the two instructions give the same outputs.
        assert all(np.array_equal(results[0], r) for r in results)
    # [batch, sequence, in] as the model passes it (no reshape), quantized and multiplied.
    x = rng.normal(0, 1, (2, 3, in_f)).astype(np.float32)
    row_words = in_f // a8.GROUP * a8.ROW_WORDS_PER_GROUP
    quantize = tvm.compile(a8.quantize_kernel(in_f, lead=2).with_attr("global_symbol", "quantize"), target=target)
    matmul = tvm.compile(a8.matmul_kernel(out_f, in_f, 4, a8.host_has_vnni(), "float16", lead=2).with_attr("global_symbol", "kernel"),
                         target=target)
    x_int8 = tvm.runtime.tensor(np.zeros((2, 3, row_words), np.int32), dev)
    quantize["quantize"](tvm.runtime.tensor(x, dev), x_int8)
    assert np.array_equal(x_int8.numpy().reshape(6, row_words), a8.pack_rows(*a8.quantize_rows(x.reshape(6, in_f))))
    y = tvm.runtime.tensor(np.zeros((2, 3, out_f), np.float32), dev)
    matmul["kernel"](x_int8, *weights, y)
    np.testing.assert_allclose(y.numpy().reshape(6, out_f), a8.matmul_reference(x.reshape(6, in_f), stored, in_f), rtol=1e-5, atol=1e-5)


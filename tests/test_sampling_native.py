"""The sampler's native kernel (sampling_kernel.py) against the numpy reference (sampling.py):
the same float64 bits for every weight, the same left-to-right total, the same seeded tokens.
The browser engine computes the reference's arithmetic (web/src/sampling.ts), so a kernel that
fused `p * r + c` into one FMA, or summed in another order, would split the two engines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sphere_aae.sampling import (
    HIST_SIZE,
    NATIVE_WEIGHTS_SYMBOL,
    NativeWeights,
    Sampler,
    SamplingParams,
    exponent_histogram,
    nucleus_order,
    spec_exp,
    sum_ltr,
)

VOCAB = 49152


@pytest.fixture(scope="module")
def kernel_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kernel built as `sphere_aae compile` builds it, exported to a shared library."""
    from sphere_aae import sampling_kernel
    from sphere_aae.compile import make_target

    if not sampling_kernel.supported(make_target("cpu")):
        pytest.skip("the kernel is built for x86 hosts only")
    path = tmp_path_factory.mktemp("kernel") / "sampling_kernel.so"
    sampling_kernel.build(make_target("cpu")).export_library(str(path))
    return path


@pytest.fixture(scope="module")
def native(kernel_library: Path) -> NativeWeights:
    import tvm

    found = NativeWeights.from_library(tvm.runtime.load_module(str(kernel_library)))
    assert found is not None
    return found


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64)


def edge_inputs() -> np.ndarray:
    """Inputs <= 0 where exp's steps change: zeros, the underflow threshold and its neighbours,
    the range reduction's rounding edges ((j + 1/2) ln 2), tiny and huge magnitudes, -inf."""
    ln2 = math.log(2)
    xs = [0.0, -0.0, -708.0, -709.0, -745.2, -746.0, -1e308, -np.inf, -5e-324, -1e-300, -1e-20, -1e-10, -0.5, -1.0]
    xs += [math.nextafter(-708.0, 0.0), math.nextafter(-708.0, -math.inf)]
    for j in range(0, 1022, 7):
        edge = -(j + 0.5) * ln2
        xs += [edge, math.nextafter(edge, 0.0), math.nextafter(edge, -math.inf)]
    return np.array([x for x in xs if x >= -1e308 or x == -np.inf], dtype=np.float64)


def test_kernel_has_no_fused_multiply_add() -> None:
    """Each `p * r + c` rounds twice in the spec; the kernel's target has no FMA to fuse with."""
    from sphere_aae import sampling_kernel
    from sphere_aae.compile import make_target

    assert sampling_kernel.SYMBOL == NATIVE_WEIGHTS_SYMBOL and sampling_kernel.HIST_SIZE == HIST_SIZE
    assert not sampling_kernel.supported(make_target("wasm"))
    if not sampling_kernel.supported(make_target("cpu")):
        pytest.skip("the kernel is built for x86 hosts only")
    asm = sampling_kernel.build(make_target("cpu")).inspect_source("asm")
    assert NATIVE_WEIGHTS_SYMBOL in asm
    assert not [line for line in asm.splitlines() if "fmadd" in line or "fmsub" in line or "fnmadd" in line or "fnmsub" in line]


@pytest.mark.parametrize("size", [1, 15, 16, 17, 1000, VOCAB, VOCAB + 3])
def test_weights_total_and_histogram_match_numpy(native: NativeWeights, size: int) -> None:
    """m = 0 and t = 1 make (x - m) / t exactly x: spec_exp itself, over sizes that exercise
    the kernel's vectorized chunks and its tail."""
    rng = np.random.default_rng(size)
    edges = edge_inputs()
    for scale in (1e-6, 0.3, 3.0, 30.0, 300.0):
        x = -np.abs(rng.standard_normal(size)) * scale
        x[: min(size, edges.size)] = edges[: min(size, edges.size)]
        rng.shuffle(x)
        w, total, hist = native(x, 0.0, 1.0)
        ref = spec_exp(x)
        assert (bits(w) == bits(ref)).all(), x[bits(w) != bits(ref)][:5]
        assert total == sum_ltr(ref)
        np.testing.assert_allclose(hist, exponent_histogram(ref), rtol=1e-12, atol=0)


def test_millions_of_random_inputs_match_bit_for_bit(native: NativeWeights) -> None:
    rng = np.random.default_rng(7)
    for _ in range(8):
        # Uniform exponents: every magnitude from 2^-60 to 2^10 as often.
        x = -np.exp2(rng.uniform(-60, 10, 1 << 19))
        w, total, _ = native(x, 0.0, 1.0)
        ref = spec_exp(x)
        assert (bits(w) == bits(ref)).all()
        assert total == sum_ltr(ref)


@pytest.mark.parametrize("temperature", [0.05, 0.3, 0.7, 1.0, 1.7])
def test_the_temperature_step_matches_numpy(native: NativeWeights, temperature: float) -> None:
    rng = np.random.default_rng(int(temperature * 100))
    for trial in range(10):
        x = (rng.standard_normal(VOCAB) * [0.5, 3.0, 10.0][trial % 3]).astype(np.float32).astype(np.float64)
        x[rng.integers(0, VOCAB, 30)] = -np.inf  # masked tokens (ignore_eos, grammar)
        m = float(x.max())
        w, total, hist = native(x, m, temperature)
        ref = spec_exp((x - m) / temperature)
        assert (bits(w) == bits(ref)).all()
        assert total == sum_ltr(ref)


def test_nucleus_order_is_exact_whatever_the_histogram_guesses() -> None:
    """The histogram only picks the first threshold; a wrong one (all mass claimed by the top
    bucket, or none) still gives the full stable sort's head."""
    rng = np.random.default_rng(3)
    for trial in range(12):
        logits = rng.normal(0, [0.3, 2.0, 8.0][trial % 3], VOCAB)
        if trial % 2:
            logits = np.round(logits, 1)  # many ties
        probs = spec_exp(logits - logits.max())
        full = np.argsort(-probs, kind="stable")
        total = sum_ltr(probs)
        top_only = np.zeros(HIST_SIZE)
        top_only[1023] = 1e300
        for hist in (None, exponent_histogram(probs), top_only, np.zeros(HIST_SIZE)):
            for top_p in (0.0, 0.5, 0.95, 0.999, 1 - 1e-16):
                order, cum = nucleus_order(probs, top_p, total, hist)
                keep = min(int(np.searchsorted(cum, top_p * total)) + 1, order.size)
                assert (order[:keep] == full[:keep]).all()
                assert (cum[:keep] == np.cumsum(probs[full[:keep]])).all()


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=0.7, top_p=0.95),
        dict(temperature=1.0, top_p=1.0),
        dict(temperature=0.3, top_p=0.5, logprobs=True, top_logprobs=3),
        dict(temperature=1.5, top_p=0.9, repetition_penalty=1.2, frequency_penalty=0.5, ignore_eos=True),
    ],
    ids=["t0.7-p0.95", "t1-p1", "logprobs", "penalties"],
)
def test_seeded_tokens_are_those_of_numpy(native: NativeWeights, params: dict) -> None:
    rng = np.random.default_rng(11)
    eos = [2, 7]
    for seed in range(6):
        p = SamplingParams(seed=seed, **params).resolved()
        ref, fast = Sampler(p, VOCAB, [5, 6], eos), Sampler(p, VOCAB, [5, 6], eos, native)
        for _ in range(8):
            logits = (rng.standard_normal(VOCAB + 2) * [1.0, 4.0][seed % 2]).astype(np.float32)
            a, b = ref.sample(logits), fast.sample(logits)
            assert (a.token_id, a.logprob, a.top_logprobs) == (b.token_id, b.logprob, b.top_logprobs)
        assert ref.rng.state == fast.rng.state


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy's inf - inf, as before
def test_non_finite_logits_take_the_numpy_path(native: NativeWeights) -> None:
    """The kernel assumes no NaN; a NaN or +inf logit goes to numpy, as before."""
    for bad in (np.nan, np.inf):
        logits = np.zeros(64, dtype=np.float32)
        logits[5] = bad
        p = SamplingParams(temperature=0.7, top_p=0.95, seed=1).resolved()
        a, b = Sampler(p, 64).sample(logits), Sampler(p, 64, native=native).sample(logits)
        assert a.token_id == b.token_id


def test_a_library_without_the_kernel_gives_none() -> None:
    class Lib:
        def get_function(self, name: str, query_imports: bool = False) -> None:
            raise AttributeError(f"Module has no function '{name}'")

    assert NativeWeights.from_library(Lib()) is None

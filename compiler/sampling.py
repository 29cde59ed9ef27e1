"""Token sampling on the host with numpy, as REQUESTS.md and request_spec.json specify it.

The model returns float32 logits for one position; `Sampler` turns them into the next token by
running the spec's processors in the spec's order (`sampling.processors`: ignore_eos, logit_bias,
repetition penalty, frequency/presence penalties, the logprobs point, temperature, top_p, the
draw). The browser engine (web/src/sampling.ts) runs the same list with the same float64
arithmetic, the same exp/log (`spec_exp`, `spec_log`: platform exp differs in the last bit) and
the same PRNG (`SplitMix64`), so one seed gives one token stream in both.

The per-token hot path (temperature, spec_exp, the sum, the nucleus) also exists as a native
kernel compiled into the model library (sampling_kernel.py), bit for bit the same arithmetic;
`NativeWeights` calls it, and `Sampler` falls back to numpy where a library has none.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .request_spec import FIELDS, SAMPLING

# Temperatures below this are treated as 0: dividing by a tiny temperature overflows softmax.
GREEDY_TEMPERATURE: float = SAMPLING["greedy_below_temperature"]
# The processors that only transform logits (what `Sampler.process` runs, in the spec's order).
LOGIT_PROCESSORS = ("ignore_eos", "grammar", "logit_bias", "repetition_penalty", "frequency_presence_penalty")


@dataclass
class SamplingParams:
    """Per-request generation settings; None means "the model's default" (see `resolved`)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False

    def resolved(self, defaults: Mapping[str, Any] | None = None) -> "SamplingParams":
        """A copy with every None knob filled from `defaults` (the chat config's `sampling`), then
        from OpenAI's own defaults (temperature 1, top_p 1, no penalties)."""
        defaults = defaults or {}
        fallback = {name: f["fallback"] for name, f in FIELDS.items() if f.get("default") == "model"}
        out = dataclasses.replace(self, stop=list(self.stop), logit_bias=dict(self.logit_bias))
        for name, value in fallback.items():
            if getattr(out, name) is None:
                setattr(out, name, float(defaults.get(name, value)))
        return out


@dataclass
class SampledToken:
    token_id: int
    logprob: float  # log-probability of token_id (see module docstring, step 4)
    top_logprobs: list[tuple[int, float]]  # the top_logprobs most likely tokens, best first


# --------------------------------------------------------------------------------------------
# The spec's arithmetic: PRNG, exp, log, sums (REQUESTS.md, "Sampling")

_MASK64 = (1 << 64) - 1
_PRNG = SAMPLING["prng"]
_GAMMA, _MIX1, _MIX2 = (int(_PRNG[k], 16) for k in ("gamma", "mix1", "mix2"))
_FLOAT_SHIFT = 64 - _PRNG["float_bits"]
_FLOAT_SCALE = 2.0 ** -_PRNG["float_bits"]


class SplitMix64:
    """The request PRNG: SplitMix64 over exact 64-bit integers (Python ints masked to 64 bits,
    BigInt in TypeScript), so one seed gives the same floats in both engines."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64  # two's complement for a negative seed

    def next_u64(self) -> int:
        self.state = (self.state + _GAMMA) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
        z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
        return z ^ (z >> 31)

    def next_float(self) -> float:
        """Uniform in [0, 1): the top 53 bits, scaled exactly."""
        return (self.next_u64() >> _FLOAT_SHIFT) * _FLOAT_SCALE


def os_seed() -> int:
    """A seed for a request that gave none: 64 bits from the OS's random source."""
    return secrets.randbits(64)


_EXP = SAMPLING["exp"]
_EXP_COEFFS = [1.0 / math.factorial(j) for j in range(_EXP["terms"] + 1)]
_LOG = SAMPLING["log"]
_LOG_COEFFS = [1.0 / (2 * j + 1) for j in range(_LOG["terms"] + 1)]


def spec_exp(x: np.ndarray) -> np.ndarray:
    """exp as the spec defines it (inputs <= 0 here): numpy's and JavaScript's exp disagree in
    the last bit on ~10% of inputs, which would move a seeded draw now and then. In-place
    operations, each rounding as the spec's `p = p * r + c` does (a token's budget is ~1 ms)."""
    x = np.asarray(x, dtype=np.float64)
    under = x < _EXP["underflow_below"]
    xs = np.maximum(x, _EXP["underflow_below"])  # the clamped ones become 0 below
    with np.errstate(invalid="ignore"):
        k = xs * _EXP["inv_ln2"]
        k += 0.5
        np.floor(k, out=k)
        r = k * _EXP["ln2_hi"]
        np.subtract(xs, r, out=r)
        r -= k * _EXP["ln2_lo"]
        p = np.full_like(r, _EXP_COEFFS[-1])
        for c in reversed(_EXP_COEFFS[:-1]):
            p *= r
            p += c
        # Times 2^k, exact: k is in [-1021, 0] here, so 2^k is the double with exponent k + 1023
        # (np.ldexp is 10x slower). A NaN input stays NaN whatever k becomes.
        scale = k.astype(np.int64)
        scale += 1023
        scale <<= 52
        p *= scale.view(np.float64)
    p[under] = 0.0
    return p


def spec_log(s: float) -> float:
    """log as the spec defines it, for a softmax total s >= 1."""
    m, e = math.frexp(s)
    if m < _LOG["sqrt_half"]:
        m, e = m * 2.0, e - 1
    z = (m - 1.0) / (m + 1.0)
    zz = z * z
    q = _LOG_COEFFS[-1]
    for c in reversed(_LOG_COEFFS[:-1]):
        q = q * zz + c
    return e * _EXP["ln2_hi"] + (e * _EXP["ln2_lo"] + (2.0 * z) * q)


# The kernel's symbol in a model library, and its exponent histogram's size (sampling_kernel.py:
# this module must not import it, which needs TVM's compiler).
NATIVE_WEIGHTS_SYMBOL = "sphere_aae_sampling_weights"
HIST_SIZE = 2048


class NativeWeights:
    """The compiled temperature step: w = spec_exp((x - m) / t), its left-to-right sum and the
    mass per float64 exponent (for nucleus_order) in one pass, ~0.2 ms a token over 49,152
    logits where numpy takes ~0.7 ms. Same bits as the numpy functions (tests/test_sampling_native.py)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self._func = func

    @classmethod
    def from_library(cls, lib: Any) -> "NativeWeights | None":
        """The kernel in a loaded model library (tvm.runtime.Module); None when the library
        was compiled without it (before it existed, or for the browser)."""
        try:
            return cls(lib.get_function(NATIVE_WEIGHTS_SYMBOL, query_imports=True))
        except AttributeError:
            return None

    def __call__(self, x: np.ndarray, m: float, temperature: float) -> tuple[np.ndarray, float, np.ndarray]:
        """(w, total, hist) for float64 logits x with a finite max m and temperature > 0 (NaN
        inputs are the caller's to route to numpy: the kernel is compiled assuming none)."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        w, total, hist = np.empty_like(x), np.empty(1), np.empty(HIST_SIZE)
        self._func(x, w, total, hist, float(m), float(temperature))  # numpy arrays go by DLPack, no copy
        return w, float(total[0]), hist


def exponent_histogram(weights: np.ndarray) -> np.ndarray:
    """hist[e]: the mass of the weights (>= 0) whose float64 exponent field is e (the native
    kernel's third output; numpy's sums round differently, which only moves the first guess)."""
    buckets = (weights.view(np.int64) >> 52) & (HIST_SIZE - 1)  # masked: a NaN's sign bit may be set
    return np.bincount(buckets, weights=weights, minlength=HIST_SIZE)


def sum_ltr(values: np.ndarray) -> float:
    """The plain left-to-right sum (what a JavaScript loop computes); np.sum is pairwise."""
    return float(np.cumsum(values)[-1]) if values.size else 0.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - np.max(x)
    return shifted - spec_log(sum_ltr(spec_exp(shifted)))


# --------------------------------------------------------------------------------------------
# The sampler


@dataclass
class _Step:
    """One token's pipeline state, passed from processor to processor."""

    x: np.ndarray  # float64 logits, transformed in place by the logit processors
    allowed: np.ndarray | None = None  # bool[vocab]: what a structured-output grammar allows next
    logprobs: np.ndarray | None = None
    weights: np.ndarray | None = None  # exp((x - max) / temperature)
    total: float | None = None  # sum_ltr(weights), when the native kernel computed it
    hist: np.ndarray | None = None  # exponent_histogram(weights), ditto
    ids: np.ndarray | None = None  # the ids the draw chooses among, with their running mass
    cum: np.ndarray | None = None
    token: int | None = None


class Sampler:
    """Sampling state of one sequence: its PRNG and the token counts the penalties need."""

    def __init__(
        self, params: SamplingParams, vocab_size: int, prompt_token_ids: Sequence[int] = (), eos_token_ids: Sequence[int] = (),
        native: NativeWeights | None = None,
    ) -> None:
        if params.temperature is None or params.top_p is None:
            raise ValueError("Sampler needs resolved SamplingParams (call params.resolved(defaults))")
        bad = [t for t in params.logit_bias if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"logit_bias token id {bad[0]} is outside the vocabulary (size {vocab_size})")
        self.params = params
        self.vocab_size = vocab_size
        self.native = native  # the model library's kernel for the temperature step, if it has one
        self.seed = os_seed() if params.seed is None else params.seed
        self.rng = SplitMix64(self.seed)
        self._counts = np.zeros(vocab_size, dtype=np.int64)
        self._seen = np.zeros(vocab_size, dtype=bool)
        prompt = np.asarray([t for t in prompt_token_ids if 0 <= t < vocab_size], dtype=np.int64)
        self._seen[prompt] = True
        self._eos = np.asarray(sorted({t for t in eos_token_ids if 0 <= t < vocab_size}), dtype=np.int64)
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self._bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float64, count=len(params.logit_bias))
        # The pipeline is the spec's list, read here: reordering it there reorders both engines.
        self._stages: list[Callable[[_Step], None]] = [getattr(self, "_" + name) for name in SAMPLING["processors"]]
        self._logit_stages = [getattr(self, "_" + n) for n in SAMPLING["processors"] if n in LOGIT_PROCESSORS]

    def process(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """The logit processors only: float64 logits with the masks, bias and penalties applied."""
        step = _Step(np.array(logits[: self.vocab_size], dtype=np.float64), allowed)
        for stage in self._logit_stages:
            stage(step)
        return step.x

    def sample(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> SampledToken:
        """Pick the next token from one position's logits and record it for the penalties.
        `allowed`: the tokens a structured-output grammar allows (structured.GrammarMatcher)."""
        step = _Step(np.array(logits[: self.vocab_size], dtype=np.float64), allowed)
        for stage in self._stages:
            stage(step)
        assert step.token is not None, "request_spec.json's processors must end with the draw"
        token = step.token
        self._counts[token] += 1
        self._seen[token] = True
        if step.logprobs is None:
            return SampledToken(token, 0.0, [])
        return SampledToken(token, float(step.logprobs[token]), top_k(step.logprobs, self.params.top_logprobs))

    # ---- the processors, by their names in request_spec.json

    def _ignore_eos(self, step: _Step) -> None:
        if self.params.ignore_eos and self._eos.size:
            step.x[self._eos] = -np.inf

    def _grammar(self, step: _Step) -> None:
        if step.allowed is not None:
            step.x[~step.allowed[: self.vocab_size]] = -np.inf

    def _logit_bias(self, step: _Step) -> None:
        if self._bias_ids.size:
            step.x[self._bias_ids] += self._bias_values

    def _repetition_penalty(self, step: _Step) -> None:
        r = self.params.repetition_penalty
        if r != 1.0 and self._seen.any():
            seen = step.x[self._seen]
            step.x[self._seen] = np.where(seen > 0, seen / r, seen * r)

    def _frequency_presence_penalty(self, step: _Step) -> None:
        f, p = self.params.frequency_penalty, self.params.presence_penalty
        if f or p:
            ids = np.flatnonzero(self._counts)
            step.x[ids] = step.x[ids] - (self._counts[ids] * f + p)

    def _logprobs(self, step: _Step) -> None:
        if self.params.logprobs:
            step.logprobs = log_softmax(step.x)

    def _temperature(self, step: _Step) -> None:
        m = float(np.max(step.x))
        if self.params.temperature < GREEDY_TEMPERATURE or m == -np.inf:
            step.token = int(np.argmax(step.x))
        elif self.native is not None and math.isfinite(m):  # a NaN logit makes m NaN
            step.weights, step.total, step.hist = self.native(step.x, m, self.params.temperature)
        else:
            step.weights = spec_exp((step.x - m) / self.params.temperature)

    def _top_p(self, step: _Step) -> None:
        if step.token is not None:
            return
        w, top_p = step.weights, self.params.top_p
        assert w is not None, "request_spec.json's processors must put temperature before top_p"
        if top_p < 1.0:
            # Nucleus: the smallest most-likely set whose mass reaches top_p (at least one).
            total = sum_ltr(w) if step.total is None else step.total
            order, cum = nucleus_order(w, top_p, total, step.hist)
            keep = min(int(np.searchsorted(cum, top_p * total)) + 1, order.size)
            step.ids, step.cum = order[:keep], cum[:keep]
        else:
            step.ids, step.cum = np.arange(w.size), np.cumsum(w)

    def _draw(self, step: _Step) -> None:
        if step.token is not None:
            return
        assert step.ids is not None and step.cum is not None, "request_spec.json's processors must put top_p before the draw"
        target = self.rng.next_float() * step.cum[-1]
        i = int(np.searchsorted(step.cum, target, side="right"))
        step.token = int(step.ids[min(i, step.ids.size - 1)])


def nucleus_order(
    probs: np.ndarray, top_p: float, total: float | None = None, hist: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The most likely token ids, best first (ties: lower id first), with their cumulative mass,
    at least as far as the mass reaches top_p of the total: the head of a full stable sort,
    without sorting the whole vocabulary (5-7 ms a token over 49,152 logits; this ~0.05 ms).

    Candidates are every id whose probability is at least a threshold t, so ties at the edge are
    all in and their order is exactly the full sort's. t is the power of two starting the
    exponent bucket where the histogram's mass, from the top, first reaches top_p of the total;
    the histogram only guesses (its sums round differently): the candidates' own sorted mass
    decides, and t is lowered until it reaches top_p * total (t = 0 takes everything).
    `total` is the left-to-right sum of probs (sum_ltr, what the browser engine computes);
    `hist` is exponent_histogram(probs) (the native kernel returns it)."""
    total = sum_ltr(probs) if total is None else total
    need = top_p * total
    t = _nucleus_threshold(exponent_histogram(probs) if hist is None else hist, need)
    for attempt in range(3):
        ids = np.flatnonzero(probs >= t) if t > 0.0 else np.arange(probs.size)  # t = 0: NaNs too, as a full sort
        order = ids[np.argsort(-probs[ids], kind="stable")]  # ids ascend, so ties keep lower ids first
        cum = np.cumsum(probs[order])
        if t == 0.0 or (cum.size and cum[-1] >= need):
            break
        # Short of the mass (a misleading histogram, or rounding near top_p = 1): numpy's own
        # histogram one bucket lower, then everything, so at most three sorts.
        t = min(t, _nucleus_threshold(exponent_histogram(probs), need)) / 2 if attempt == 0 else 0.0
    return order, cum


def _nucleus_threshold(hist: np.ndarray, need: float) -> float:
    """The power of two starting the exponent bucket where hist's mass, from the top, reaches
    `need`; 0 when no bucket does (everything is a candidate)."""
    from_top = np.cumsum(hist[::-1])
    # The 1e-9 margin: the histogram's sum may round a little above the exact sorted one. No
    # higher than the top nonempty bucket (top_p = 0 needs no mass, but one token).
    reach = max(int(np.searchsorted(from_top, need * (1 + 1e-9))), int(np.searchsorted(from_top, 0.0, side="right")))
    bucket = min(HIST_SIZE - 1 - reach, 2046)  # 2047: inf and NaN
    # A NaN or infinite weight (NaN logits reach nucleus_order through numpy) takes everything.
    return math.ldexp(1.0, bucket - 1023) if bucket > 0 and math.isfinite(from_top[-1]) else 0.0


def top_k(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k highest (token id, logprob) pairs, best first (ties: lower id first)."""
    if k <= 0:
        return []
    k = min(k, logprobs.size)
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.lexsort((idx, -logprobs[idx]))]
    return [(int(i), float(logprobs[i])) for i in idx]

"""Token sampling on the host with numpy.

The model returns float32 logits for one position; `Sampler` turns them into the next token.
Order of operations (the one OpenAI and vLLM document):

1. `logit_bias` is added;
2. repetition penalty (CTRL-style, over prompt + generated tokens) divides positive logits and
   multiplies negative ones;
3. frequency and presence penalties subtract `count * frequency + (count > 0) * presence`, counting
   generated tokens only;
4. log-probabilities (what `logprobs` / `top_logprobs` report) are the log-softmax of these
   processed logits, before temperature and top-p, so they describe the model's distribution and
   not the sampling knobs;
5. temperature 0 is greedy (argmax); otherwise softmax(logits / temperature), top-p (nucleus)
   truncation, and a draw from the request's own `numpy.random.Generator`, seeded with `seed` when
   given so the same seed gives the same text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# Temperatures below this are treated as 0: dividing by a tiny temperature overflows softmax.
GREEDY_TEMPERATURE = 1e-5


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
        fallback = {"temperature": 1.0, "top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0}
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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64, copy=False)
    shifted = x - np.max(x)
    return shifted - np.log(np.sum(np.exp(shifted)))


class Sampler:
    """Sampling state of one sequence: its RNG and the token counts the penalties need."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_token_ids: Sequence[int] = ()) -> None:
        if params.temperature is None or params.top_p is None:
            raise ValueError("Sampler needs resolved SamplingParams (call params.resolved(defaults))")
        bad = [t for t in params.logit_bias if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"logit_bias token id {bad[0]} is outside the vocabulary (size {vocab_size})")
        self.params = params
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(params.seed)
        self._counts = np.zeros(vocab_size, dtype=np.int64)
        self._seen = np.zeros(vocab_size, dtype=bool)
        prompt = np.asarray([t for t in prompt_token_ids if 0 <= t < vocab_size], dtype=np.int64)
        self._seen[prompt] = True
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self._bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float64, count=len(params.logit_bias))

    def process(self, logits: np.ndarray) -> np.ndarray:
        """Steps 1-3: float64 logits with bias and penalties applied (a new array)."""
        p = self.params
        x = np.array(logits[: self.vocab_size], dtype=np.float64)
        if self._bias_ids.size:
            x[self._bias_ids] += self._bias_values
        if p.repetition_penalty != 1.0 and self._seen.any():
            seen = x[self._seen]
            x[self._seen] = np.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
        if p.frequency_penalty or p.presence_penalty:
            x -= self._counts * p.frequency_penalty + (self._counts > 0) * p.presence_penalty
        return x

    def sample(self, logits: np.ndarray) -> SampledToken:
        """Pick the next token from one position's logits and record it for the penalties."""
        p = self.params
        x = self.process(logits)
        logprobs = log_softmax(x) if p.logprobs else None
        if p.temperature < GREEDY_TEMPERATURE:
            token = int(np.argmax(x))
        else:
            token = self._draw(x / p.temperature, p.top_p)
        self._counts[token] += 1
        self._seen[token] = True
        if logprobs is None:
            return SampledToken(token, 0.0, [])
        return SampledToken(token, float(logprobs[token]), top_k(logprobs, p.top_logprobs))

    def _draw(self, scaled: np.ndarray, top_p: float) -> int:
        probs = np.exp(scaled - np.max(scaled))
        if top_p < 1.0:
            # Nucleus: keep the smallest most-likely set whose mass reaches top_p (at least one).
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            keep = int(np.searchsorted(cum, top_p * cum[-1])) + 1
            kept = order[:keep]
            cum = np.cumsum(probs[kept])
            return int(kept[min(int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right")), keep - 1)])
        cum = np.cumsum(probs)
        return int(min(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"), len(cum) - 1))


def top_k(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k highest (token id, logprob) pairs, best first (ties: lower id first)."""
    if k <= 0:
        return []
    k = min(k, logprobs.size)
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.lexsort((idx, -logprobs[idx]))]
    return [(int(i), float(logprobs[i])) for i in idx]

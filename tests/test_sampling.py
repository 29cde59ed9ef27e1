"""Host-side sampling: greedy, temperature, top-p, seeds, penalties, logit_bias, logprobs."""

from __future__ import annotations

import numpy as np
import pytest

from sphere_aae.sampling import Sampler, SamplingParams, log_softmax, top_k

VOCAB = 8


def sampler(prompt=(), **kw) -> Sampler:
    return Sampler(SamplingParams(**kw).resolved(), VOCAB, prompt)


def logits_for(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def draws(s: Sampler, logits: np.ndarray, n: int) -> np.ndarray:
    # Penalties are off by default, so repeated draws from one sampler are independent.
    return np.array([s.sample(logits).token_id for _ in range(n)])


def test_temperature_zero_is_argmax():
    x = np.array([0.1, 3.0, 2.9, -1, 0, 0, 0, 0], dtype=np.float32)
    s = sampler(temperature=0)
    assert all(s.sample(x).token_id == 1 for _ in range(5))


def test_resolved_fills_model_defaults_then_openai_defaults():
    p = SamplingParams(top_p=0.5).resolved({"temperature": 0.7, "top_p": 0.9})
    assert (p.temperature, p.top_p, p.repetition_penalty, p.frequency_penalty) == (0.7, 0.5, 1.0, 0.0)
    with pytest.raises(ValueError, match="resolved"):
        Sampler(SamplingParams(), VOCAB)


def test_same_seed_same_tokens_different_seed_different_tokens():
    x = np.zeros(VOCAB, dtype=np.float32)
    a = draws(sampler(temperature=1, seed=42), x, 50)
    b = draws(sampler(temperature=1, seed=42), x, 50)
    c = draws(sampler(temperature=1, seed=43), x, 50)
    assert (a == b).all() and not (a == c).all()


def test_temperature_one_follows_the_softmax():
    probs = [0.5, 0.25, 0.125, 0.125, 0, 0, 0, 0]
    with np.errstate(divide="ignore"):
        x = logits_for(probs)
    counts = np.bincount(draws(sampler(temperature=1, seed=0), x, 8000), minlength=VOCAB) / 8000
    assert np.allclose(counts, probs, atol=0.025)


def test_low_temperature_sharpens():
    x = logits_for([0.4, 0.3, 0.1, 0.1, 0.025, 0.025, 0.025, 0.025])
    hot = np.mean(draws(sampler(temperature=1.5, seed=1), x, 3000) == 0)
    cold = np.mean(draws(sampler(temperature=0.2, seed=1), x, 3000) == 0)
    assert cold > 0.75 and hot < 0.4


def test_top_p_keeps_only_the_nucleus():
    x = logits_for([0.5, 0.3, 0.1, 0.05, 0.02, 0.01, 0.01, 0.01])
    seen = set(draws(sampler(temperature=1, top_p=0.7, seed=3), x, 2000).tolist())
    assert seen == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    assert set(draws(sampler(temperature=1, top_p=0.01, seed=3), x, 200).tolist()) == {0}
    assert len(set(draws(sampler(temperature=1, top_p=1.0, seed=3), x, 4000).tolist())) >= 6


def test_logit_bias_bans_and_forces():
    x = np.array([5, 1, 1, 1, 1, 1, 1, 1], dtype=np.float32)
    assert 0 not in draws(sampler(temperature=1, seed=0, logit_bias={0: -100}), x, 300)
    assert set(draws(sampler(temperature=1, seed=0, logit_bias={6: 100}), x, 50).tolist()) == {6}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sampler(logit_bias={VOCAB: 1})


def test_frequency_and_presence_penalties_follow_openai_formula():
    s = sampler(temperature=0, frequency_penalty=0.5, presence_penalty=0.25)
    x = np.zeros(VOCAB, dtype=np.float32)
    x[3] = 10
    for _ in range(3):
        s.sample(x)  # token 3 three times (the penalty does not overcome a margin of 10)
    processed = s.process(x)
    assert processed[3] == pytest.approx(10 - 3 * 0.5 - 0.25)
    assert (processed[np.arange(VOCAB) != 3] == 0).all()


def test_penalties_change_the_greedy_choice():
    x = np.array([0, 0, 2.0, 1.9, 0, 0, 0, 0], dtype=np.float32)
    s = sampler(temperature=0, presence_penalty=1.0)
    assert [s.sample(x).token_id for _ in range(3)] == [2, 3, 2]  # 2 and 3 take turns once both are seen


def test_repetition_penalty_covers_the_prompt():
    x = np.array([2.0, -2.0, 1.0, 0, 0, 0, 0, 0], dtype=np.float32)
    s = sampler(prompt=[0, 1], temperature=0, repetition_penalty=2.0)
    processed = s.process(x)
    assert processed[0] == pytest.approx(1.0) and processed[1] == pytest.approx(-4.0) and processed[2] == pytest.approx(1.0)


def test_logprobs_and_top_logprobs():
    x = np.array([1.0, 3.0, 2.0, 0, 0, 0, 0, -1], dtype=np.float32)
    out = sampler(temperature=0, logprobs=True, top_logprobs=3).sample(x)
    ref = log_softmax(x)
    assert out.token_id == 1 and out.logprob == pytest.approx(ref[1])
    assert [t for t, _ in out.top_logprobs] == [1, 2, 0]
    assert [lp for _, lp in out.top_logprobs] == pytest.approx(ref[[1, 2, 0]].tolist())
    assert np.exp(ref).sum() == pytest.approx(1.0)
    # Reported logprobs describe the model, not the temperature used to draw.
    hot = sampler(temperature=2.0, seed=0, logprobs=True).sample(x)
    assert hot.logprob == pytest.approx(ref[hot.token_id])
    assert sampler(temperature=0).sample(x).top_logprobs == []


def test_top_k_orders_ties_by_id():
    lp = np.array([-1.0, -0.5, -0.5, -3.0])
    assert top_k(lp, 3) == [(1, -0.5), (2, -0.5), (0, -1.0)]
    assert top_k(lp, 0) == [] and len(top_k(lp, 10)) == 4


def test_large_vocab_logits_with_padding_are_cut_to_vocab():
    # Compiled models may pad the vocabulary; only the first vocab_size logits are real tokens.
    x = np.zeros(VOCAB + 4, dtype=np.float32)
    x[VOCAB + 1] = 100
    assert sampler(temperature=0).sample(x).token_id < VOCAB


def test_nucleus_order_is_the_head_of_a_full_stable_sort() -> None:
    """top_p sorts only candidates (sampling.nucleus_order); the tokens it keeps, and their order,
    are those of a full stable sort, ties at the edge included, for peaked and flat distributions."""
    from sphere_aae.sampling import nucleus_order, sum_ltr

    rng = np.random.default_rng(0)
    n = 49152
    grew = 0
    for trial in range(60):
        logits = rng.normal(0, [0.3, 2.0, 8.0][trial % 3], n)
        if trial % 2:
            logits = np.round(logits, 1)  # many ties
        probs = np.exp(logits - logits.max())
        full = np.argsort(-probs, kind="stable")
        for top_p in (0.5, 0.9, 0.95, 0.999):
            order, cum = nucleus_order(probs, top_p)
            keep = int(np.searchsorted(cum, top_p * sum_ltr(probs))) + 1
            assert keep <= order.size and (order[:keep] == full[:keep]).all(), (trial, top_p)
            grew += order.size > 256  # more than a small head: flat distributions need thousands
    assert grew  # the flat distributions needed more than the first candidates

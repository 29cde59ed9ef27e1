"""The native engine against the request-spec conformance fixtures (tests/fixtures/*_cases.json,
written by tests/fixtures/make_request_fixtures.py). web/test/request_spec.test.ts holds the
browser engine to the same files, so the two engines agree bit for bit: PRNG, exp/log, processed
logits, seeded draws, logprobs, stop strings, streaming detokenization, validation errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import STORIES

from sphere_aae.scheduler import check_prompts
from sphere_aae.text_stream import StopStringMatcher
from sphere_aae.tokenizer import IncrementalDetokenizer, TextTokenizer
from sphere_aae.protocol import RequestError, parse_chat_request, parse_completion_request
from sphere_aae.request_spec import SAMPLING, SPEC
from sphere_aae.sampling import Sampler, SamplingParams, SplitMix64, nucleus_order, spec_exp, spec_log, sum_ltr

# The generator's own helpers: what a case's inputs mean and how results are written.
from fixtures.make_request_fixtures import SAMPLING_DEFAULTS, enc, error_dict, normalized

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


SAMPLING_CASES = load("sampling_cases.json")
VALIDATION = load("validation_cases.json")


def test_the_spec_names_every_processor_once() -> None:
    assert sorted(SAMPLING["processors"]) == sorted(SAMPLING["processor_docs"])
    assert SPEC["sampling"]["prng"]["algorithm"] == "splitmix64"


@pytest.mark.parametrize("case", SAMPLING_CASES["prng"], ids=lambda c: str(c["seed"]))
def test_prng(case: dict[str, Any]) -> None:
    a, b = SplitMix64(case["seed"]), SplitMix64(case["seed"])
    assert [f"0x{a.next_u64():016x}" for _ in case["u64"]] == case["u64"]
    assert [b.next_float() for _ in case["floats"]] == case["floats"]


def test_exp_and_log_bits() -> None:
    xs = np.array([float(x) for x, _ in SAMPLING_CASES["exp"]])
    assert [enc(float(v)) for v in spec_exp(xs)] == [e for _, e in SAMPLING_CASES["exp"]]
    assert [spec_log(s) for s, _ in SAMPLING_CASES["log"]] == [v for _, v in SAMPLING_CASES["log"]]
    # And they are exp and log: within an ulp of the platform's.
    for x, e in SAMPLING_CASES["exp"]:
        if math.isfinite(float(x)) and float(x) > -700:
            assert abs(float(e) - math.exp(float(x))) <= math.ulp(math.exp(float(x)))


@pytest.mark.parametrize("case", SAMPLING_CASES["nucleus"], ids=lambda c: f"{len(c['logits'])}-{c['top_p']}")
def test_nucleus(case: dict[str, Any]) -> None:
    x = np.asarray(case["logits"], dtype=np.float32).astype(np.float64)
    w = spec_exp((x - x.max()) / case["temperature"])
    total = sum_ltr(w)
    assert total == case["total"]
    order, cum = nucleus_order(w, case["top_p"], total)
    keep = min(int(np.searchsorted(cum, case["top_p"] * total)) + 1, order.size)
    assert order[:keep].tolist() == case["ids"] and cum[:keep].tolist() == case["cum"]


@pytest.mark.parametrize("case", SAMPLING_CASES["cases"], ids=lambda c: c["name"])
def test_sampling_steps(case: dict[str, Any]) -> None:
    p = {**SAMPLING_DEFAULTS, **case["params"]}
    params = SamplingParams(**{**p, "logit_bias": {int(k): v for k, v in p.get("logit_bias", {}).items()}})
    sampler = Sampler(params, case["vocab_size"], case.get("prompt_ids", []), case.get("eos_token_ids", []))
    logits = np.asarray(case["logits"], dtype=np.float32)
    for i, want in enumerate(case["expected"]):
        processed = sampler.process(logits)
        got = sampler.sample(logits)
        if "processed" in want:
            assert [enc(float(v)) for v in processed] == want["processed"], f"step {i}"
        assert got.token_id == want["token"], f"step {i}"
        if "logprob" in want:
            assert enc(got.logprob) == want["logprob"] and [[t, enc(lp)] for t, lp in got.top_logprobs] == want["top_logprobs"], f"step {i}"


@pytest.mark.parametrize("case", load("stop_cases.json")["cases"], ids=lambda c: c["name"])
def test_stop_strings(case: dict[str, Any]) -> None:
    m = StopStringMatcher(case["stops"])
    emits, finish, final = [], None, ""
    for chunk in case["chunks"]:
        text, hit = m.feed(chunk)
        emits.append(text)
        if hit:
            finish = "stop"
            break
    if finish is None:
        final, hit = m.feed(case["end"])
        final, finish = (final, "stop") if hit else (final + m.flush(), "length")
    assert {"emits": emits, "final": final, "finish": finish} == case["expected"]


@pytest.fixture(scope="module")
def detok_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TextTokenizer]:
    fixture = load("detokenizer_cases.json")
    folder = tmp_path_factory.mktemp("byte-level")
    (folder / "tokenizer.json").write_text(json.dumps(fixture["tokenizers"]["byte_level"]), encoding="utf-8")
    return {
        "stories260K": TextTokenizer(STORIES, {"bos_token_id": 1, "add_bos_token": True, "eos_token_ids": [2]}),
        "byte_level": TextTokenizer(folder, {"bos_token_id": None, "add_bos_token": False, "eos_token_ids": [0]}),
    }


@pytest.mark.parametrize("case", load("detokenizer_cases.json")["cases"], ids=lambda c: c["name"])
def test_detokenizer(case: dict[str, Any], detok_tokenizers: dict[str, TextTokenizer]) -> None:
    tok = detok_tokenizers[case["tokenizer"]]
    detok = IncrementalDetokenizer(tok, case["prompt_ids"])
    assert [detok.push(i) for i in case["ids"]] == case["deltas"]
    assert detok.flush() == case["flush"]
    assert [list(tok.token_bytes(i)) for i in case["ids"]] == case["token_bytes"]


@pytest.mark.parametrize("case", VALIDATION["cases"], ids=lambda c: f"{c['endpoint']}: {c['name']}")
def test_validation(case: dict[str, Any]) -> None:
    kind = case["endpoint"]
    parse = parse_chat_request if kind == "chat" else parse_completion_request
    if "error" in case:
        with pytest.raises(RequestError) as info:
            parse(case["body"])
        assert error_dict(info.value) == case["error"]
    else:
        assert normalized(kind, parse(case["body"])) == case["parsed"]


@pytest.mark.parametrize("case", VALIDATION["model_cases"], ids=lambda c: c["name"])
def test_model_checks(case: dict[str, Any]) -> None:
    m = VALIDATION["model"]
    check = lambda: check_prompts(case["endpoint"], case["prompts"], {int(k) for k in case["logit_bias"]}, m["vocab_size"], m["context_window_size"])  # noqa: E731
    if "error" in case:
        with pytest.raises(RequestError) as info:
            check()
        assert error_dict(info.value) == case["error"]
    else:
        assert check() == case["max_new"]


STRUCTURED = load("structured_cases.json")


def test_structured_vocabularies() -> None:
    """The vocabulary handed to XGrammar, by request_spec.json's rule (web: structured.test.ts)."""
    from sphere_aae.structured import vocabulary

    sources = {"stories260K": json.loads((STORIES / "tokenizer.json").read_text()), **STRUCTURED["tokenizers"]}
    for name, v in STRUCTURED["vocabularies"].items():
        assert vocabulary(sources[name], v["vocab_size"]) == (v["tokens"], v["vocab_type"], v["prepend_space"]), name


@pytest.mark.parametrize("case", STRUCTURED["cases"], ids=lambda c: c["name"])
def test_structured_masks(case: dict[str, Any], tmp_path: Path) -> None:
    """Along each fixture path the grammar allows exactly the recorded tokens at every step."""
    from sphere_aae.structured import GrammarCompiler, ResponseFormat
    from sphere_aae.tools import Function, ToolPlan, named_call_format

    v = STRUCTURED["vocabularies"][case["tokenizer"]]
    source = STORIES / "tokenizer.json" if case["tokenizer"] == "stories260K" else None
    (tmp_path / "tokenizer.json").write_text(source.read_text() if source else json.dumps(STRUCTURED["tokenizers"][case["tokenizer"]]))
    compiler = GrammarCompiler(tmp_path, v["vocab_size"], v["eos"])
    f = case["format"]
    plan = call_format = None
    if f["kind"] == "tool_calls":
        functions = tuple(Function(x["name"], x["parameters"], x["description"]) for x in f["tools"]["functions"])
        plan, call_format = ToolPlan(functions, f["tools"]["choice"], f["tools"]["parallel"]), named_call_format(f["call_format"])
    fmt = ResponseFormat(f["kind"], schema=f["schema"], grammar=f["grammar"], tools=plan, call_format=call_format)
    matcher = compiler.matcher(compiler.compile(fmt))
    for i, step in enumerate(case["steps"]):
        assert np.flatnonzero(matcher.allowed()).tolist() == step["allowed"], f"step {i}"
        if step["token"] in v["eos"]:
            break
        matcher.accept(step["token"])

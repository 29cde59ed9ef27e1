"""The native forward backend's rules against tests/fixtures/runtime_cases.json (written by
tests/fixtures/make_runtime_fixtures.py from ARTIFACT.md's "Sliding-window models");
web/test/runtime_rules.test.ts holds the browser engine's twins to the same file."""

from __future__ import annotations

import json
from pathlib import Path

from sphere_aae.runtime.model_runtime import kv_cache_args, prefill_chunk_length

CASES = json.loads((Path(__file__).parent / "fixtures" / "runtime_cases.json").read_text(encoding="utf-8"))


def test_prefill_chunk_length() -> None:
    for c in CASES["chunk_length"]:
        assert prefill_chunk_length(c["seq_len"], c["prefill_chunk_size"], c["sliding_window_size"]) == c["expected"], c


def test_prefill_plans() -> None:
    """A whole prefill, chunk after chunk, as the runtime loops over a prompt."""
    for c in CASES["prefill_plans"]:
        seq, end, chunks = c["start"], c["start"] + c["prompt_length"], []
        while seq < end:
            n = min(prefill_chunk_length(seq, c["prefill_chunk_size"], c["sliding_window_size"]), end - seq)
            assert n >= 1, (c, chunks)
            chunks.append(n)
            seq += n
        assert chunks == c["chunks"], c


def test_kv_cache_args() -> None:
    for c in CASES["kv_cache_args"]:
        assert kv_cache_args(c["context_window_size"], c["prefill_chunk_size"], c["max_batch_size"]) == c["args"], c

"""`aae-web bench` end to end on stories260K: the CLI builds (or reuses), serves, runs headless
Chromium, and prints one JSON object whose figures are sane and whose greedy ids are the fixture's
reference. Runs on the faster CPU WebGPU route available (lavapipe, else SwiftShader), so together
with test_browser_models.py (SwiftShader) both routes reproduce the reference ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from browser_support import cpu_threads, playwright, web_dist, web_models_dir, webgpu_route  # noqa: F401
from conftest import STORIES_REFERENCE_IDS, STORIES_REFERENCE_TEXT
from sphere_aae.web.bench import format_web_bench

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REQUIRED = ("text", "ids", "adapter", "load_s", "warm_load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "wasm_bytes", "weights_bytes")


def test_cli_json_on_stories260k(stories_dir: Path, web_models_dir: Path, web_dist: Path, webgpu_route: str) -> None:
    cmd = [
        sys.executable, "-m", "sphere_aae", "web-bench", str(stories_dir), "-q", "q0f32",
        "--prompt", "Once upon a time", "--max-tokens", "40", "--adapter", webgpu_route,
        "-o", str(web_models_dir), "--structured", "--json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    r: dict[str, Any] = json.loads(p.stdout)  # stdout is exactly one JSON object
    assert set(REQUIRED) <= set(r), sorted(set(REQUIRED) - set(r))

    # Greedy: the reference continuation, as ids (prompt + generated) and as text.
    assert r["ids"] == STORIES_REFERENCE_IDS
    assert "Once upon a time" + r["text"] == STORIES_REFERENCE_TEXT
    assert r["prompt_tokens"] == 5 and r["completion_tokens"] == 40

    # The adapter the route gives, described.
    assert r["adapter_route"] == webgpu_route
    expect = {"lavapipe": "llvmpipe", "swiftshader": "SwiftShader"}[webgpu_route]
    assert expect.lower() in r["adapter"].lower(), r["adapter"]

    # Timings: positive, finite, and ordered as they must be.
    for k in ("load_s", "warm_load_s", "ttft_s", "prefill_tok_s", "decode_tok_s"):
        assert isinstance(r[k], (int, float)) and 0 < r[k] < 1e6, (k, r[k])
    assert r["ttft_s"] < r["request_s"]
    # The warm load read everything from the browser cache; the cold one downloaded it all.
    assert r["warm_fetched_requests"] == 0 and r["warm_fetched_bytes"] == 0
    assert r["cold_fetched_bytes"] >= r["weights_bytes"] + r["wasm_bytes"]

    # Sizes are the files on disk.
    folder = web_models_dir / r["model"]
    assert r["wasm_bytes"] == (folder / f"{r['model']}-webgpu.wasm").stat().st_size
    manifest = json.loads((folder / "tensor-manifest.json").read_text())
    assert r["weights_bytes"] == manifest["total_bytes"] == sum(s["bytes"] for s in manifest["shards"])

    text = format_web_bench(r)
    for label in ("load, cold", "load, warm", "time to 1st tok", "prefill", "decode", "tokens/s"):
        assert label in text
    assert STORIES_REFERENCE_TEXT in text

    # --structured: the grammar's cost per token, against the decode step.
    so = r["structured"]
    assert so["tokens"] > 1 and so["grammar_ms_per_token"] > 0
    assert so["share_of_step"] == pytest.approx(so["grammar_ms_per_token"] / so["decode_ms_per_token"])
    assert "the grammar costs" in text


def test_cli_wasm_beside_webgpu_on_stories260k(stories_dir: Path, web_models_dir: Path, web_dist: Path, webgpu_route: str) -> None:
    """`--device wasm --device webgpu`: the CPU library (in a Chromium without WebGPU) and the
    WebGPU route in one run, one result each in the same shape, both the reference ids."""
    from sphere_aae.web.bench import format_web_bench_table

    cmd = [
        sys.executable, "-m", "sphere_aae", "web-bench", str(stories_dir), "-q", "q0f32",
        "--prompt", "Once upon a time", "--max-tokens", "40", "--adapter", webgpu_route,
        "--device", "wasm", "--device", "webgpu", "-o", str(web_models_dir), "--json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    rs: list[dict[str, Any]] = json.loads(p.stdout)
    assert [r["device"] for r in rs] == ["wasm", "webgpu"]
    assert [r["adapter_route"] for r in rs] == ["wasm", webgpu_route]
    cpu, gpu = rs
    assert set(cpu) == set(gpu), "the same fields for every device"
    for r in rs:
        assert set(REQUIRED) <= set(r), sorted(set(REQUIRED) - set(r))
        assert r["ids"] == STORIES_REFERENCE_IDS, r["adapter_route"]
        for k in ("load_s", "warm_load_s", "ttft_s", "prefill_tok_s", "decode_tok_s"):
            assert isinstance(r[k], (int, float)) and 0 < r[k] < 1e6, (r["adapter_route"], k, r[k])
        assert r["warm_fetched_requests"] == 0
    assert cpu_threads(cpu["adapter"]) == (os.cpu_count() or 1), cpu
    folder = web_models_dir / cpu["model"]
    assert cpu["wasm_bytes"] == (folder / f"{cpu['model']}-wasm.wasm").stat().st_size
    assert gpu["wasm_bytes"] == (folder / f"{gpu['model']}-webgpu.wasm").stat().st_size
    # Only the CPU library was downloaded on the wasm route, never the WebGPU one.
    assert cpu["weights_bytes"] + cpu["wasm_bytes"] <= cpu["cold_fetched_bytes"] < cpu["weights_bytes"] + cpu["wasm_bytes"] + gpu["wasm_bytes"]

    table = format_web_bench_table(rs)
    assert "route" in table.splitlines()[3] and "decode tok/s" in table
    assert any(line.startswith("wasm ") for line in table.splitlines())
    assert STORIES_REFERENCE_TEXT in table

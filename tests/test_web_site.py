"""The demo site in headless Chromium, without a real model: page, worker, cache and errors.

A real compiled model is not needed for what this checks: the page imports the built package,
starts the module worker, lists models from /models/models.json, and a load reaches WebGPU device
creation and the model library; the library here is a stub, so the load ends in a typed error
shown on the page. Along the way the model files land in the Cache API, so a second load must
fetch none of them from the server. Real models in the browser: test_browser_models.py.

web/dist is built by the `web_dist` fixture when missing or stale; Chromium is required.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from browser_support import playwright, web_dist  # noqa: F401  (fixtures are used by name)
from sphere_aae.web import browser, start_server

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "stub-q0f32"


def _make_model(models: Path) -> Path:
    """A model folder that is valid up to its library: config, manifest, shards, tokenizer."""
    m = models / MODEL_ID
    (m / "params").mkdir(parents=True)
    shards, tensors = [], []
    for i in range(2):
        data = bytes((i * 31 + j * 7) & 0xFF for j in range(4096))
        (m / f"params/shard-{i:05d}.bin").write_bytes(data)
        shards.append({"file": f"params/shard-{i:05d}.bin", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        tensors.append({"name": f"w{i}", "shape": [1024], "dtype": "float32", "shard": i, "byte_offset": 0, "bytes": len(data)})
    (m / "tensor-manifest.json").write_text(json.dumps({"format_version": 1, "quantization": "q0f32", "total_bytes": 8192, "shards": shards, "tensors": tensors}))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}
    tok = {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": t, "special": True, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False} for t, i in list(vocab.items())[:3]],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    (m / "tokenizer.json").write_text(json.dumps(tok))
    (m / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    cfg = {
        "format_version": 1, "model_id": MODEL_ID, "model_type": "llama", "quantization": "q0f32",
        "model_config": {"hidden_size": 8, "vocab_size": 4, "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 8},
        "context_window_size": 64, "prefill_chunk_size": 16, "sliding_window_size": -1, "max_batch_size": 1,
        "tokenizer_files": ["tokenizer.json", "tokenizer_config.json"], "chat_template": None,
        "bos_token_id": 1, "add_bos_token": True, "eos_token_ids": [2], "pad_token_id": 0,
        "sampling": {"temperature": 0.7, "top_p": 0.95, "presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1},
        "model_lib": {"webgpu": f"{MODEL_ID}-webgpu.wasm"}, "required_features": [], "manifest": "tensor-manifest.json",
    }
    (m / "aae-chat-config.json").write_text(json.dumps(cfg))
    (m / f"{MODEL_ID}-webgpu.wasm").write_bytes(b"\0asm\x01\0\0\0")  # valid header, nothing inside
    return m


@pytest.fixture()
def site_server(tmp_path, web_dist):
    models = tmp_path / "models"
    _make_model(models)
    with start_server(REPO / "site", models, web_dist_dir=web_dist) as srv:
        yield srv


def _launch(p: Any, user_dir: Path, webgpu: bool) -> Any:
    return browser.launch(p, user_dir, "swiftshader" if webgpu else None)


def _load(page, srv, timeout=60_000) -> tuple[str, str]:
    page.goto(f"{srv.url}/?model={MODEL_ID}")
    page.wait_for_function("document.body.dataset.state === 'idle' && !document.querySelector('#load-btn').disabled", timeout=timeout)
    page.click("#load-btn")
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=timeout)
    return page.evaluate("document.body.dataset.state"), page.inner_text("#status")


def test_page_worker_cache_and_typed_errors(site_server, tmp_path, playwright):
    srv = site_server
    model_files = {f"/models/{MODEL_ID}/{f}" for f in ["aae-chat-config.json", "tensor-manifest.json", "tokenizer.json", "tokenizer_config.json", f"{MODEL_ID}-webgpu.wasm"]}
    ctx = _launch(playwright, tmp_path / "profile", webgpu=True)
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        state, status = _load(page, srv)
        assert errors == []
        # The page, the package and the worker were served with the right types.
        got = {e.path: e.status for e in srv.access_log.entries}
        assert got["/web/dist/index.js"] in (200, 304) and got["/worker.js"] == 200
        assert page.inner_text("#model-select") == MODEL_ID
        # The stub library cannot be instantiated: a typed error naming it, on the page.
        assert state == "error"
        assert status.startswith("ArtifactFormatError:"), status
        assert f"{MODEL_ID}-webgpu.wasm" in status
        assert model_files <= set(srv.access_log.paths())

        # Second load: every model file now comes from the Cache API.
        srv.access_log.clear()
        state, status = _load(page, srv)
        assert status.startswith("ArtifactFormatError:")
        fetched = [x for x in srv.access_log.paths() if x.startswith(f"/models/{MODEL_ID}/")]
        assert fetched == [], fetched

        # "Delete from cache" empties it: the next load downloads again.
        page.click("#delete-cache-btn")
        page.wait_for_function("document.querySelector('#progress-text').textContent.startsWith('Deleted')")
        srv.access_log.clear()
        _load(page, srv)
        assert model_files <= set(srv.access_log.paths())
    finally:
        ctx.close()


def test_without_webgpu_the_page_says_so(site_server, tmp_path, playwright):
    ctx = _launch(playwright, tmp_path / "profile", webgpu=False)
    try:
        page = ctx.new_page()
        has_adapter = page.evaluate("navigator.gpu ? navigator.gpu.requestAdapter().then(a => !!a) : false")
        if has_adapter:
            pytest.skip("this Chromium offers WebGPU even without --enable-unsafe-webgpu")
        state, status = _load(page, site_server)
        assert state == "error"
        assert status.startswith("WebGPUNotAvailableError:"), status
        shards = [x for x in site_server.access_log.paths() if x.endswith(".bin")]
        assert shards == [], "no shard is downloaded when the GPU is missing"
    finally:
        ctx.close()

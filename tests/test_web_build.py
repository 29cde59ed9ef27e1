"""`aae-web build` (build_web_model): a hostable folder registered in models.json, reused while its
inputs are unchanged, rebuilt when they change or a shard is damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from browser_support import web_models_dir  # noqa: F401  (fixture)
from sphere_aae.web.build import WEIGHTS_KEY, _stale, _weights_key, build_web_model


def test_build_registers_and_reuses(stories_dir: Path, web_models_dir: Path) -> None:
    folder = build_web_model(str(stories_dir), quantization="q0f32", output=web_models_dir, progress=False)
    config = json.loads((folder / "aae-chat-config.json").read_text())
    wasm = folder / config["model_lib"]["webgpu"]
    assert wasm.read_bytes()[:4] == b"\0asm"
    stamps = {p: p.stat().st_mtime_ns for p in [wasm, *sorted((folder / "params").iterdir())]}

    again = build_web_model(str(stories_dir), quantization="q0f32", output=web_models_dir, progress=False)
    assert again == folder
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "an unchanged model is not rebuilt"

    entry = {e["model_id"]: e for e in json.loads((web_models_dir / "models.json").read_text())}[config["model_id"]]
    assert entry["model_url"] == f"{folder.name}/"
    assert entry["wasm"] == wasm.name
    assert entry["weights_bytes"] == json.loads((folder / "tensor-manifest.json").read_text())["total_bytes"]


def test_staleness(stories_dir: Path, web_models_dir: Path, tmp_path: Path) -> None:
    folder = build_web_model(str(stories_dir), quantization="q0f32", output=web_models_dir, progress=False)
    key = _weights_key(stories_dir.resolve(), "q0f32")
    assert json.loads((folder / "aae-chat-config.json").read_text())[WEIGHTS_KEY] == key
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    assert not _stale(copy, "q0f32", key)
    assert _stale(copy, "q4f32_1", key), "another quantization"
    assert _stale(copy, "q0f32", "0" * 16), "other source files or converter code"
    shard = sorted((copy / "params").iterdir())[0]
    shard.write_bytes(shard.read_bytes()[:-64])
    assert _stale(copy, "q0f32", key), "a truncated shard"
    shard.unlink()
    assert _stale(copy, "q0f32", key), "a missing shard"

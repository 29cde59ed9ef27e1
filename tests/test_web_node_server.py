"""The Node server (web/dist/node-server.js, `aae-web-node`): the browser engine in Node on Dawn's
WebGPU (npm `webgpu`) over SwiftShader, behind an OpenAI-compatible HTTP API, with its model files
cached in a directory (FsStore).

On a freshly built stories260K q0f32 only: SwiftShader under Dawn is slow (about 20 s to load and
compile the kernels, a few tokens per second), too slow for bigger models in a test. Checks:

(a) the official `openai` clients against it: the JS one (web/scripts/openai-client-check.mjs: a
    chat completion and the same one streamed) and the Python one (completions with
    `return_token_ids` through extra_body, greedy and seeded-sampled, whose ids must equal the
    native engine's for the same requests);
(b) the file cache: a shard corrupted on disk (bytes flipped, size kept) is detected when the
    server starts again, dropped, fetched again and rewritten (GET /health's cache counters and
    load figures, the log line, the file's bytes), and the answers stay the same.

And `--device wasm` on SmolLM2-135M-Instruct q4f32_1: the CPU library, fast enough for a real
model (seconds), with npm `webgpu` made unimportable; greedy ids equal the native engine's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from browser_support import WEB, build, cpu_threads, web_dist, web_models_dir  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow]

SWIFTSHADER_ICD = Path("/usr/lib/chromium/vk_swiftshader_icd.json")
PROMPT = "Once upon a time"
REQUESTS: list[dict[str, Any]] = [
    {"prompt": PROMPT, "max_tokens": 16, "temperature": 0},
    {"prompt": PROMPT, "max_tokens": 16, "seed": 1234, "temperature": 0.9, "top_p": 0.9},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeServer:
    """dist/node-server.js on a model folder, as a subprocess, logs to files."""

    def __init__(self, folder: Path, cache_dir: Path, logs: Path, args: tuple[str, ...] = (), node_args: tuple[str, ...] = ()) -> None:
        node = shutil.which("node")
        assert node, "node is needed"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = logs.with_suffix(".out"), logs.with_suffix(".err")
        env = {**os.environ, "VK_ICD_FILENAMES": str(SWIFTSHADER_ICD)}
        cmd = [node, *node_args, str(WEB / "dist" / "node-server.js"), str(folder), "--port", str(self.port), "--cache-dir", str(cache_dir), *args]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(cmd, cwd=WEB, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + 600
        while "Serving " not in self.out.read_text():
            assert self.proc.poll() is None, f"the server exited ({self.proc.returncode}):\n{self.logs()}"
            assert time.monotonic() < deadline, f"the server did not start:\n{self.logs()}"
            time.sleep(0.5)

    def logs(self) -> str:
        return (self.out.read_text() + self.err.read_text())[-6000:]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def _serve(folder: Path, cache_dir: Path, logs: Path, args: tuple[str, ...] = (), node_args: tuple[str, ...] = ()) -> Iterator[NodeServer]:
    srv = NodeServer(folder, cache_dir, logs, args, node_args)
    try:
        yield srv
    finally:
        srv.stop()


def _python_client_ids(srv: NodeServer, model: str) -> list[dict[str, Any]]:
    from openai import OpenAI

    client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)
    out = []
    for body in REQUESTS:
        r = client.completions.create(model=model, extra_body={"return_token_ids": True}, **body).model_dump()
        out.append({"prompt": r["prompt_token_ids"], "ids": r["choices"][0]["token_ids"], "text": r["choices"][0]["text"]})
    return out


def _native_ids(stories_dir: Path) -> list[dict[str, Any]]:
    from sphere_aae.engine import SphereAaeEngine

    out = []
    with SphereAaeEngine(str(stories_dir), quantization="q0f32") as engine:
        for body in REQUESTS:
            r = engine.completions.create(**body, return_token_ids=True)
            out.append({"prompt": r.prompt_token_ids, "ids": r.choices[0].token_ids, "text": r.choices[0].text})
    return out


def test_node_server_with_openai_clients_and_file_cache(stories_dir: Path, web_models_dir: Path, web_dist: Path, tmp_path: Path) -> None:
    assert (WEB / "node_modules" / "webgpu").is_dir(), "npm `webgpu` is missing: run `npm ci` in web/ (make setup)"
    assert (WEB / "node_modules" / "openai").is_dir(), "npm `openai` is missing: run `npm ci` in web/ (make setup)"
    assert SWIFTSHADER_ICD.is_file(), f"{SWIFTSHADER_ICD} is missing (Debian's chromium package ships it)"
    index = (web_dist / "index.js").read_text()
    assert 'from"node:' not in index and 'from "node:' not in index, "the browser bundle must not import Node modules"

    # A private copy: other tests may rebuild the shared folder while this server reads it.
    folder = Path(shutil.copytree(build(stories_dir, "q0f32", web_models_dir), tmp_path / "stories260K-q0f32"))
    native = _native_ids(stories_dir)
    assert native[0]["ids"] != native[1]["ids"], "the sampled request must differ from the greedy one"
    cache = tmp_path / "cache"
    model = json.loads((folder / "aae-chat-config.json").read_text())["model_id"]

    # (a) first start: everything is downloaded (read from the folder) and cached.
    with _serve(folder, cache, tmp_path / "first") as srv:
        health = srv.get("/health")
        assert health["status"] == "ok" and health["model"] == model, health
        assert health["load"]["cached_bytes"] == 0 and health["load"]["total_bytes"] > 0, health
        assert health["cache"]["deletes"] == 0 and health["cache"]["writes"] >= 6, health  # config, manifest, tokenizer x2, wasm, shard(s)
        assert [m["id"] for m in srv.get("/v1/models")["data"]] == [model]

        p = subprocess.run(
            [shutil.which("node") or "node", "scripts/openai-client-check.mjs", srv.url + "/v1", PROMPT, "--max-tokens", "12"],
            cwd=WEB, capture_output=True, text=True, timeout=600,
        )
        assert p.returncode == 0, p.stdout + p.stderr + srv.logs()
        js = json.loads(p.stdout.strip().splitlines()[-1])
        assert js["model"] == model
        assert js["chat"]["content"] and js["chat"]["finish_reason"] in ("stop", "length"), js
        assert js["stream"]["content"] == js["chat"]["content"], js  # greedy: the stream says the same
        assert js["stream"]["finish_reason"] == js["chat"]["finish_reason"], js
        assert js["stream"]["chunks"] >= 3 and js["stream"]["usage"]["completion_tokens"] == js["chat"]["usage"]["completion_tokens"], js

        first = _python_client_ids(srv, model)
    for i, (got, want) in enumerate(zip(first, native)):
        assert got["prompt"] == want["prompt"], f"request {i}: prompt ids {got['prompt']} vs native {want['prompt']}"
        assert got["ids"] == want["ids"], f"request {i}: node server {got['ids']} vs native {want['ids']}"
        assert got["text"] == want["text"], i

    # (b) corrupt the cached shard on disk (same size), start again: dropped, refetched, rewritten.
    manifest = json.loads((folder / "tensor-manifest.json").read_text())
    shard = manifest["shards"][0]
    shard_name = shard["file"].replace("/", "_")
    cached = [f for f in (cache / "files").iterdir() if f.name.endswith("-" + shard_name)]
    assert len(cached) == 1, sorted(f.name for f in (cache / "files").iterdir())
    data = bytearray(cached[0].read_bytes())
    assert bytes(data) == (folder / shard["file"]).read_bytes()
    for off in (0, len(data) // 2, len(data) - 1):
        data[off] ^= 0xFF
    cached[0].write_bytes(bytes(data))
    assert cached[0].stat().st_size == shard["bytes"]

    with _serve(folder, cache, tmp_path / "second") as srv:
        health = srv.get("/health")
        c, load = health["cache"], health["load"]
        assert c["deletes"] == 1 and c["writes"] == 1, health  # only the corrupt shard was dropped and written again
        assert c["hits"] >= 5 and c["misses"] == 0, health  # every other file came from the cache
        assert load["cached_bytes"] == load["total_bytes"] - shard["bytes"], health
        assert "dropped 1" in srv.err.read_text(), srv.logs()
        assert cached[0].read_bytes() == (folder / shard["file"]).read_bytes(), "the cache file is rewritten with the good bytes"
        second = _python_client_ids(srv, model)
    assert [r["ids"] for r in second] == [r["ids"] for r in native]


# A Node resolve hook that refuses npm `webgpu`: the server must start without ever importing Dawn.
NO_DAWN_HOOKS = """export async function resolve(specifier, context, next) {
  if (specifier === "webgpu") throw new Error("npm webgpu (Dawn) must not be loaded with --device wasm");
  return next(specifier, context);
}
"""


def test_node_server_smollm2_on_the_cpu_library_without_dawn(web_models_dir: Path, web_dist: Path, tmp_path: Path) -> None:
    """`aae-web-node --device wasm` on SmolLM2-135M-Instruct q4f32_1: the model's CPU library
    (model_lib.wasm), with npm `webgpu` made unimportable, answers the Python openai client with
    the native engine's greedy ids."""
    from openai import OpenAI

    from sphere_aae.engine import SphereAaeEngine

    folder = Path(shutil.copytree(build("SmolLM2-135M-Instruct", "q4f32_1", web_models_dir), tmp_path / "SmolLM2-135M-Instruct-q4f32_1"))
    model = json.loads((folder / "aae-chat-config.json").read_text())["model_id"]
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    with SphereAaeEngine("SmolLM2-135M-Instruct", quantization="q4f32_1") as engine:
        r = engine.completions.create(**body, return_token_ids=True)
        native = {"prompt": r.prompt_token_ids, "ids": r.choices[0].token_ids, "text": r.choices[0].text}

    (tmp_path / "hooks.mjs").write_text(NO_DAWN_HOOKS)
    (tmp_path / "no-dawn.mjs").write_text(
        'import { register } from "node:module";\nregister(new URL("./hooks.mjs", import.meta.url));\n'
    )
    no_dawn = ("--import", (tmp_path / "no-dawn.mjs").as_uri())
    with _serve(folder, tmp_path / "cache", tmp_path / "wasm", ("--device", "wasm"), no_dawn) as srv:
        health = srv.get("/health")
        # Node has SharedArrayBuffer and worker_threads: every core the process may use.
        assert health["device"] == "wasm" and cpu_threads(health["adapter"]) == len(os.sched_getaffinity(0)), health
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        r = client.completions.create(model=model, extra_body={"return_token_ids": True}, **body).model_dump()
        got = {"prompt": r["prompt_token_ids"], "ids": r["choices"][0]["token_ids"], "text": r["choices"][0]["text"]}
        assert "Dawn" not in srv.err.read_text(), srv.logs()
    print(f"[node wasm] SmolLM2 q4f32_1: {got['text']!r}")
    assert got == native, (got, native)
    assert len(got["ids"]) == 8

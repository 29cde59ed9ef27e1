"""HF:// sources against a local fake Hugging Face Hub (the few endpoints snapshot_download uses).

The resolving runs in child processes with HF_ENDPOINT / HF_HOME set, the way a user's shell
would set them (huggingface_hub reads them at import), and the fake hub counts every request so
the test can prove that a cached model is resolved with no network call at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from conftest import STORIES
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from sphere_aae.hub import HubError, parse_hub_spec

REPO = "test-org/stories260K"
COMMIT = hashlib.sha1(b"stories260K fixture").hexdigest()  # any 40-hex string is a commit id
FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


class FakeHub:
    """Serves one model repo (the stories260K fixture) at one commit; logs each request."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/api/models/{org}/{name}", self.info),
                Route("/api/models/{org}/{name}/revision/{rev}", self.info),
                Route("/api/models/{org}/{name}/tree/{rev}", self.tree),
                Route("/{org}/{name}/resolve/{rev}/{path:path}", self.resolve, methods=["GET", "HEAD"]),
            ]
        )
        self.app.add_middleware(_Counter, hub=self)

    def _repo(self, request: Request) -> str | None:
        repo = f"{request.path_params['org']}/{request.path_params['name']}"
        return repo if repo == REPO else None

    @staticmethod
    def _not_found() -> Response:
        # hf_raise_for_status turns this header into RepositoryNotFoundError.
        return JSONResponse({"error": "Repository not found"}, status_code=404, headers={"X-Error-Code": "RepoNotFound"})

    async def info(self, request: Request) -> Response:
        if self._repo(request) is None:
            return self._not_found()
        return JSONResponse({"id": REPO, "sha": COMMIT, "private": False, "siblings": [{"rfilename": f} for f in FILES]})

    async def tree(self, request: Request) -> Response:
        if self._repo(request) is None:
            return self._not_found()
        entries = []
        for f in FILES:
            data = (self.folder / f).read_bytes()
            entries.append({"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()})
        return JSONResponse(entries)

    async def resolve(self, request: Request) -> Response:
        path = request.path_params["path"]
        if self._repo(request) is None:
            return self._not_found()
        if path not in FILES:
            return JSONResponse({"error": "Entry not found"}, status_code=404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        file = self.folder / path
        data = file.read_bytes()
        # What hf_hub_download reads from the HEAD: the commit, an ETag naming the content, the size.
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return Response(headers=headers)
        return FileResponse(file, headers=headers)


class _Counter:
    def __init__(self, app, hub: FakeHub) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.hub.requests.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def hub():
    fake = FakeHub(STORIES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    fake.endpoint = f"http://127.0.0.1:{port}"
    yield fake
    server.should_exit = True
    thread.join(timeout=10)


def resolve_in_child(spec: str, hf_home: Path, endpoint: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", **extra_env)
    code = (
        "import sys\n"
        "from sphere_aae.hub import resolve_hf, HubError\n"
        "try:\n"
        "    print('PATH=' + str(resolve_hf(sys.argv[1])))\n"
        "except HubError as e:\n"
        "    print('HUBERROR=' + str(e)); sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", code, spec], env=env, capture_output=True, text=True, timeout=120)


def resolved_path(proc: subprocess.CompletedProcess) -> Path:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith("PATH=")][-1]
    return Path(line[len("PATH=") :])


def test_parse_hub_spec():
    assert parse_hub_spec("HF://org/name") == parse_hub_spec("hf://org/name/")
    spec = parse_hub_spec("HF://org/name@v1.0/sub/model.gguf")
    assert (spec.repo_id, spec.revision, spec.filename) == ("org/name", "v1.0", "sub/model.gguf")
    for bad in ("HF://", "HF://org", "HF://org/", "HF://org/na me", "org/name"):
        with pytest.raises(HubError):
            parse_hub_spec(bad)


def test_download_then_offline_from_cache(hub, tmp_path):
    hf_home = tmp_path / "hf-home"
    first = resolve_in_child(f"HF://{REPO}", hf_home, hub.endpoint)
    folder = resolved_path(first)
    assert folder.is_relative_to(hf_home / "hub") and folder.name == COMMIT
    for f in FILES:
        assert (folder / f).read_bytes() == (STORIES / f).read_bytes(), f
    assert any(r.startswith("GET /api/models/") for r in hub.requests)
    assert sum(r.startswith("GET /test-org/stories260K/resolve/") for r in hub.requests) == len(FILES)

    # Second run: the cache answers; not a single request reaches the hub.
    before = len(hub.requests)
    assert resolved_path(resolve_in_child(f"HF://{REPO}", hf_home, hub.endpoint)) == folder
    assert hub.requests[before:] == []
    # Offline (and with the hub unreachable) the cache still answers.
    assert resolved_path(resolve_in_child(f"HF://{REPO}", hf_home, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")) == folder
    assert hub.requests[before:] == []


def test_single_file_source(hub, tmp_path):
    path = resolved_path(resolve_in_child(f"HF://{REPO}/config.json", tmp_path / "hf", hub.endpoint))
    assert path.name == "config.json" and json.loads(path.read_text())["model_type"] == "llama"


def test_errors_are_clear(hub, tmp_path):
    proc = resolve_in_child("HF://test-org/no-such-model", tmp_path / "hf", hub.endpoint)
    assert proc.returncode == 3 and "'test-org/no-such-model' not found" in proc.stdout
    proc = resolve_in_child(f"HF://{REPO}", tmp_path / "hf-empty", "http://127.0.0.1:9")
    assert proc.returncode == 3 and "unreachable" in proc.stdout and "not in the local cache" in proc.stdout


@pytest.mark.slow
def test_engine_runs_a_model_from_the_hub(hub, tmp_path):
    """HF://org/name through the pipeline (download, convert, compile) to generated text."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    code = (
        "from sphere_aae.engine import SphereAaeEngine\n"
        f"e = SphereAaeEngine('HF://{REPO}', quantization='q0f32')\n"
        "print('TEXT=' + e.completions.create(prompt='Once upon a time', temperature=0, max_tokens=10).choices[0].text)\n"
        "e.terminate()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TEXT=, there was a little girl named Lily" in proc.stdout

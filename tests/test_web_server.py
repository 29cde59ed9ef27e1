"""`aae-web serve` (sphere_aae.web.server) against a real uvicorn on 127.0.0.1, driven by httpx.

Raw sockets are used where httpx would normalise the URL (path traversal attempts).
"""

from __future__ import annotations

import inspect
import json
import os
import socket
from pathlib import Path

import httpx
import pytest

from sphere_aae.web import server as web_server
from sphere_aae.web import list_models, safe_join, start_server

SECRET = "top-secret-do-not-serve"
SHARD = bytes(range(256)) * 4  # 1024 bytes


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    """site/, web/dist/, models/<id>/ (with a shard and a wasm), plus a secret outside all roots."""
    (tmp_path / "secret.txt").write_text(SECRET)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>AAE</title>")
    (site / "app.js").write_text("export const x = 1;\n")
    (site / "style.css").write_text("body{}")
    (site / "sub").mkdir()
    (site / "sub" / "index.html").write_text("sub index")
    (site / ".hidden").write_text(SECRET)
    dist = tmp_path / "web" / "dist"
    dist.mkdir(parents=True)
    (dist / "index.js").write_text("export {};\n")
    models = tmp_path / "models"
    m = models / "tiny-q0f32"
    (m / "params").mkdir(parents=True)
    (m / "params" / "shard-00000.bin").write_bytes(SHARD)
    (m / "tiny-q0f32-webgpu.wasm").write_bytes(b"\0asm\1\0\0\0")
    (m / "tokenizer.json").write_text("{}")
    (m / "aae-chat-config.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "model_id": "tiny-q0f32",
                "model_type": "llama",
                "quantization": "q0f32",
                "context_window_size": 512,
                "chat_template": None,
                "required_features": [],
                "model_lib": {"webgpu": "tiny-q0f32-webgpu.wasm"},
                "manifest": "tensor-manifest.json",
            }
        )
    )
    (m / "tensor-manifest.json").write_text(json.dumps({"format_version": 1, "total_bytes": len(SHARD), "shards": [{"file": "params/shard-00000.bin", "bytes": len(SHARD), "sha256": "0" * 64}], "tensors": []}))
    (models / "not-a-model").mkdir()
    (models / "not-a-model" / "readme.txt").write_text("no config here")
    (models / "broken").mkdir()
    (models / "broken" / "aae-chat-config.json").write_text("{nope")
    # A symlink inside a served root that points outside it must not be followed out.
    os.symlink(tmp_path / "secret.txt", site / "escape.txt")
    return {"root": tmp_path, "site": site, "dist": dist, "models": models}


@pytest.fixture()
def srv(tree):
    with start_server(tree["site"], tree["models"], access_log_path=tree["root"] / "access.jsonl") as s:
        yield s


def raw_get(srv, path: str) -> tuple[int, bytes]:
    """GET with the path sent byte-for-byte (no client-side normalisation)."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {srv.host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def test_loopback_by_default(srv):
    assert inspect.signature(web_server.serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(web_server.serve).parameters["port"].default == 8080
    assert srv.host == "127.0.0.1"
    assert srv.url.startswith("http://127.0.0.1:")


def test_routes_and_mime_types(srv):
    with httpx.Client(base_url=srv.url) as c:
        cases = {
            "/": "text/html; charset=utf-8",
            "/index.html": "text/html; charset=utf-8",
            "/app.js": "text/javascript; charset=utf-8",
            "/style.css": "text/css; charset=utf-8",
            "/web/dist/index.js": "text/javascript; charset=utf-8",
            "/models/tiny-q0f32/tiny-q0f32-webgpu.wasm": "application/wasm",
            "/models/tiny-q0f32/aae-chat-config.json": "application/json",
            "/models/tiny-q0f32/params/shard-00000.bin": "application/octet-stream",
            "/models/models.json": "application/json",
        }
        for path, mime in cases.items():
            r = c.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"] == mime, path
        assert c.get("/models/tiny-q0f32/params/shard-00000.bin").content == SHARD
        assert c.get("/sub/").text == "sub index"
        r = c.get("/sub", follow_redirects=False)
        assert r.status_code == 301 and r.headers["location"] == "/sub/"
        assert c.get("/nope.html").status_code == 404
        assert c.get("/models/tiny-q0f32/").status_code == 404, "no directory listings"
        assert c.get("/models/tiny-q0f32/params").status_code == 404


def test_models_json(srv, tree):
    with httpx.Client(base_url=srv.url) as c:
        models = c.get("/models/models.json").json()
    by_id = {m["model_id"]: m for m in models}
    assert set(by_id) == {"tiny-q0f32", "broken"}
    tiny = by_id["tiny-q0f32"]
    assert tiny["model_url"] == "tiny-q0f32/"  # relative to models.json, as aae-web build writes it
    assert tiny["quantization"] == "q0f32"
    assert tiny["context_window_size"] == 512
    assert tiny["has_webgpu_lib"] is True
    assert tiny["weights_bytes"] == len(SHARD)
    assert tiny["wasm"] == "tiny-q0f32-webgpu.wasm"
    assert tiny["num_shards"] == 1
    assert "error" in by_id["broken"]
    assert list_models(tree["root"] / "does-not-exist") == []


def test_range_requests(srv):
    url = "/models/tiny-q0f32/params/shard-00000.bin"
    with httpx.Client(base_url=srv.url) as c:
        r = c.get(url, headers={"Range": "bytes=10-19"})
        assert r.status_code == 206
        assert r.content == SHARD[10:20]
        assert r.headers["content-range"] == f"bytes 10-19/{len(SHARD)}"
        assert r.headers["content-length"] == "10"
        r = c.get(url, headers={"Range": "bytes=-5"})
        assert r.status_code == 206 and r.content == SHARD[-5:]
        r = c.get(url, headers={"Range": "bytes=1000-"})
        assert r.status_code == 206 and r.content == SHARD[1000:]
        r = c.get(url, headers={"Range": f"bytes={len(SHARD) + 10}-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{len(SHARD)}"
        r = c.get(url)
        assert r.headers["accept-ranges"] == "bytes"


def test_cache_headers_and_conditional_requests(srv):
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/models/tiny-q0f32/params/shard-00000.bin").headers["cache-control"] == "no-store"
        assert c.get("/models/models.json").headers["cache-control"] == "no-store"
        r = c.get("/models/tiny-q0f32/tiny-q0f32-webgpu.wasm")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-content-type-options"] == "nosniff"
        etag = r.headers["etag"]
        r2 = c.get("/models/tiny-q0f32/tiny-q0f32-webgpu.wasm", headers={"If-None-Match": etag})
        assert r2.status_code == 304 and r2.content == b""
        assert c.get("/index.html", headers={"If-None-Match": '"other"'}).status_code == 200


def test_head(srv):
    with httpx.Client(base_url=srv.url) as c:
        r = c.head("/models/tiny-q0f32/params/shard-00000.bin")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(SHARD))
    assert r.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/models/../secret.txt",
        "/models/%2e%2e/secret.txt",
        "/models/tiny-q0f32/%2e%2e/%2e%2e/secret.txt",
        "/models/..%2fsecret.txt",
        "/models/tiny-q0f32/..%2f..%2fsecret.txt",
        "/web/dist/%2e%2e/%2e%2e/secret.txt",
        "/web/dist/..%5c..%5csecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/escape.txt",
        "/.hidden",
        "/models/tiny-q0f32/%00.json",
        "//etc/passwd",
        "/models//etc/passwd",
    ],
)
def test_no_path_traversal(srv, path):
    status, body = raw_get(srv, path)
    assert status in (400, 404), (path, status)
    assert SECRET.encode() not in body
    assert b"root:" not in body


def test_safe_join(tmp_path: Path):
    assert safe_join(tmp_path, "a/b.txt") == (tmp_path / "a" / "b.txt").resolve()
    assert safe_join(tmp_path, "") == tmp_path.resolve()
    for bad in ["../x", "a/../../x", "a\\..\\x", "../passwd", ".git/config", "C:/x", "x\x00y"]:
        assert safe_join(tmp_path, bad) is None, bad


def test_access_log(srv, tree):
    srv.access_log.clear()
    with httpx.Client(base_url=srv.url) as c:
        c.get("/models/tiny-q0f32/params/shard-00000.bin", headers={"Range": "bytes=0-9"})
        c.get("/missing.js")
        c.head("/index.html")
    entries = srv.access_log.entries
    assert [(e.method, e.path, e.status) for e in entries] == [
        ("GET", "/models/tiny-q0f32/params/shard-00000.bin", 206),
        ("GET", "/missing.js", 404),
        ("HEAD", "/index.html", 200),
    ]
    assert entries[0].range == "bytes=0-9" and entries[0].bytes == 10
    assert srv.access_log.paths() == ["/models/tiny-q0f32/params/shard-00000.bin", "/missing.js"]
    # The same records as JSON lines, for a test running in another process.
    lines = [json.loads(x) for x in (tree["root"] / "access.jsonl").read_text().splitlines()]
    assert [x["path"] for x in lines][-3:] == ["/models/tiny-q0f32/params/shard-00000.bin", "/missing.js", "/index.html"]


def test_cli_arguments():
    import argparse

    p = argparse.ArgumentParser()
    web_server.add_serve_arguments(p)
    a = p.parse_args(["--port", "9000", "--quiet"])
    assert a.host == "127.0.0.1" and a.port == 9000 and a.quiet
    assert a.site_dir.name == "site" and a.models_dir.name == "models"


def test_defaults_point_at_the_repo():
    repo = Path(__file__).resolve().parents[1]
    with start_server() as s:  # what `aae-web serve` with no folders uses
        assert s.app.state.site_dir == (repo / "site").resolve()
        assert s.app.state.models_dir == (repo / "models").resolve()
        assert s.app.state.web_dist_dir == (repo / "web" / "dist").resolve()
        assert httpx.get(s.url + "/models/models.json").status_code == 200

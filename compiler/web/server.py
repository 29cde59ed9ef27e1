"""`aae-web serve`: a small static server for the demo site, the web package and model folders.

Routes
    /                       -> site_dir (index.html for directories)
    /web/dist/...           -> the built npm package (web/dist)
    /models/models.json     -> generated list of the model folders under models_dir
    /models/<model-id>/...  -> models_dir/<model-id>/...

Why not starlette's StaticFiles: this server also has to get MIME types right for wasm and ES
modules regardless of the host's mimetypes table, send cache headers suited to model shards,
answer conditional requests (304) so a browser's revalidation is visible but cheap, and keep an
access log a test can read to prove that a second page load fetched no shard.

Byte ranges (206 / 416) come from starlette's FileResponse.

Every response makes the page cross-origin isolated (COOP same-origin + COEP require-corp): only
then may a page share memory with workers, which the CPU library's compute threads need
(web/src/wasm_threads.ts). Everything here is same-origin, and the engine fetches models from
other origins with CORS, which require-corp allows.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("aae.web")

CHAT_CONFIG = "aae-chat-config.json"
MANIFEST = "tensor-manifest.json"

# Explicit table: Python's mimetypes reads /etc/mime.types, which on some hosts lacks .wasm or maps
# .js to application/javascript; browsers require application/wasm for instantiateStreaming and a
# JavaScript MIME type for module scripts and module workers.
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".bin": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".ts": "text/plain; charset=utf-8",  # sources served for reading, never as modules
    ".model": "application/octet-stream",
}


def mime_type(path: Path) -> str:
    return MIME_TYPES.get(path.suffix.lower(), "application/octet-stream")


def cache_control(url_path: str) -> str:
    """Cache-Control for a served path.

    Everything is revalidated (`no-cache` + ETag -> cheap 304s) so a rebuilt model or package is
    picked up on reload. Shards are `no-store`: the engine keeps them in the Cache API itself, and
    letting the HTTP cache hold a second copy of a multi-GB model would only waste disk.
    """
    if url_path.startswith("/models/") and url_path.endswith(".bin"):
        return "no-store"
    if url_path == "/models/models.json":
        return "no-store"
    return "no-cache"


# --------------------------------------------------------------------------------------------
# Access log


@dataclass
class AccessLogEntry:
    time: float
    method: str
    path: str
    status: int
    bytes: int
    range: str | None = None
    client: str | None = None


@dataclass
class AccessLog:
    """Every request the server answered, newest last (bounded), plus an optional JSON-lines file.

    Tests read `entries` (same process) or the file (another process) to prove what a browser
    fetched, e.g. that a second load of a model requested no `.bin` shard.
    """

    maxlen: int = 100_000
    path: Path | None = None
    echo: bool = False
    _entries: deque = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, entry: AccessLogEntry) -> None:
        with self._lock:
            self._entries.append(entry)
            while len(self._entries) > self.maxlen:
                self._entries.popleft()
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(asdict(entry)) + "\n")
        if self.echo:
            rng = f" range={entry.range}" if entry.range else ""
            log.info("%s %s %d %dB%s", entry.method, entry.path, entry.status, entry.bytes, rng)

    @property
    def entries(self) -> list[AccessLogEntry]:
        with self._lock:
            return list(self._entries)

    def paths(self, method: str | None = "GET") -> list[str]:
        return [e.path for e in self.entries if method is None or e.method == method]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class AccessLogMiddleware:
    """Records method, path, final status and body bytes of every HTTP response."""

    def __init__(self, app: ASGIApp, access_log: AccessLog) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        nbytes = 0
        logged = False

        def record() -> None:
            nonlocal logged
            logged = True
            headers = dict(scope.get("headers") or [])
            rng = headers.get(b"range")
            client = scope.get("client")
            self.access_log.add(
                AccessLogEntry(
                    time=time.time(),
                    method=scope["method"],
                    path=scope["path"],
                    status=status or 500,
                    bytes=nbytes,
                    range=rng.decode("latin-1") if rng else None,
                    client=f"{client[0]}:{client[1]}" if client else None,
                )
            )

        async def wrapped_send(message: Message) -> None:
            nonlocal status, nbytes
            if message["type"] == "http.response.start":
                status = message["status"]
                # Bodiless answers may never send a body message: record them now.
                if scope["method"] == "HEAD" or status in (204, 304):
                    record()
            elif message["type"] == "http.response.body":
                nbytes += len(message.get("body", b""))
                # Record before the last bytes go out: once a client has the whole response,
                # the entry is already there for whoever reads the log next.
                if not message.get("more_body", False) and not logged:
                    record()
            await send(message)

        try:
            await self.app(scope, receive, wrapped_send)
        finally:
            if not logged:  # the app failed or the client went away mid-response
                record()


# --------------------------------------------------------------------------------------------
# Path safety


def safe_join(root: Path, rel: str) -> Path | None:
    """`root/rel` if `rel` names something inside `root`, else None.

    The check is on the decoded path's segments (no "..", no absolute paths, no backslashes or NUL,
    no dotfiles such as .git), then on the resolved location, so neither `%2e%2e/` nor a symlink
    inside the folder pointing elsewhere escapes it.
    """
    if "\x00" in rel or "\\" in rel:
        return None
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." or p.startswith(".") for p in parts):
        return None
    if parts and (":" in parts[0]):  # Windows drive letters, URL schemes
        return None
    root_resolved = root.resolve()
    candidate = root_resolved.joinpath(*parts) if parts else root_resolved
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError):
        return None
    if resolved != root_resolved and root_resolved not in resolved.parents:
        return None
    return resolved


# --------------------------------------------------------------------------------------------
# models.json


def list_models(models_dir: Path) -> list[dict[str, Any]]:
    """One entry per folder under `models_dir` holding an aae-chat-config.json.

    Same fields as the models.json that `aae-web build` writes (model_url relative to models.json,
    so `<dir>/`), plus a few the demo's picker shows. A folder whose config does not parse is listed
    with an `error`, so the page can say why it cannot load it rather than silently hiding it.
    """
    out: list[dict[str, Any]] = []
    if not models_dir.is_dir():
        return out
    for d in sorted(models_dir.iterdir(), key=lambda p: p.name):
        cfg_path = d / CHAT_CONFIG
        if d.name.startswith(".") or not d.is_dir() or not cfg_path.is_file():
            continue
        entry: dict[str, Any] = {"model_id": d.name, "model_url": f"{d.name}/"}
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            if not isinstance(cfg, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            entry["error"] = f"{CHAT_CONFIG} is not valid JSON: {e}"
            out.append(entry)
            continue
        entry["model_id"] = cfg.get("model_id") or d.name
        for key in ("quantization", "model_type", "required_features", "context_window_size", "format_version"):
            if key in cfg:
                entry[key] = cfg[key]
        lib = (cfg.get("model_lib") or {}).get("webgpu")
        if lib:
            entry["wasm"] = lib
        entry["has_webgpu_lib"] = bool(lib) and (d / lib).is_file()
        cpu_lib = (cfg.get("model_lib") or {}).get("wasm")  # the CPU fallback (compile --device wasm)
        entry["has_cpu_lib"] = bool(cpu_lib) and (d / cpu_lib).is_file()
        entry["has_chat_template"] = bool(cfg.get("chat_template"))
        try:
            man = json.loads((d / (cfg.get("manifest") or MANIFEST)).read_text(encoding="utf-8"))
            entry["weights_bytes"] = man.get("total_bytes")
            entry["num_shards"] = len(man.get("shards") or [])
        except (OSError, ValueError, AttributeError):
            pass
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------------
# App


def _is_not_modified(request: Request, etag: str | None) -> bool:
    inm = request.headers.get("if-none-match")
    if not inm or not etag:
        return False
    tags = [t.strip() for t in inm.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


def _file_response(request: Request, path: Path, url_path: str) -> Response:
    stat = path.stat()
    headers = {
        "Cache-Control": cache_control(url_path),
        "X-Content-Type-Options": "nosniff",
    }
    resp = FileResponse(path, media_type=mime_type(path), headers=headers, stat_result=stat)
    etag = resp.headers.get("etag")
    if _is_not_modified(request, etag) and "range" not in request.headers:
        not_modified = Response(status_code=304, headers={"ETag": etag or "", "Cache-Control": headers["Cache-Control"]})
        return not_modified
    return resp


def _not_found(what: str = "Not Found") -> Response:
    return PlainTextResponse(what, status_code=404, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


# Headers that make a page cross-origin isolated (see the module docstring).
ISOLATION_HEADERS: dict[str, str] = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}


class IsolationHeadersMiddleware:
    """Adds ISOLATION_HEADERS to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in ISOLATION_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.raw]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _serve_from(root: Path, rel: str, url_path: str, request: Request, index: bool) -> Response:
    target = safe_join(root, rel)
    if target is None:
        return _not_found()
    if target.is_dir():
        if not index:
            return _not_found()
        # Directory URLs must end in "/" so relative links in index.html resolve inside it.
        if not url_path.endswith("/"):
            return Response(status_code=301, headers={"Location": url_path + "/"})
        target = target / "index.html"
    if not target.is_file():
        return _not_found()
    return _file_response(request, target, url_path)


def create_app(
    site_dir: str | os.PathLike[str],
    models_dir: str | os.PathLike[str],
    web_dist_dir: str | os.PathLike[str] | None = None,
    *,
    access_log: AccessLog | None = None,
) -> Starlette:
    """The ASGI app. `app.state.access_log` is the AccessLog; `app.state.{site,models,web_dist}_dir`."""
    site = Path(site_dir).resolve()
    models = Path(models_dir).resolve()
    dist = Path(web_dist_dir).resolve() if web_dist_dir is not None else (site.parent / "web" / "dist").resolve()
    alog = access_log if access_log is not None else AccessLog()

    async def models_json(request: Request) -> Response:
        return JSONResponse(list_models(models), headers={"Cache-Control": "no-store"})

    async def model_file(request: Request) -> Response:
        return _serve_from(models, request.path_params["path"], request.url.path, request, index=False)

    async def web_file(request: Request) -> Response:
        return _serve_from(dist, request.path_params["path"], request.url.path, request, index=False)

    async def site_file(request: Request) -> Response:
        return _serve_from(site, request.path_params.get("path", ""), request.url.path, request, index=True)

    methods = ["GET", "HEAD"]
    routes = [
        Route("/models/models.json", models_json, methods=methods),
        Route("/models/{path:path}", model_file, methods=methods),
        Route("/web/dist/{path:path}", web_file, methods=methods),
        Route("/", site_file, methods=methods),
        Route("/{path:path}", site_file, methods=methods),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(AccessLogMiddleware, access_log=alog)
    app.add_middleware(IsolationHeadersMiddleware)
    app.state.access_log = alog
    app.state.site_dir = site
    app.state.models_dir = models
    app.state.web_dist_dir = dist
    return app


def _repo_root() -> Path:
    # compiler/web/server.py -> repo root (an editable install keeps the repo layout).
    return Path(__file__).resolve().parents[2]


def _default_site(site_dir: str | os.PathLike[str] | None) -> Path:
    return Path(site_dir) if site_dir is not None else _repo_root() / "site"


def _default_models(models_dir: str | os.PathLike[str] | None) -> Path:
    return Path(models_dir) if models_dir is not None else _repo_root() / "models"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _uvicorn_config(app: Starlette, host: str, port: int, log_requests: bool):
    import uvicorn

    # uvicorn's own access log is off: ours records the same and more (bytes, ranges).
    return uvicorn.Config(app, host=host, port=port, log_level="info" if log_requests else "warning", access_log=False, lifespan="off")


def serve(
    site_dir: str | os.PathLike[str] | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_requests: bool = True,
    *,
    web_dist_dir: str | os.PathLike[str] | None = None,
    access_log_path: str | os.PathLike[str] | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C). Loopback only by default; any other host is announced.

    site_dir defaults to the repo's site/, models_dir to the repo's models/, web_dist_dir to
    <site_dir>/../web/dist. log_requests: print one line per request. access_log_path: also append
    every request as a JSON line there.
    """
    import uvicorn

    if log_requests:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not _is_loopback(host):
        log.warning("aae-web serve: listening on %s, reachable from other machines (default is 127.0.0.1)", host)
    alog = AccessLog(path=Path(access_log_path) if access_log_path else None, echo=log_requests)
    app = create_app(_default_site(site_dir), _default_models(models_dir), web_dist_dir, access_log=alog)
    if not (app.state.web_dist_dir / "index.js").is_file():
        log.warning("aae-web serve: %s/index.js missing; build the package: (cd web && npm ci && npm run build)", app.state.web_dist_dir)
    n = len(list_models(app.state.models_dir))
    print(f"aae-web: http://{host}:{port}/  (site {app.state.site_dir}, {n} model(s) in {app.state.models_dir})", flush=True)
    uvicorn.Server(_uvicorn_config(app, host, port, log_requests)).run()


class RunningServer:
    """A server on a background thread (tests, notebooks). Use as a context manager or call stop()."""

    def __init__(
        self,
        site_dir: str | os.PathLike[str] | None = None,
        models_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        web_dist_dir: str | os.PathLike[str] | None = None,
        access_log_path: str | os.PathLike[str] | None = None,
        log_requests: bool = False,
    ) -> None:
        import uvicorn

        self.access_log = AccessLog(path=Path(access_log_path) if access_log_path else None, echo=log_requests)
        self.app = create_app(_default_site(site_dir), _default_models(models_dir), web_dist_dir, access_log=self.access_log)
        # Bind here, before the thread starts, so port=0 picks a free port with no race and the
        # URL is known as soon as the constructor returns.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host = host
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(self.app, host, self.port, log_requests))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True, name="aae-web-serve")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("aae-web server failed to start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(site_dir=None, models_dir=None, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> RunningServer:
    """Start a server on a background thread; returns it (`.url`, `.access_log`, `.stop()`)."""
    return RunningServer(site_dir, models_dir, host, port, **kwargs)


# --------------------------------------------------------------------------------------------
# CLI


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `aae-web serve`, for the project's CLI to mount as a subcommand."""
    root = _repo_root()
    parser.add_argument("--site-dir", type=Path, default=root / "site", help="demo site folder (default: %(default)s)")
    parser.add_argument("--models-dir", type=Path, default=root / "models", help="folder of built model folders (default: %(default)s)")
    parser.add_argument("--web-dist", type=Path, default=None, help="built web package (default: <site-dir>/../web/dist)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="do not print a line per request")
    parser.add_argument("--access-log", type=Path, default=None, help="append every request as a JSON line to this file")


def run_from_args(args: argparse.Namespace) -> int:
    serve(
        args.site_dir,
        args.models_dir,
        host=args.host,
        port=args.port,
        log_requests=not args.quiet,
        web_dist_dir=args.web_dist,
        access_log_path=args.access_log,
    )
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aae-web serve", description="Serve the demo site, the web package and built models.")
    add_serve_arguments(parser)
    return run_from_args(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    sys.exit(main())

"""OpenAI-compatible HTTP server over `AsyncSphereAaeEngine`.

Routes: POST /v1/chat/completions, POST /v1/completions (both stream over server-sent events
when `"stream": true`), GET /v1/models, GET /health. Errors are OpenAI error objects with a 4xx
status for the client's mistakes (bad JSON, bad fields, prompt past the context window) and 500
for the engine's. A client that disconnects cancels its generation: streams are cancelled by
Starlette's disconnect listener; non-streaming requests are watched for a disconnect while they
wait, so an abandoned request stops taking decode slots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..engine import DEFAULT_MODEL, AsyncSphereAaeEngine, AsyncStream
from ..protocol import RequestError

logger = logging.getLogger("sphere_aae.serve")


def _error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status)


def _sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode("utf-8")


async def _sse_events(stream: AsyncStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield _sse(chunk.model_dump())
    except RequestError as exc:
        yield _sse(exc.to_dict())
    except Exception as exc:  # the engine failed mid-stream; headers are sent, so say it in-band
        logger.exception("generation failed")
        yield _sse({"error": {"message": f"generation failed: {exc}", "type": "server_error", "param": None, "code": None}})
    finally:
        # On a client disconnect Starlette cancels this generator; closing the engine stream
        # cancels the request and frees its KV sequence.
        await stream.aclose()
    yield b"data: [DONE]\n\n"


class _ClientGone(Exception):
    """The client disconnected before its (non-streaming) response was ready."""


async def _until_disconnect(request: Request, work: "asyncio.Future[Any]") -> Any:
    """Await `work`, cancelling it (which cancels the engine request) if the client disconnects
    first. Call only after the body was read: this consumes the request's receive channel."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            work.cancel()
            raise _ClientGone()
        return work.result()
    finally:
        watcher.cancel()
        if not work.done():  # we were cancelled ourselves (server shutdown)
            work.cancel()


def create_app(engine: AsyncSphereAaeEngine, *, terminate_on_shutdown: bool = False, allow_origins: list[str] | None = None) -> Starlette:
    """The Starlette app serving `engine`. `terminate_on_shutdown` ends the engine with the app."""

    async def run(request: Request, kind: str) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"We could not parse the JSON body of your request: {exc}. The body must be a JSON object.")
        try:
            result = await _until_disconnect(request, asyncio.ensure_future(engine.create_from_body(kind, body)))
        except RequestError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status_code)
        except _ClientGone:
            return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
        except Exception as exc:
            logger.exception("request failed")
            return _error(500, f"The server failed to run the request: {exc}", type="server_error")
        if isinstance(result, AsyncStream):
            return StreamingResponse(
                _sse_events(result),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return JSONResponse(result.model_dump())

    async def chat_completions(request: Request) -> Response:
        return await run(request, "chat")

    async def completions(request: Request) -> Response:
        return await run(request, "completion")

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": engine.model_id, "object": "model", "created": started, "owned_by": "sphere_aae"}]}
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": engine.model_id, "active_sequences": engine.active_sequences})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"Unknown endpoint {request.method} {request.url.path}.", 405: f"Method {request.method} is not allowed on {request.url.path}."}
        return _error(exc.status_code, message.get(exc.status_code, str(exc.detail)), code=str(exc.status_code))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if terminate_on_shutdown:
                await asyncio.to_thread(engine.terminate)

    started = int(time.time())
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    if allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=allow_origins, allow_methods=["*"], allow_headers=["*"])
    return app


def serve(
    model: str = DEFAULT_MODEL,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    quantization: str | None = None,
    model_lib: str | Path | None = None,
    overrides: str | Mapping[str, Any] | None = None,
    allow_origins: list[str] | None = None,
    log_level: str = "info",
    chat_template: str | None = None,
) -> None:
    """Load `model` and serve it until interrupted (Ctrl-C)."""
    import uvicorn

    engine = AsyncSphereAaeEngine(model, device=device, quantization=quantization, model_lib=model_lib, overrides=overrides,
                                  chat_template=chat_template)
    app = create_app(engine, terminate_on_shutdown=True, allow_origins=allow_origins)
    print(f"Serving {engine.model_id} on http://{host}:{port}/v1 (OpenAI-compatible)", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        engine.terminate()

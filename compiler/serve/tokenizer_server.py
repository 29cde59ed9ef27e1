"""A tokenizer-only HTTP server for device runtimes that carry no tokenizer of their own.

`sphere_aae tokenizer-server MODEL` serves the tokenizer and chat template of MODEL exactly as the
native engine uses them (its `TextTokenizer` and `ChatTemplate`, fed from the same chat config and
tokenizer files), so a runtime that asks this server for prompt ids prefills what the engine would.
No TVM library and no weights are loaded: a built model folder needs only its aae-chat-config.json
and tokenizer files; any other MODEL (catalog name, HF folder, .gguf, llama2.c .bin) has its chat
config generated into a temporary folder by the same `gen_config` the engine's conversion runs.

Routes (JSON in and out; errors are `{"error": {"message", "type", "param", "code"}}` with a 4xx):

    GET  /v1/info                   model id, vocab size, BOS/EOS/PAD/UNK ids and text, add_bos,
                                    special tokens, chat template
    POST /v1/encode                 {"text", "add_special_tokens"?: true} -> {"ids", "count"}
    POST /v1/decode                 {"ids", "skip_special_tokens"?: true} -> {"text"}
    POST /v1/apply-chat-template    {"messages", "add_generation_prompt"?: true} -> {"text", "ids", "count"}
    GET  /health                    {"status": "ok", "model"}

and the routes the Axera Pulsar2 / ax-llm demo runtimes call on their tokenizer server:

    GET  /bos_id  -> {"bos_id"}     GET /eos_id -> {"eos_id"}     (-1 when the model has none)
    POST /encode  {"text"} or {"messages", "add_generation_prompt"?} -> {"token_ids", "len"}
                  (text is one user turn rendered through the chat template, as ax-llm's servers do)
    POST /decode  {"token_ids"} -> {"text"}
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..artifact import CHAT_CONFIG, read_chat_config  # stdlib only: no TVM
from ..protocol import RequestError, _bad_type, _boolean, _check_fields, _integer, _messages, _string
from ..template import ChatTemplate
from ..tokenizer import TextTokenizer

DEFAULT_PORT = 12345  # the port the ax-llm demo scripts use for their tokenizer server
MAX_BODY_BYTES = 16 * 1024 * 1024  # a prompt of a few million tokens; more is a mistake or abuse
logger = logging.getLogger("sphere_aae.tokenizer_server")


@dataclass
class TokenizerService:
    """What the engine knows about tokens, without the engine: tokenizer, template and config."""

    model_id: str
    config: dict[str, Any]
    tokenizer: TextTokenizer
    template: ChatTemplate
    vocab_size: int  # one past the highest id the tokenizer can decode

    @classmethod
    def from_model_dir(cls, model_dir: Path, config: Mapping[str, Any]) -> "TokenizerService":
        if not (Path(model_dir) / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{model_dir} has no tokenizer.json; rebuild it with `sphere_aae gen_config`")
        tok = TextTokenizer(Path(model_dir), config)  # reads the files now; the folder may go away
        template = ChatTemplate(config.get("chat_template"), tok.special_tokens)
        vocab_size = max(tok.tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        model_id = str(config.get("model_id") or Path(model_dir).name)
        return cls(model_id=model_id, config=dict(config), tokenizer=tok, template=template, vocab_size=vocab_size)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        # add_special_tokens means what the engine does to a prompt: BOS when the config says so.
        return self.tokenizer.encode(text, add_bos=None if add_special_tokens else False)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> tuple[str, list[int]]:
        """The rendered prompt and the ids the engine would prefill for it."""
        text = self.template.render(messages, add_generation_prompt=add_generation_prompt)
        return text, self.tokenizer.encode(text)

    def token_text(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.tokenizer.tokenizer.id_to_token(token_id)

    def info(self) -> dict[str, Any]:
        tok, cfg = self.tokenizer, self.config
        eos_ids = list(cfg.get("eos_token_ids") or [])  # config order: the model's own EOS first
        pad_id, unk_text = cfg.get("pad_token_id"), tok.special_tokens.get("unk_token") or None
        added = tok.tokenizer.get_added_tokens_decoder()
        return {
            "model": self.model_id,
            "vocab_size": self.vocab_size,
            "model_vocab_size": (cfg.get("model_config") or {}).get("vocab_size"),
            "bos_token_id": tok.bos_token_id, "bos_token": self.token_text(tok.bos_token_id),
            "add_bos_token": tok.add_bos_token,
            "eos_token_id": eos_ids[0] if eos_ids else None, "eos_token_ids": eos_ids,
            "eos_token": self.token_text(eos_ids[0]) if eos_ids else None,
            "pad_token_id": pad_id, "pad_token": self.token_text(pad_id),
            "unk_token_id": tok.tokenizer.token_to_id(unk_text) if unk_text else None, "unk_token": unk_text,
            "special_tokens": [{"id": i, "text": t.content} for i, t in sorted(added.items()) if t.special],
            "context_window_size": cfg.get("context_window_size"),
            "has_chat_template": not self.template.is_fallback,
            "chat_template": None if self.template.is_fallback else self.template.source,
        }


def _service_from_source(path: Path, quantization: str | None) -> TokenizerService:
    """A source model (HF folder, .gguf, llama2.c .bin): its chat config as the engine's
    conversion would write it, generated (tokenizer files and config only) in a temp folder."""
    from ..gen_config import gen_config
    from ..loaders import load_source
    from ..pipeline import DEFAULT_QUANTIZATION, default_model_id
    from ..quantization import get_scheme

    quantization = quantization or DEFAULT_QUANTIZATION["cpu"]  # only names the model id
    source = load_source(path)  # reads headers and tokenizer metadata; tensors stay on disk
    with tempfile.TemporaryDirectory(prefix="aae-tokenizer-") as tmp:
        config = gen_config(source, get_scheme(quantization), Path(tmp), model_id=default_model_id(path, quantization))
        return TokenizerService.from_model_dir(Path(tmp), config)


def load_service(model: str | Path, *, quantization: str | None = None) -> TokenizerService:
    """MODEL (anything the other commands take) -> its TokenizerService."""
    local = Path(model).expanduser()
    if (local / CHAT_CONFIG).is_file():  # a built folder: no pipeline, so no TVM import
        return TokenizerService.from_model_dir(local, read_chat_config(local))
    from ..pipeline import resolve_model_path

    path = resolve_model_path(str(model))  # catalog name, HF://org/name, local path
    if (path / CHAT_CONFIG).is_file():
        return TokenizerService.from_model_dir(path, read_chat_config(path))
    return _service_from_source(path, quantization)


# --------------------------------------------------------------------------------------------
# Request checks: each raises RequestError naming the bad field (a 400).


def _token_ids(name: str, value: Any, vocab_size: int) -> list[int]:
    if not isinstance(value, list):
        raise _bad_type(name, value, "an array of token ids")
    return [_integer(f"{name}[{i}]", v, 0, vocab_size - 1) for i, v in enumerate(value)]


def _optional_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    return default if value is None else _boolean(name, value)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"The request body is {len(raw)} bytes; at most {MAX_BODY_BYTES} are accepted.", status_code=413)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(f"We could not parse the JSON body of your request: {exc}. The body must be a JSON object.") from None


def _object_body(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError(f"The request body must be a JSON object, got {type(body).__name__}.")
    return body


# --------------------------------------------------------------------------------------------
# The app


Handler = Callable[[Any], Awaitable[dict[str, Any]]]


def _json_route(path: str, handler: Handler, method: str = "POST") -> Route:
    """A route whose handler takes the parsed body (None for GET) and returns a JSON object;
    RequestErrors become their 4xx responses."""

    async def endpoint(request: Request) -> Response:
        try:
            body = await _json_body(request) if method == "POST" else None
            return JSONResponse(await handler(body))
        except RequestError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status_code)
        except Exception as exc:  # a bug or a tokenizer failure: still a JSON answer
            logger.exception("request failed")
            error = RequestError(f"The server failed to run the request: {exc}", type="server_error", status_code=500)
            return JSONResponse(error.to_dict(), status_code=500)

    return Route(path, endpoint, methods=[method])


def _native_routes(svc: TokenizerService) -> list[Route]:
    """Our own API: strict field checks, one name per concept."""

    async def encode(body: Any) -> dict[str, Any]:
        _check_fields(body, {"text", "add_special_tokens"}, "text")
        text, special = _string("text", body["text"]), _optional_bool(body, "add_special_tokens", True)
        ids = await run_in_threadpool(svc.encode, text, add_special_tokens=special)  # long texts: off the event loop
        return {"ids": ids, "count": len(ids)}

    async def decode(body: Any) -> dict[str, Any]:
        _check_fields(body, {"ids", "skip_special_tokens"}, "ids")
        ids, skip = _token_ids("ids", body["ids"], svc.vocab_size), _optional_bool(body, "skip_special_tokens", True)
        return {"text": await run_in_threadpool(svc.decode, ids, skip_special_tokens=skip)}

    async def chat(body: Any) -> dict[str, Any]:
        _check_fields(body, {"messages", "add_generation_prompt"}, "messages")
        messages = [m.to_template_dict() for m in _messages(body["messages"])]  # the engine's own checks
        gen = _optional_bool(body, "add_generation_prompt", True)
        text, ids = await run_in_threadpool(svc.apply_chat_template, messages, add_generation_prompt=gen)
        return {"text": text, "ids": ids, "count": len(ids)}

    async def info(_: Any) -> dict[str, Any]:
        return svc.info()

    async def health(_: Any) -> dict[str, Any]:
        return {"status": "ok", "model": svc.model_id}

    return [_json_route("/v1/encode", encode), _json_route("/v1/decode", decode),
            _json_route("/v1/apply-chat-template", chat), _json_route("/v1/info", info, "GET"),
            _json_route("/health", health, "GET")]


def _axera_routes(svc: TokenizerService) -> list[Route]:
    """The ax-llm tokenizer-server routes. Lenient about extra fields (their clients send some,
    e.g. img_prompt), strict about the types of the ones used."""
    eos_ids = list(svc.config.get("eos_token_ids") or [])

    async def encode(body: Any) -> dict[str, Any]:
        body = _object_body(body)
        if body.get("messages") is not None:
            messages = [m.to_template_dict() for m in _messages(body["messages"])]
        elif body.get("text") is not None:
            messages = [{"role": "user", "content": _string("text", body["text"])}]
        else:
            raise RequestError("Missing required parameter: 'text' (or 'messages').", param="text", code="missing_required_parameter")
        gen = _optional_bool(body, "add_generation_prompt", True)
        _, ids = await run_in_threadpool(svc.apply_chat_template, messages, add_generation_prompt=gen)
        return {"token_ids": ids, "len": len(ids)}

    async def decode(body: Any) -> dict[str, Any]:
        body = _object_body(body)
        if body.get("token_ids") is None:
            raise RequestError("Missing required parameter: 'token_ids'.", param="token_ids", code="missing_required_parameter")
        ids = _token_ids("token_ids", body["token_ids"], svc.vocab_size)
        return {"text": await run_in_threadpool(svc.decode, ids)}

    async def bos_id(_: Any) -> dict[str, Any]:
        return {"bos_id": svc.tokenizer.bos_token_id if svc.tokenizer.bos_token_id is not None else -1}

    async def eos_id(_: Any) -> dict[str, Any]:
        return {"eos_id": eos_ids[0] if eos_ids else -1}

    return [_json_route("/encode", encode), _json_route("/decode", decode),
            _json_route("/bos_id", bos_id, "GET"), _json_route("/eos_id", eos_id, "GET")]


def create_app(service: TokenizerService, *, allow_origins: list[str] | None = None) -> Starlette:
    """The Starlette app serving `service` (see the module docstring for the routes)."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"Unknown endpoint {request.method} {request.url.path}.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}
        error = RequestError(message.get(exc.status_code, str(exc.detail)), code=str(exc.status_code), status_code=exc.status_code)
        return JSONResponse(error.to_dict(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    app = Starlette(routes=[*_native_routes(service), *_axera_routes(service)], exception_handlers={HTTPException: http_error})
    if allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=allow_origins, allow_methods=["*"], allow_headers=["*"])
    return app


def run(model: str | Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, quantization: str | None = None,
        allow_origins: list[str] | None = None, log_level: str = "info") -> None:
    """Load MODEL's tokenizer and serve it until interrupted (Ctrl-C)."""
    import uvicorn

    service = load_service(model, quantization=quantization)
    app = create_app(service, allow_origins=allow_origins)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}: anyone who can reach this address can use the server", flush=True)
    print(f"Tokenizer server for {service.model_id} on http://{host}:{port} (GET /v1/info)", flush=True)
    # No access log: a runtime may call /decode once per generated token.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)

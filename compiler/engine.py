"""The native engine: OpenAI-style chat and completions over one compiled model.

    engine = SphereAaeEngine("SmolLM2-135M-Instruct")
    reply = engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
    print(reply.choices[0].message.content)
    for chunk in engine.chat.completions.create(messages=..., stream=True):
        print(chunk.choices[0].delta.content or "", end="")
    engine.terminate()

`AsyncSphereAaeEngine` has the same API with `await` and `async for`; the HTTP server uses it.

Each file is the twin of one of the browser engine's (web/src/): tokenizer.py <-> tokenizer.ts,
template.py <-> template.ts, text_stream.py <-> text_stream.ts, runtime/model_runtime.py <->
model_runtime.ts, scheduler.py <-> scheduler.ts, assembler.py <-> assembler.ts, engine.py <->
engine.ts, sampling.py <-> sampling.ts, protocol.py <-> protocol.ts, request_spec.py <->
request_spec.ts.
"""

from __future__ import annotations

import asyncio
import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Mapping, Sequence

from .assembler import Assembler
from .structured import ResponseFormat
from .protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    CompletionUsage,
    RequestError,
    parse_chat_request,
    parse_completion_request,
    spec_error,
)
from .tools import CallFormat, ToolPlan
from .sampling import SamplingParams
from .scheduler import Request, Scheduler

from . import DEFAULT_MODEL  # noqa: E402, F401  (re-exported: callers import it from here)

if TYPE_CHECKING:
    from .tokenizer import TextTokenizer

# --------------------------------------------------------------------------------------------
# --overrides


class OverrideError(ValueError):
    """A bad `--overrides` string or dict."""


# Runtime settings a user may override at load time, each a positive integer.
OVERRIDE_KEYS: tuple[str, ...] = ("context_window_size", "prefill_chunk_size", "max_batch_size", "tensor_parallel_shards")


def parse_overrides(spec: str | Mapping[str, Any] | None) -> dict[str, int]:
    """Parse `"context_window_size=2048;prefill_chunk_size=512"` (or a dict) into checked ints."""
    if spec is None:
        return {}
    items: list[tuple[str, Any]]
    if isinstance(spec, str):
        items = []
        for part in spec.split(";"):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise OverrideError(f"bad override {part!r}: expected key=value (e.g. 'context_window_size=2048'), separated by ';'")
            items.append((key.strip(), value.strip()))
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        raise OverrideError(f"overrides must be a 'key=value;...' string or a dict, not {type(spec).__name__}")
    out: dict[str, int] = {}
    for key, value in items:
        if key not in OVERRIDE_KEYS:
            raise OverrideError(f"unknown override {key!r}; known keys: {', '.join(OVERRIDE_KEYS)}")
        if isinstance(value, bool):
            raise OverrideError(f"override {key} must be a positive integer, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise OverrideError(f"override {key} must be a positive integer, got {value!r}") from None
        if isinstance(value, float) and not value.is_integer() or number < 1:
            raise OverrideError(f"override {key} must be a positive integer, got {value!r}")
        out[key] = number
    return out


def available_device_count(device: str) -> int:
    """How many devices of this kind (`cpu`, `cuda`, `cuda:1`, ...) the machine has."""
    kind = device.split(":", 1)[0]
    if kind in ("cpu", "llvm"):
        return 1  # the CPU backend is one TVM device, however many cores
    import tvm  # only for GPU kinds; importing tvm is slow

    count = 0
    while count < 64 and tvm.device(kind, count).exist:
        count += 1
    return count


def check_tensor_parallel(overrides: Mapping[str, int], device: str) -> None:
    shards = overrides.get("tensor_parallel_shards", 1)
    if shards > 1:
        have = available_device_count(device)
        if shards > have:
            raise OverrideError(
                f"tensor_parallel_shards={shards} needs {shards} '{device.split(':')[0]}' devices, but this machine has {have}"
            )



@dataclass
class _Prepared:
    """A validated request, tokenized, ready to submit."""

    kind: str
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    echo_texts: list[str] = field(default_factory=list)
    return_token_ids: bool = False
    response_format: ResponseFormat | None = None
    tool_calls: tuple[ToolPlan, CallFormat] | None = None  # the calls to parse out of each choice


def resolve_chat_template(value: str | None) -> str | None:
    """A chat template override: a named template (conv_templates.json) or a template's text."""
    from . import conv_templates

    if value is None or "{{" in value or "{%" in value:
        return value
    return conv_templates.get(value).template


def _body(args: dict[str, Any]) -> dict[str, Any]:
    """A request body from a `create(...)` call's locals: named arguments plus **extra, minus
    the ones left at None (so the model's defaults apply)."""
    extra = args.pop("extra", {})
    args.pop("self", None)
    return {k: v for k, v in {**args, **extra}.items() if v is not None}


class _Base:
    """What the sync and async engines share: loading, validation, tokenization."""

    def __init__(self, model: str, *, device: str, quantization: str | None, model_lib: str | Path | None, overrides: str | Mapping[str, Any] | None,
                 chat_template: str | None = None) -> None:
        checked = parse_overrides(overrides)
        check_tensor_parallel(checked, device)
        self._core = Scheduler(model, device=device, quantization=quantization, model_lib=model_lib, overrides=checked,
                               chat_template=resolve_chat_template(chat_template))

    @property
    def model_id(self) -> str:
        return self._core.model_id

    @property
    def config(self) -> dict[str, Any]:
        return self._core.config

    @property
    def model_dir(self) -> Path:
        return self._core.model_dir

    @property
    def load_stats(self) -> dict[str, float]:
        """Seconds spent preparing (convert + compile, or cache hit) and loading the model."""
        return dict(self._core.load_stats)

    @property
    def active_sequences(self) -> int:
        """KV-cache sequences alive now; 0 when idle (tests use it to prove cancellation frees them)."""
        return self._core.active_sequences

    @property
    def tokenizer(self) -> TextTokenizer:
        return self._core.tokenizer

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        return self._core.template.render(messages, add_generation_prompt=add_generation_prompt)

    @property
    def cached_sequences(self) -> int:
        """Finished sequences kept so that the next request sharing their prefix prefills only the rest."""
        return self._core.cached_sequences

    def reset_chat(self) -> None:
        """Forget the conversation: the next request prefills its whole prompt (web: resetChat)."""
        self._core.drop_prefix_cache()

    def terminate(self) -> None:
        """Stop the scheduler and free the model; pending requests fail."""
        self._core.terminate()

    def _prepare(self, kind: str, body: Mapping[str, Any]) -> _Prepared:
        if kind == "chat":
            chat: ChatCompletionRequest = parse_chat_request(body)
            template = self._core.template
            response_format, calls = chat.response_format, None
            if chat.tools is not None and chat.tools.active:
                if template.call_format is None:
                    raise spec_error("tools_template", "tools", why=template.no_tools_reason)
                calls = (chat.tools, template.call_format)
                response_format = ResponseFormat("tool_calls", tools=chat.tools, call_format=template.call_format)
            tools = chat.tools.for_template() if chat.tools is not None else None
            text = template.render([m.to_template_dict() for m in chat.messages], tools=tools)
            ids = self._core.tokenizer.encode(text)
            return _Prepared("chat", [ids], chat.sampling, chat.n, chat.stream, chat.include_usage,
                             return_token_ids=chat.return_token_ids, response_format=response_format, tool_calls=calls)
        comp: CompletionRequest = parse_completion_request(body)
        prompts = [self._core.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in comp.prompts]
        echo = [p if isinstance(p, str) else self._core.tokenizer.decode(p) for p in comp.prompts] if comp.echo else []
        return _Prepared("completion", prompts, comp.sampling, comp.n, comp.stream, comp.include_usage, echo, comp.return_token_ids)

    def _submit(self, prepared: _Prepared, sink: Callable[[object], None]) -> tuple[Request, Assembler]:
        request = Request(prepared.kind, sink)
        self._core.make_jobs(request, prepared.prompts, prepared.params, prepared.n, prepared.response_format)
        assembler = Assembler(
            self._core, request, prepared.kind,
            num_choices=len(request.jobs),
            prompt_tokens=sum(len(p) for p in prepared.prompts),
            include_usage=prepared.include_usage,
            echo_texts=prepared.echo_texts,
            n=prepared.n,
            prompt_ids=prepared.prompts if prepared.return_token_ids else None,
            tool_calls=prepared.tool_calls,
        )
        self._core.submit(request)
        return request, assembler


# --------------------------------------------------------------------------------------------
# `engine.chat.completions.create(...)` and `engine.completions.create(...)`, shared by both engines


class _Endpoint:
    """`engine.chat.completions` / `engine.completions`: builds the request body from keyword
    arguments. The engine's `_create` does the rest, blocking (sync engine) or as a coroutine
    (async engine, so there `create(...)` is awaited)."""

    def __init__(self, engine: "SphereAaeEngine | AsyncSphereAaeEngine", kind: str) -> None:
        self._engine = engine
        self._kind = kind

    def _run(self, body: dict[str, Any]) -> Any:
        return self._engine._create(self._kind, body)


class _ChatCompletions(_Endpoint):
    def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        stream: bool | None = None,
        stream_options: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        n: int | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        logit_bias: Mapping[str, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        **extra: Any,  # e.g. repetition_penalty, ignore_eos, max_completion_tokens; unknown names are rejected
    ) -> Any:
        """ChatCompletion or Stream (sync engine); awaitable of ChatCompletion or AsyncStream (async)."""
        return self._run(_body(locals()))


class _Completions(_Endpoint):
    def create(
        self,
        *,
        prompt: str | Sequence[Any],
        model: str | None = None,
        stream: bool | None = None,
        stream_options: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        n: int | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        logit_bias: Mapping[str, float] | None = None,
        logprobs: int | None = None,
        echo: bool | None = None,
        **extra: Any,
    ) -> Any:
        """Completion or Stream (sync engine); awaitable of Completion or AsyncStream (async)."""
        return self._run(_body(locals()))


class _Namespace:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


# --------------------------------------------------------------------------------------------
# Sync API


class Stream:
    """Iterator of chunks; `close()` (or leaving a `with` block, or breaking out and dropping it)
    cancels the generation and frees its KV sequence. `usage` is set once the stream ended."""

    def __init__(self, gen: Iterator[Any], assembler: Assembler) -> None:
        self._gen = gen
        self._assembler = assembler

    @property
    def usage(self) -> CompletionUsage | None:
        return self._assembler.usage() if self._assembler.done else None

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SphereAaeEngine(_Base):
    """Blocking OpenAI-style API over one compiled model (see the module docstring)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        quantization: str | None = None,
        model_lib: str | Path | None = None,
        overrides: str | Mapping[str, Any] | None = None,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(model, device=device, quantization=quantization, model_lib=model_lib, overrides=overrides,
                         chat_template=chat_template)
        self.chat = _Namespace(completions=_ChatCompletions(self, "chat"))
        self.completions = _Completions(self, "completion")

    def __enter__(self) -> "SphereAaeEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def _create(self, kind: str, body: Mapping[str, Any]) -> Any:
        prepared = self._prepare(kind, body)
        events: queue.Queue[object] = queue.Queue()
        request, assembler = self._submit(prepared, events.put)
        if prepared.stream:
            return Stream(self._stream(request, assembler, events), assembler)
        try:
            while not assembler.done:
                assembler.add(events.get())
        finally:
            if not assembler.done:
                self._core.cancel(request)  # Ctrl-C or an error while waiting
        return assembler.result()

    def _stream(self, request: Request, assembler: Assembler, events: "queue.Queue[object]") -> Iterator[Any]:
        try:
            yield from assembler.opening_chunks()
            while not assembler.done:
                yield from assembler.chunks_for(assembler.add(events.get()))
            yield from assembler.closing_chunks()
        finally:
            if not assembler.done:
                self._core.cancel(request)


# --------------------------------------------------------------------------------------------
# Async API


class AsyncStream:
    """Async iterator of chunks; `aclose()` or cancelling the consuming task frees the sequence."""

    def __init__(self, agen: AsyncIterator[Any], assembler: Assembler) -> None:
        self._agen = agen
        self._assembler = assembler

    @property
    def usage(self) -> CompletionUsage | None:
        return self._assembler.usage() if self._assembler.done else None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._agen

    async def aclose(self) -> None:
        await self._agen.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncSphereAaeEngine(_Base):
    """The engine for asyncio code (and the HTTP server): `await create(...)`, `async for` streams.
    Many requests may be in flight at once; their decode steps are batched together."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        quantization: str | None = None,
        model_lib: str | Path | None = None,
        overrides: str | Mapping[str, Any] | None = None,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(model, device=device, quantization=quantization, model_lib=model_lib, overrides=overrides,
                         chat_template=chat_template)
        self.chat = _Namespace(completions=_ChatCompletions(self, "chat"))
        self.completions = _Completions(self, "completion")

    async def _create(self, kind: str, body: Mapping[str, Any]) -> Any:
        return await self.create_from_body(kind, body)

    async def create_from_body(self, kind: str, body: Mapping[str, Any]) -> ChatCompletion | Completion | AsyncStream:
        """Run a request given as its JSON body (`kind` "chat" or "completion"); the server's entry.
        Validation and context-window errors raise RequestError here, before any streaming."""
        prepared = self._prepare(kind, body)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()
        request, assembler = self._submit(prepared, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        if prepared.stream:
            return AsyncStream(self._stream(request, assembler, events), assembler)
        try:
            while not assembler.done:
                assembler.add(await events.get())
        finally:
            if not assembler.done:
                self._core.cancel(request)  # the awaiting task was cancelled (client went away)
        return assembler.result()

    async def _stream(self, request: Request, assembler: Assembler, events: "asyncio.Queue[object]") -> AsyncIterator[Any]:
        try:
            for chunk in assembler.opening_chunks():
                yield chunk
            while not assembler.done:
                for chunk in assembler.chunks_for(assembler.add(await events.get())):
                    yield chunk
            for chunk in assembler.closing_chunks():
                yield chunk
        finally:
            if not assembler.done:
                self._core.cancel(request)


__all__ = [
    "DEFAULT_MODEL",
    "SphereAaeEngine",
    "AsyncSphereAaeEngine",
    "Stream",
    "AsyncStream",
    "OverrideError",
    "RequestError",
    "parse_overrides",
    "available_device_count",
]

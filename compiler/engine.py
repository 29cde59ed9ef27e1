"""The native engine: OpenAI-style chat and completions over one compiled model.

    engine = SphereAaeEngine("SmolLM2-135M-Instruct")
    reply = engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
    print(reply.choices[0].message.content)
    for chunk in engine.chat.completions.create(messages=..., stream=True):
        print(chunk.choices[0].delta.content or "", end="")
    engine.terminate()

`AsyncSphereAaeEngine` has the same API with `await` and `async for`; the HTTP server uses it.

How it works. One background thread (the scheduler) owns the `ModelRuntime` (all runtime calls
happen on that thread, which keeps device contexts simple) and runs a loop: admit a waiting
sequence (add it to the paged KV cache and prefill its prompt), then run one batched decode step
for every running sequence, and repeat. Each request choice is one KV sequence, so concurrent
requests never share KV state. Sampling, incremental detokenization and stop-string matching also
run on the scheduler thread, because they decide when a sequence ends; the resulting text deltas
go to the caller through a per-request sink (a `queue.Queue` for the sync API, an `asyncio.Queue`
fed with `call_soon_threadsafe` for the async one). Cancelling (closing a stream, a client
disconnect, Ctrl-C) marks the request, and the scheduler removes its sequences on its next turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence

import numpy as np

from .protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionTokenLogprob,
    ChoiceDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionUsage,
    RequestError,
    TopLogprob,
    parse_chat_request,
    parse_completion_request,
    spec_error,
)
from .request_spec import SPEC
from .sampling import SampledToken, Sampler, SamplingParams

from . import DEFAULT_MODEL  # noqa: E402, F401  (re-exported: callers import it from here)

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


# --------------------------------------------------------------------------------------------
# Tokenizer


def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: each byte is drawn as one printable character,
    bytes that are already printable as themselves and the rest as code points from 256 up."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table: dict[str, int] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _special_token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):  # older tokenizer_config.json stores AddedToken dicts
        content = value.get("content")
        return content if isinstance(content, str) else None
    return None


class TextTokenizer:
    """The model folder's `tokenizers` tokenizer plus what the chat config says about BOS/EOS."""

    def __init__(self, model_dir: Path, config: Mapping[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok_config: dict[str, Any] = {}
        cfg_path = model_dir / "tokenizer_config.json"
        if cfg_path.exists():
            tok_config = json.loads(cfg_path.read_text(encoding="utf-8"))
        self.bos_token_id: int | None = config.get("bos_token_id")
        self.add_bos_token = bool(config.get("add_bos_token", False)) and self.bos_token_id is not None
        self.eos_token_ids: frozenset[int] = frozenset(config.get("eos_token_ids") or [])

        def token_text(name: str, token_id: int | None) -> str:
            text = _special_token_text(tok_config.get(name))
            if text is None and token_id is not None:
                text = self.tokenizer.id_to_token(token_id)
            return text or ""

        first_eos = min(self.eos_token_ids) if self.eos_token_ids else None
        self.special_tokens = {
            "bos_token": token_text("bos_token", self.bos_token_id),
            "eos_token": token_text("eos_token", first_eos),
            "unk_token": token_text("unk_token", None),
            "pad_token": token_text("pad_token", config.get("pad_token_id")),
        }
        decoder = json.loads(self.tokenizer.to_str()).get("decoder") or {}
        self._byte_level = "ByteLevel" in json.dumps(decoder)
        self._byte_decoder = _gpt2_byte_decoder() if self._byte_level else {}
        self._bytes_cache: dict[int, bytes] = {}

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`; special-token text (e.g. `<|im_start|>`) maps to its token. BOS is
        prepended when the config says so, unless the text already starts with it."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if (self.add_bos_token if add_bos is None else add_bos) and self.bos_token_id is not None:
            if not ids or ids[0] != self.bos_token_id:
                ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        # Generated text skips special tokens; the tokenizer server can show them.
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for (a partial UTF-8 character is possible)."""
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        piece = self.tokenizer.id_to_token(token_id) or ""
        if self._byte_level:
            try:
                raw = bytes(self._byte_decoder[c] for c in piece)
            except KeyError:  # an added token written in plain text
                raw = piece.encode("utf-8")
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            raw = bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
        else:
            raw = piece.replace("\u2581", " ").encode("utf-8")  # SentencePiece word marker
        self._bytes_cache[token_id] = raw
        return raw

    def token_text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decoding token by token is wrong twice over: a multi-byte UTF-8 character can be split over
    several byte tokens, and SentencePiece decoders strip the leading space of whatever they decode.
    So each step decodes a short window of recent tokens and emits what the new token added to the
    window's text, and it waits (emits nothing) while the text ends in an incomplete character
    (U+FFFD). The window starts with the prompt's last tokens so the first generated token decodes
    with its leading space. web/src/tokenizer.ts's StreamingDetokenizer is its twin
    (request_spec.json "detokenizer").
    """

    CONTEXT_TOKENS: int = SPEC["detokenizer"]["prefix_tokens"]

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(prompt_ids[-self.CONTEXT_TOKENS :])
        self._prefix = 0  # window start
        self._read = len(self._ids)  # tokens before this are already emitted

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        text = self._tok.decode(self._ids[self._prefix :])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end of generation)."""
        if self._read == len(self._ids):
            return ""
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        text = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(prefix_text) :] if len(text) > len(prefix_text) else ""


class StopStringMatcher:
    """Cuts generated text exactly before the first stop string.

    While streaming, text that might be the start of a stop string is held back until the next
    delta proves it is not, so a client never sees part of a stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[: min(hits)], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


# --------------------------------------------------------------------------------------------
# Chat template


class ChatTemplate:
    """A Hugging Face chat template (jinja2, sandboxed) rendered the way `transformers` does:
    trim_blocks/lstrip_blocks, `raise_exception`, `strftime_now`, a `tojson` that keeps
    non-ASCII text, and the tokenizer's special tokens as variables."""

    # Base models have no template; their "chat" is the messages' text, one per line, so a story
    # model continues the user's text.
    FALLBACK = "{% for message in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}{{ message['content'] }}{% endfor %}"

    def __init__(self, source: str | None, special_tokens: Mapping[str, str]) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or self.FALLBACK
        self.is_fallback = source is None
        self._template = env.from_string(self.source)
        self._special = dict(special_tokens)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        from jinja2 import TemplateError

        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, tools=None, documents=None, **self._special
            )
        except TemplateError as exc:
            # raise_exception() in a template is how templates reject a conversation (e.g.
            # roles not alternating); that is the client's error, so a 400.
            raise RequestError(f"The model's chat template rejected the messages: {exc}", param="messages") from exc


def _raise_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    from markupsafe import Markup

    return Markup(json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys))


# --------------------------------------------------------------------------------------------
# Request limits (request_spec.json "context_window"; web/src/engine.ts's planRequest applies the same)


def check_prompts(kind: str, prompts: Sequence[Sequence[int]], logit_bias: Any, vocab_size: int, context_window: int) -> list[int]:
    """How many tokens each prompt leaves room for (context_window - its length), after the
    spec's checks in the spec's order: logit_bias ids, then per prompt: empty, out-of-vocabulary
    ids, too long (a prompt of context_window tokens or more leaves no room to generate)."""
    bad_bias = [t for t in logit_bias if t >= vocab_size]
    if bad_bias:
        raise spec_error("logit_bias_token", "logit_bias", token=bad_bias[0], vocab_size=vocab_size)
    param = SPEC["context_window"]["param"][kind]
    rooms = []
    for ids in prompts:
        if not ids:
            raise spec_error("prompt_empty", param)
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise spec_error("prompt_token", "prompt", token=bad[0], vocab_size=vocab_size)
        if len(ids) >= context_window:
            raise spec_error("context_length", param, context_window=context_window, prompt_tokens=len(ids))
        rooms.append(context_window - len(ids))
    return rooms


# --------------------------------------------------------------------------------------------
# Scheduler


@dataclass
class _TokenInfo:
    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]]


@dataclass
class _Output:
    """What the scheduler sends the caller after each step of one choice."""

    index: int
    text: str
    tokens: list[_TokenInfo]
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)  # generated since the last output, EOS included
    # Filled in the final output of a choice:
    completion_tokens: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class _Failure:
    error: BaseException


class _Job:
    """One choice of one request: one KV sequence from prefill to its finish."""

    def __init__(self, request: "_Request", index: int, prompt_ids: list[int], sampler: Sampler, max_new: int, tokenizer: TextTokenizer) -> None:
        self.request = request
        self.index = index
        self.prompt_ids = prompt_ids
        self.sampler = sampler
        self.max_new = max_new
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.stopper = StopStringMatcher(sampler.params.stop)
        self.seq_id: int | None = None
        self.pending_ids: list[int] = []  # ids not yet sent with an output (their text is held back)
        self.last_token = -1
        self.generated = 0
        self.prefill_s = 0.0
        self.decode_s = 0.0
        self.finished = False


class _Request:
    def __init__(self, kind: str, sink: Callable[[object], None]) -> None:
        self.kind = kind  # "chat" or "completion"
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.sink = sink
        self.jobs: list[_Job] = []
        self.cancelled = False


class _EngineCore:
    """Owns the runtime thread. Shared by the sync and async front ends."""

    def __init__(self, model: str, *, device: str, quantization: str | None, model_lib: str | Path | None, overrides: str | Mapping[str, Any] | None) -> None:
        self.overrides = parse_overrides(overrides)
        check_tensor_parallel(self.overrides, device)
        self.device = device
        self.load_stats: dict[str, float] = {}
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._waiting: deque[_Job] = deque()
        self._running: list[_Job] = []
        self._live_sequences: set[int] = set()
        self._stopped = False
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._thread_main, args=(model, quantization, model_lib), name="sphere-aae-scheduler", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error

    # ---- loading (on the scheduler thread, so every runtime call shares one thread)

    def _load(self, model: str, quantization: str | None, model_lib: str | Path | None) -> None:
        from .pipeline import prepare_model
        from .runtime.model_runtime import ModelRuntime

        t0 = time.perf_counter()
        prepared = prepare_model(
            model,  # catalog name, folder, .gguf, HF://... (the pipeline resolves and caches)
            quantization=quantization,
            device=self.device,
            overrides=dict(self.overrides) or None,
            model_lib=Path(model_lib) if model_lib is not None else None,
        )
        t1 = time.perf_counter()
        sizes = {k: self.overrides.get(k) for k in ("context_window_size", "prefill_chunk_size", "max_batch_size")}
        self.runtime = ModelRuntime(prepared.model_dir, prepared.lib_path, self.device, **sizes)
        t2 = time.perf_counter()
        self.model_dir = Path(prepared.model_dir)
        self.lib_path = Path(prepared.lib_path)
        self.config: dict[str, Any] = self.runtime.config
        self.model_id: str = self.config.get("model_id") or self.model_dir.name
        self.context_window: int = int(self.config["context_window_size"])
        self.max_batch_size: int = max(1, int(self.config.get("max_batch_size") or 1))
        self.vocab_size: int = int(self.config["model_config"]["vocab_size"])
        self.sampling_defaults: dict[str, Any] = dict(self.config.get("sampling") or {})
        self.tokenizer = TextTokenizer(self.model_dir, self.config)
        self.template = ChatTemplate(self.config.get("chat_template"), self.tokenizer.special_tokens)
        self.load_stats = {"prepare_s": t1 - t0, "runtime_load_s": t2 - t1}

    def _thread_main(self, model: str, quantization: str | None, model_lib: str | Path | None) -> None:
        try:
            self._load(model, quantization, model_lib)
        except BaseException as exc:  # reported to the constructor's caller
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        finally:
            terminated = RuntimeError("the engine was terminated")
            for request in {id(j.request): j.request for j in [*self._running, *self._waiting]}.values():
                self._fail(request, terminated)
            # A request submitted while terminate() ran would otherwise wait forever.
            while True:
                try:
                    command, arg = self._commands.get_nowait()
                except queue.Empty:
                    break
                if command == "submit":
                    self._send(arg, _Failure(terminated))
            self.runtime.close()

    # ---- public, thread-safe

    @property
    def active_sequences(self) -> int:
        """KV sequences alive in the runtime right now (0 once every request ended or was cancelled)."""
        return len(self._live_sequences)

    def submit(self, request: _Request) -> None:
        if self._stopped:
            raise RuntimeError("the engine was terminated")
        self._commands.put(("submit", request))

    def cancel(self, request: _Request) -> None:
        if not request.cancelled:
            request.cancelled = True
            self._commands.put(("wake", None))

    def terminate(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._commands.put(("stop", None))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    # ---- building requests (caller's thread)

    def make_jobs(self, request: _Request, prompts: Sequence[list[int]], params: SamplingParams, n: int) -> None:
        resolved = params.resolved(self.sampling_defaults)
        rooms = check_prompts(request.kind, prompts, resolved.logit_bias, self.vocab_size, self.context_window)
        eos = sorted(self.tokenizer.eos_token_ids)
        for p, (ids, room) in enumerate(zip(prompts, rooms)):
            max_new = min(resolved.max_tokens, room) if resolved.max_tokens else room
            for i in range(n):
                # Choice i is seeded seed + i; unseeded choices each draw a seed from the OS.
                choice = dataclasses.replace(resolved, seed=None if resolved.seed is None else resolved.seed + i)
                request.jobs.append(_Job(request, p * n + i, ids, Sampler(choice, self.vocab_size, ids, eos), max_new, self.tokenizer))

    # ---- the loop (scheduler thread)

    def _loop(self) -> None:
        while True:
            idle = not self._running and not self._waiting
            try:
                command, arg = self._commands.get(block=idle)
            except queue.Empty:
                command, arg = "", None
            while True:
                if command == "stop":
                    return
                if command == "submit":
                    self._waiting.extend(arg.jobs)
                try:
                    command, arg = self._commands.get_nowait()
                except queue.Empty:
                    break
            self._reap_cancelled()
            # One prefill per turn, then one decode step for everyone: a long prompt delays the
            # running streams by one prefill, not by the whole queue.
            if self._waiting and len(self._running) < self.max_batch_size:
                self._start(self._waiting.popleft())
            if self._running:
                self._decode_step()

    def _reap_cancelled(self) -> None:
        for job in [j for j in self._running if j.request.cancelled]:
            self._release(job)
        self._waiting = deque(j for j in self._waiting if not j.request.cancelled)

    def _release(self, job: _Job) -> None:
        job.finished = True
        if job in self._running:
            self._running.remove(job)
        if job.seq_id is not None:
            seq, job.seq_id = job.seq_id, None
            self._live_sequences.discard(seq)
            self.runtime.remove_sequence(seq)

    def _fail(self, request: _Request, error: BaseException) -> None:
        for job in request.jobs:
            if not job.finished:
                try:
                    self._release(job)
                except Exception:
                    pass  # the runtime is already failing; the request's error says why
        self._waiting = deque(j for j in self._waiting if j.request is not request)
        self._send(request, _Failure(error))

    def _send(self, request: _Request, event: object) -> None:
        try:
            request.sink(event)
        except Exception:
            # The consumer is gone (e.g. its event loop closed): stop generating for it.
            request.cancelled = True

    def _start(self, job: _Job) -> None:
        try:
            job.seq_id = self.runtime.add_sequence()
            self._live_sequences.add(job.seq_id)
            t0 = time.perf_counter()
            logits = self.runtime.prefill(job.seq_id, job.prompt_ids)
            job.prefill_s = time.perf_counter() - t0
            if not self._step(job, logits):
                self._running.append(job)
        except Exception as exc:
            self._fail(job.request, exc)

    def _decode_step(self) -> None:
        batch = list(self._running)
        try:
            t0 = time.perf_counter()
            logits = self.runtime.decode([j.seq_id for j in batch], [j.last_token for j in batch])  # type: ignore[misc]
            dt = time.perf_counter() - t0
        except Exception as exc:
            for request in {id(j.request): j.request for j in batch}.values():
                self._fail(request, exc)
            return
        for job, row in zip(batch, logits):
            if job.finished:  # failed together with an earlier choice of its request
                continue
            job.decode_s += dt
            try:
                self._step(job, row)
            except Exception as exc:
                self._fail(job.request, exc)

    def _step(self, job: _Job, logits: np.ndarray) -> bool:
        """Sample one token for `job` and send its text; returns True when the job finished."""
        sampled: SampledToken = job.sampler.sample(logits)
        job.generated += 1
        job.pending_ids.append(sampled.token_id)
        params = job.sampler.params
        finish: str | None = None
        tokens: list[_TokenInfo] = []
        if sampled.token_id in self.tokenizer.eos_token_ids and not params.ignore_eos:
            text, hit = job.stopper.feed(job.detok.flush())
            finish = "stop"
            if not hit:
                text += job.stopper.flush()
        else:
            job.last_token = sampled.token_id
            if params.logprobs:
                tokens.append(_TokenInfo(sampled.token_id, sampled.logprob, sampled.top_logprobs))
            text, hit = job.stopper.feed(job.detok.push(sampled.token_id))
            if hit:
                finish = "stop"
            elif job.generated >= job.max_new:
                tail, hit = job.stopper.feed(job.detok.flush())
                text += tail if hit else tail + job.stopper.flush()
                finish = "stop" if hit else "length"
        out = _Output(job.index, text, tokens, finish)
        if text or tokens or finish:
            out.token_ids, job.pending_ids = job.pending_ids, []
        if finish is not None:
            self._release(job)
            out.completion_tokens = job.generated
            out.prefill_tokens = len(job.prompt_ids)
            out.prefill_s = job.prefill_s
            out.decode_s = job.decode_s
        if text or tokens or finish:
            self._send(job.request, out)
        return finish is not None


# --------------------------------------------------------------------------------------------
# Turning scheduler outputs into OpenAI objects


class _Assembler:
    """Builds chunks (streaming) or the final object (non-streaming) of one request."""

    def __init__(
        self, core: _EngineCore, request: _Request, kind: str, *, num_choices: int, prompt_tokens: int, include_usage: bool,
        echo_texts: Sequence[str] = (), n: int = 1, prompt_ids: Sequence[list[int]] | None = None,
    ) -> None:
        self.core = core
        self.request = request
        self.kind = kind
        self.num_choices = num_choices
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
        self.texts = [""] * num_choices
        self.finish: list[str | None] = [None] * num_choices
        self.tokens: list[list[_TokenInfo]] = [[] for _ in range(num_choices)]
        # return_token_ids: the prompts' ids (None when not asked for) and each choice's ids.
        self._prompt_ids = prompt_ids
        self._prompt_ids_pending = prompt_ids is not None
        self.token_ids: list[list[int]] = [[] for _ in range(num_choices)]
        self.finished = 0
        self._echo = list(echo_texts)
        self._n = n
        self._completion_tokens = 0
        self._prefill = [0, 0.0]  # tokens, seconds
        self._decode = [0, 0.0]
        self._want_logprobs = any(j.sampler.params.logprobs for j in request.jobs)

    @property
    def done(self) -> bool:
        return self.finished == self.num_choices

    def add(self, event: object) -> _Output:
        if isinstance(event, _Failure):
            raise event.error
        assert isinstance(event, _Output)
        i = event.index
        self.texts[i] += event.text
        self.tokens[i].extend(event.tokens)
        self.token_ids[i].extend(event.token_ids)
        if event.finish_reason is not None:
            self.finish[i] = event.finish_reason
            self.finished += 1
            self._completion_tokens += event.completion_tokens
            self._prefill[0] += event.prefill_tokens
            self._prefill[1] += event.prefill_s
            self._decode[0] += max(event.completion_tokens - 1, 0)  # the first token came from prefill
            self._decode[1] += event.decode_s
        return event

    def usage(self) -> CompletionUsage:
        return CompletionUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self._completion_tokens,
            total_tokens=self.prompt_tokens + self._completion_tokens,
            prefill_tokens_per_s=round(self._prefill[0] / self._prefill[1], 2) if self._prefill[1] > 0 else None,
            decode_tokens_per_s=round(self._decode[0] / self._decode[1], 2) if self._decode[1] > 0 else None,
        )

    # ---- logprobs

    def _chat_logprobs(self, tokens: Sequence[_TokenInfo]) -> ChoiceLogprobs:
        tok = self.core.tokenizer
        content = []
        for t in tokens:
            tops = [TopLogprob(tok.token_text(i), lp, list(tok.token_bytes(i))) for i, lp in t.top_logprobs]
            content.append(ChatCompletionTokenLogprob(tok.token_text(t.token_id), t.logprob, list(tok.token_bytes(t.token_id)), tops))
        return ChoiceLogprobs(content=content)

    def _completion_logprobs(self, tokens: Sequence[_TokenInfo], offset: int) -> CompletionLogprobs:
        tok = self.core.tokenizer
        out = CompletionLogprobs()
        for t in tokens:
            text = tok.token_text(t.token_id)
            out.tokens.append(text)
            out.token_logprobs.append(t.logprob)
            out.top_logprobs.append({tok.token_text(i): lp for i, lp in t.top_logprobs})
            out.text_offset.append(offset)
            offset += len(text)
        return out

    # ---- streaming (return_token_ids: request_spec.json "$token_ids")

    def _ids(self, ids: list[int]) -> list[int] | None:
        return list(ids) if self._prompt_ids is not None else None

    def _prompt_ids_field(self) -> list[int] | list[list[int]] | None:
        if self._prompt_ids is None:
            return None
        return list(self._prompt_ids[0]) if len(self._prompt_ids) == 1 else [list(p) for p in self._prompt_ids]

    def _first(self, chunk: Any) -> Any:
        """Put prompt_token_ids on the stream's first chunk."""
        if self._prompt_ids_pending:
            self._prompt_ids_pending = False
            chunk.prompt_token_ids = self._prompt_ids_field()
        return chunk

    def opening_chunks(self) -> list[Any]:
        """Chat streams start with a role-only delta per choice, as OpenAI's do."""
        if self.kind != "chat":
            return [self._first(self._completion_chunk(i, self._echo[i // self._n], None, None)) for i in range(self.num_choices) if self._echo]
        return [self._first(self._chat_chunk(i, ChoiceDelta(role="assistant", content=""), None, None)) for i in range(self.num_choices)]

    def chunks_for(self, out: _Output) -> list[Any]:
        chunks: list[Any] = []
        if self.kind == "chat":
            logprobs = self._chat_logprobs(out.tokens) if out.tokens else None
            ids = out.token_ids
            if out.text or logprobs is not None:
                chunks.append(self._chat_chunk(out.index, ChoiceDelta(content=out.text), None, logprobs, self._ids(ids)))
                ids = []  # the finish chunk carries only ids no content chunk carried
            if out.finish_reason is not None:
                chunks.append(self._chat_chunk(out.index, ChoiceDelta(), out.finish_reason, None, self._ids(ids)))
        else:
            offset = len(self.texts[out.index]) - len(out.text)
            logprobs = self._completion_logprobs(out.tokens, offset) if self._want_logprobs else None
            chunks.append(self._completion_chunk(out.index, out.text, out.finish_reason, logprobs, self._ids(out.token_ids)))
        return [self._first(c) for c in chunks]

    def closing_chunks(self) -> list[Any]:
        if not self.include_usage:
            return []
        if self.kind == "chat":
            return [ChatCompletionChunk(self.request.id, self.request.created, self.core.model_id, [], usage=self.usage(), include_usage_field=True)]
        return [Completion(self.request.id, self.request.created, self.core.model_id, [], usage=self.usage(), include_usage_field=True)]

    def _chat_chunk(
        self, index: int, delta: ChoiceDelta, finish: str | None, logprobs: ChoiceLogprobs | None, token_ids: list[int] | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            self.request.id, self.request.created, self.core.model_id,
            [ChatCompletionChunkChoice(index, delta, finish, logprobs, token_ids)], include_usage_field=self.include_usage,
        )

    def _completion_chunk(
        self, index: int, text: str, finish: str | None, logprobs: CompletionLogprobs | None, token_ids: list[int] | None = None
    ) -> Completion:
        return Completion(
            self.request.id, self.request.created, self.core.model_id,
            [CompletionChoice(index, text, finish, logprobs, token_ids)], usage=None, include_usage_field=self.include_usage,
        )

    # ---- final object

    def result(self) -> ChatCompletion | Completion:
        if self.kind == "chat":
            choices = [
                ChatCompletionChoice(
                    i,
                    ChatCompletionMessage(role="assistant", content=self.texts[i]),
                    self.finish[i],
                    self._chat_logprobs(self.tokens[i]) if self._want_logprobs else None,
                    self._ids(self.token_ids[i]),
                )
                for i in range(self.num_choices)
            ]
            return ChatCompletion(self.request.id, self.request.created, self.core.model_id, choices, self.usage(),
                                  prompt_token_ids=self._prompt_ids_field())
        choices_c = []
        for i in range(self.num_choices):
            echo = self._echo[i // self._n] if self._echo else ""
            logprobs = self._completion_logprobs(self.tokens[i], len(echo)) if self._want_logprobs else None
            choices_c.append(CompletionChoice(i, echo + self.texts[i], self.finish[i], logprobs, self._ids(self.token_ids[i])))
        return Completion(self.request.id, self.request.created, self.core.model_id, choices_c, self.usage(), prompt_token_ids=self._prompt_ids_field())


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


def _body(args: dict[str, Any]) -> dict[str, Any]:
    """A request body from a `create(...)` call's locals: named arguments plus **extra, minus
    the ones left at None (so the model's defaults apply)."""
    extra = args.pop("extra", {})
    args.pop("self", None)
    return {k: v for k, v in {**args, **extra}.items() if v is not None}


class _Base:
    """What the sync and async engines share: loading, validation, tokenization."""

    def __init__(self, model: str, *, device: str, quantization: str | None, model_lib: str | Path | None, overrides: str | Mapping[str, Any] | None) -> None:
        self._core = _EngineCore(model, device=device, quantization=quantization, model_lib=model_lib, overrides=overrides)

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

    def terminate(self) -> None:
        """Stop the scheduler and free the model; pending requests fail."""
        self._core.terminate()

    def _prepare(self, kind: str, body: Mapping[str, Any]) -> _Prepared:
        if kind == "chat":
            chat: ChatCompletionRequest = parse_chat_request(body)
            text = self._core.template.render([m.to_template_dict() for m in chat.messages])
            ids = self._core.tokenizer.encode(text)
            return _Prepared("chat", [ids], chat.sampling, chat.n, chat.stream, chat.include_usage, return_token_ids=chat.return_token_ids)
        comp: CompletionRequest = parse_completion_request(body)
        prompts = [self._core.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in comp.prompts]
        echo = [p if isinstance(p, str) else self._core.tokenizer.decode(p) for p in comp.prompts] if comp.echo else []
        return _Prepared("completion", prompts, comp.sampling, comp.n, comp.stream, comp.include_usage, echo, comp.return_token_ids)

    def _submit(self, prepared: _Prepared, sink: Callable[[object], None]) -> tuple[_Request, _Assembler]:
        request = _Request(prepared.kind, sink)
        self._core.make_jobs(request, prepared.prompts, prepared.params, prepared.n)
        assembler = _Assembler(
            self._core, request, prepared.kind,
            num_choices=len(request.jobs),
            prompt_tokens=sum(len(p) for p in prepared.prompts),
            include_usage=prepared.include_usage,
            echo_texts=prepared.echo_texts,
            n=prepared.n,
            prompt_ids=prepared.prompts if prepared.return_token_ids else None,
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

    def __init__(self, gen: Iterator[Any], assembler: _Assembler) -> None:
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
    ) -> None:
        super().__init__(model, device=device, quantization=quantization, model_lib=model_lib, overrides=overrides)
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

    def _stream(self, request: _Request, assembler: _Assembler, events: "queue.Queue[object]") -> Iterator[Any]:
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

    def __init__(self, agen: AsyncIterator[Any], assembler: _Assembler) -> None:
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
    ) -> None:
        super().__init__(model, device=device, quantization=quantization, model_lib=model_lib, overrides=overrides)
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

    async def _stream(self, request: _Request, assembler: _Assembler, events: "asyncio.Queue[object]") -> AsyncIterator[Any]:
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
    "TextTokenizer",
    "IncrementalDetokenizer",
    "StopStringMatcher",
    "check_prompts",
    "ChatTemplate",
]

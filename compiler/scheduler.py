"""The scheduler: one thread that owns the model runtime and batches every request's sequences
(`Scheduler`), plus what it sends the caller (`Output`, `Failure`). Twin of web/src/scheduler.ts.

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

import dataclasses
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .protocol import spec_error
from .request_spec import SPEC
from .sampling import NativeWeights, SampledToken, Sampler, SamplingParams
from .template import ChatTemplate
from .structured import GrammarCompiler, GrammarMatcher, ResponseFormat
from .text_stream import TextStream
from .tokenizer import TextTokenizer


# --------------------------------------------------------------------------------------------
# Request limits (request_spec.json "context_window"; web/src/scheduler.ts checkPrompts is its twin)


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
class TokenInfo:
    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]]


@dataclass
class Output:
    """What the scheduler sends the caller after each step of one choice."""

    index: int
    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)  # generated since the last output, EOS included
    # Filled in the final output of a choice:
    completion_tokens: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class Failure:
    error: BaseException


class Job:
    """One choice of one request: one KV sequence from prefill to its finish."""

    def __init__(self, request: "Request", index: int, prompt_ids: list[int], sampler: Sampler, max_new: int, tokenizer: TextTokenizer) -> None:
        self.request = request
        self.index = index
        self.prompt_ids = prompt_ids
        self.sampler = sampler
        self.max_new = max_new
        self.text = TextStream(tokenizer, prompt_ids, sampler.params.stop)
        self.seq_id: int | None = None
        self.pending_ids: list[int] = []  # ids not yet sent with an output (their text is held back)
        self.generated_ids: list[int] = []
        self.last_token = -1
        self.generated = 0
        self.prefill_tokens = 0  # fewer than the prompt's when a cached prefix was reused
        self.grammar: GrammarMatcher | None = None  # structured output: what may come next
        self.prefill_s = 0.0
        self.decode_s = 0.0
        self.finished = False


class Request:
    def __init__(self, kind: str, sink: Callable[[object], None]) -> None:
        self.kind = kind  # "chat" or "completion"
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.sink = sink
        self.jobs: list[Job] = []
        self.cancelled = False


class Scheduler:
    """Owns the runtime thread. Shared by the sync and async front ends."""

    def __init__(self, model: str, *, device: str, quantization: str | None, model_lib: str | Path | None, overrides: Mapping[str, int],
                 chat_template: str | None = None) -> None:
        # `overrides` comes checked (engine.parse_overrides and check_tensor_parallel).
        self.overrides = dict(overrides)
        self._chat_template = chat_template  # replaces the chat config's (a template's text)
        self.device = device
        self.load_stats: dict[str, float] = {}
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._live_sequences: set[int] = set()
        # The prefix cache (request_spec.json "scheduler"): (sequence, the tokens its KV holds), oldest first.
        self._cached: list[tuple[int, list[int]]] = []
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

        t0 = time.perf_counter()
        prepared = prepare_model(
            model,  # catalog name, folder, .gguf, HF://... (the pipeline resolves and caches)
            quantization=quantization,
            device=self.device,
            overrides=dict(self.overrides) or None,
            model_lib=Path(model_lib) if model_lib is not None else None,
        )
        t1 = time.perf_counter()  # loading TVM counts as the runtime's load
        if self.device == "cpu":
            # The library is compiled: running it needs TVM's runtime, not its compiler and LLVM
            # (~180 MB resident). A no-op where TVM is loaded already (e.g. it had to compile).
            # CUDA keeps full TVM, whose import registers the CUDA runtime.
            from .runtime.tvm_lib import import_runtime_only

            import_runtime_only()
        from .runtime.model_runtime import ModelRuntime

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
        # The library's sampling kernel (sampling_kernel.py); None in libraries built before it.
        self.sampling_kernel: NativeWeights | None = NativeWeights.from_library(self.runtime.lib)
        self.tokenizer = TextTokenizer(self.model_dir, self.config)
        self.template = ChatTemplate(self._chat_template or self.config.get("chat_template"), self.tokenizer.special_tokens)
        self.grammars = GrammarCompiler(self.model_dir, self.vocab_size, sorted(self.tokenizer.eos_token_ids))
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
                    self._send(arg, Failure(terminated))
            self.runtime.close()

    # ---- public, thread-safe

    @property
    def active_sequences(self) -> int:
        """KV sequences alive in the runtime right now (0 once every request ended or was cancelled)."""
        return len(self._live_sequences)

    @property
    def cached_sequences(self) -> int:
        """Finished sequences kept for prefix reuse (request_spec.json "scheduler")."""
        return len(self._cached)

    def drop_prefix_cache(self) -> None:
        """Free the prefix cache (on the scheduler's next turn): the next request prefills all."""
        self._commands.put(("drop_prefix_cache", None))

    def submit(self, request: Request) -> None:
        if self._stopped:
            raise RuntimeError("the engine was terminated")
        self._commands.put(("submit", request))

    def cancel(self, request: Request) -> None:
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

    def make_jobs(self, request: Request, prompts: Sequence[list[int]], params: SamplingParams, n: int,
                  response_format: ResponseFormat | None = None) -> None:
        resolved = params.resolved(self.sampling_defaults)
        rooms = check_prompts(request.kind, prompts, resolved.logit_bias, self.vocab_size, self.context_window)
        # Compiled here, on the caller's thread: a schema XGrammar cannot take is the caller's 400.
        grammar = self.grammars.compile(response_format) if response_format is not None and response_format.constrained else None
        eos = sorted(self.tokenizer.eos_token_ids)
        for p, (ids, room) in enumerate(zip(prompts, rooms)):
            max_new = min(resolved.max_tokens, room) if resolved.max_tokens else room
            for i in range(n):
                # Choice i is seeded seed + i; unseeded choices each draw a seed from the OS.
                choice = dataclasses.replace(resolved, seed=None if resolved.seed is None else resolved.seed + i)
                job = Job(request, p * n + i, ids, Sampler(choice, self.vocab_size, ids, eos, self.sampling_kernel), max_new, self.tokenizer)
                job.grammar = self.grammars.matcher(grammar) if grammar is not None else None
                request.jobs.append(job)

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
                if command == "drop_prefix_cache":
                    while self._cached:
                        self._drop_cached(0)
                try:
                    command, arg = self._commands.get_nowait()
                except queue.Empty:
                    break
            self._reap_cancelled()
            # A few prefills per turn, then one decode step for everyone: a long prompt delays the
            # running streams by one prefill, not by the whole queue.
            for _ in range(SPEC["scheduler"]["admissions_per_turn"]):
                if not self._waiting or len(self._running) >= self.max_batch_size:
                    break
                self._start(self._waiting.popleft())
            if self._running:
                self._decode_step()

    def _reap_cancelled(self) -> None:
        for job in [j for j in self._running if j.request.cancelled]:
            self._release(job)
        self._waiting = deque(j for j in self._waiting if not j.request.cancelled)

    def _release(self, job: Job, keep: bool = False) -> None:
        """End the job; `keep`: its sequence goes to the prefix cache, holding the prompt and every
        generated token but the last (which was never fed)."""
        job.finished = True
        if job in self._running:
            self._running.remove(job)
        if job.seq_id is None:
            return
        seq, job.seq_id = job.seq_id, None
        self._live_sequences.discard(seq)
        limit = SPEC["scheduler"]["prefix_cache_sequences"]
        if not keep or limit <= 0:
            self.runtime.remove_sequence(seq)
            return
        self._cached.append((seq, [*job.prompt_ids, *job.generated_ids[:-1]]))
        while len(self._cached) > limit:
            self._drop_cached(0)

    def _drop_cached(self, index: int) -> None:
        seq, _ = self._cached.pop(index)
        self.runtime.remove_sequence(seq)

    def _take_sequence(self, job: Job) -> int:
        """Give the job a sequence: the cached one sharing the longest prefix with its prompt
        (popped back to it; at least one prompt token is left to prefill, for its logits), else a
        new one. Returns how many prompt tokens the sequence already holds."""
        prompt = job.prompt_ids
        best, best_length = -1, 0
        # An inexact paged prefill (artifact_format.json) may only re-run the prompt's last token.
        inexact = SPEC["scheduler"]["reuse_needs_exact_paged_prefill"] and not self.runtime.exact_paged_prefill
        for i, (_, tokens) in enumerate(self._cached):
            p = min(_common_prefix_length(tokens, prompt), len(prompt) - 1)
            if inexact and p != len(prompt) - 1:
                continue
            if p >= SPEC["scheduler"]["min_prefix_tokens"] and p >= best_length:  # ties: the newest
                best, best_length = i, p
        if best >= 0:
            seq, tokens = self._cached.pop(best)
            self.runtime.pop_tokens(seq, len(tokens) - best_length)
            job.seq_id = seq
        else:
            while self._cached and len(self._cached) + len(self._running) + 1 > self.max_batch_size:
                self._drop_cached(0)
            job.seq_id = self.runtime.add_sequence()
        self._live_sequences.add(job.seq_id)
        return best_length if best >= 0 else 0

    def _fail(self, request: Request, error: BaseException) -> None:
        for job in request.jobs:
            if not job.finished:
                try:
                    self._release(job)
                except Exception:
                    pass  # the runtime is already failing; the request's error says why
        self._waiting = deque(j for j in self._waiting if j.request is not request)
        self._send(request, Failure(error))

    def _send(self, request: Request, event: object) -> None:
        try:
            request.sink(event)
        except Exception:
            # The consumer is gone (e.g. its event loop closed): stop generating for it.
            request.cancelled = True

    def _start(self, job: Job) -> None:
        try:
            t0 = time.perf_counter()
            reused = self._take_sequence(job)
            rest = job.prompt_ids[reused:]
            logits = self.runtime.prefill(job.seq_id, rest)  # type: ignore[arg-type]
            job.prefill_tokens = len(rest)
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

    def _step(self, job: Job, logits: np.ndarray) -> bool:
        """Sample one token for `job` and send its text; returns True when the job finished."""
        allowed = job.grammar.allowed() if job.grammar is not None else None
        sampled: SampledToken = job.sampler.sample(logits, allowed)
        job.generated += 1
        job.generated_ids.append(sampled.token_id)
        job.pending_ids.append(sampled.token_id)
        params = job.sampler.params
        finish: str | None = None
        tokens: list[TokenInfo] = []
        if sampled.token_id in self.tokenizer.eos_token_ids and not params.ignore_eos:
            text, _ = job.text.finish()
            finish = "stop"
        else:
            job.last_token = sampled.token_id
            if job.grammar is not None:
                job.grammar.accept(sampled.token_id)
            if params.logprobs:
                tokens.append(TokenInfo(sampled.token_id, sampled.logprob, sampled.top_logprobs))
            text, hit = job.text.push(sampled.token_id)
            if hit:
                finish = "stop"
            elif job.generated >= job.max_new:
                tail, hit = job.text.finish()
                text += tail
                finish = "stop" if hit else "length"
        out = Output(job.index, text, tokens, finish)
        if text or tokens or finish:
            out.token_ids, job.pending_ids = job.pending_ids, []
        if finish is not None:
            self._release(job, keep=True)
            out.completion_tokens = job.generated
            out.prefill_tokens = job.prefill_tokens
            out.prefill_s = job.prefill_s
            out.decode_s = job.decode_s
        if text or tokens or finish:
            self._send(job.request, out)
        return finish is not None


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i

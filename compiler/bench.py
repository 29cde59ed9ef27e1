"""`sphere_aae bench`: speed and memory of the native engine, next to Hugging Face transformers
and llama.cpp (`--against transformers,llama.cpp`), measured in the same run on the same machine.

Every side runs the same prompt token ids greedily for exactly `max_tokens` new tokens (EOS is
ignored so all generate the same amount). Each side runs in its own fresh child process, so its
peak memory (maximum resident set size of that process) is its own and not the sum of all, and
no side's threads or caches slow another. Each figure is the best of `--repeat` measurements
(default 3) on every side alike. `--context N,...` repeats the measurement with N
tokens of context (the prompt's ids repeated), where decode speed depends on attention over the
context. Reported per side, and as AAE / other ratios:

- load time (for AAE also split into prepare = convert + compile or cache hit, and runtime load),
- time to first token (prompt submitted -> first generated token available),
- prefill and decode throughput in tokens/s,
- peak resident memory of the process (host RAM; GPU memory is not included),
- the generated text, and whether the two greedy texts agree.

The transformers side loads the model's original weights (the chat config's "source": a Hugging
Face folder as is, other formats exported to one with `sphere_aae.loaders.export_hf_dir`) in
float32, so for quantized builds it is the unquantized reference. llama.cpp (the optional
`llama-cpp-python` package, `pip install "sphere-aae[llamacpp]"`) runs the source GGUF itself,
with as many threads as the AAE runtime.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import DEFAULT_MODEL  # not from .engine: the llama.cpp and transformers workers must not load TVM

DEFAULT_PROMPT = "Write a short poem about the sea."


def _peak_rss_mb() -> float:
    """This process's peak resident memory, MiB. Linux: VmHWM, which belongs to the process's
    own address space; ru_maxrss is not usable for the workers, since Linux carries it across
    the exec that starts them and every worker would report at least the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def context_ids(prompt_ids: list[int], n: int) -> list[int]:
    """`n` token ids of context: the prompt's ids repeated (every side gets the same ones)."""
    reps = -(-n // max(1, len(prompt_ids)))
    return (list(prompt_ids) * reps)[:n]


def _runs(args: Mapping[str, Any], prompt_ids: list[int]) -> list[tuple[int | None, list[int]]]:
    """(context length or None for the prompt itself, ids) for every measurement of the run."""
    return [(None, list(prompt_ids))] + [(n, context_ids(prompt_ids, n)) for n in args.get("contexts") or []]


def bench_context_size(n_prompt: int, args: Mapping[str, Any]) -> int:
    """The context every side is given: room for the longest run and its new tokens (AAE's KV
    cache and llama.cpp's n_ctx alike, so their memory is compared at one capacity)."""
    return max([n_prompt, *(args.get("contexts") or [])]) + args["max_tokens"] + 8


def _speeds(n_prompt: int, n_new: int, first_s: float, total_s: float) -> dict[str, Any]:
    """Figures from the time to the first generated token and to the last one."""
    decode_s = total_s - first_s
    return {
        "ttft_s": first_s, "prompt_tokens": n_prompt, "completion_tokens": n_new,
        "prefill_tokens_per_s": n_prompt / first_s if first_s > 0 else None,
        "decode_tokens_per_s": (n_new - 1) / decode_s if n_new > 1 and decode_s > 0 else None,
    }


# Each figure is the best of `repeat` measurements (lowest time, highest rate), on every side
# alike: the machines are shared, and another job's burst slows one measurement, never speeds it.
_BEST = {"ttft_s": min, "prefill_tokens_per_s": max, "decode_tokens_per_s": max}


def _best_of(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(measurements[0])
    for m in measurements[1:]:
        for key, pick in _BEST.items():
            if m.get(key) is not None:
                best[key] = m[key] if best.get(key) is None else pick(best[key], m[key])
    return best


def _aae_worker(args: dict[str, Any]) -> dict[str, Any]:
    from . import keep_torch_out

    keep_torch_out()  # measure the runtime's own memory, as `sphere_aae serve` runs it
    from .engine import SphereAaeEngine
    from .tokenizer import TextTokenizer
    from .pipeline import prepare_model

    overrides = args["overrides"]
    if overrides is None:
        # The KV cache sized as llama.cpp's (the same context length), not the model's default.
        prepared = prepare_model(args["model"], quantization=args["quantization"], device=args["device"],
                                 model_lib=args["model_lib"])
        n_prompt = len(TextTokenizer(prepared.model_dir, prepared.config).encode(args["prompt"]))
        n_ctx = bench_context_size(n_prompt, args)
        overrides = {"context_window_size": n_ctx, "prefill_chunk_size": min(int(prepared.config["prefill_chunk_size"]), n_ctx)}
    t0 = time.perf_counter()
    engine = SphereAaeEngine(
        args["model"], device=args["device"], quantization=args["quantization"], model_lib=args["model_lib"], overrides=overrides
    )
    load_s = time.perf_counter() - t0
    try:
        prompt_ids = engine.tokenizer.encode(args["prompt"])
        request = {"temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        # Warm-up: first calls pay one-time costs (kernel setup, allocator growth) a server pays once.
        for _ in engine.completions.create(**request, prompt=prompt_ids, max_tokens=2):
            pass
        def one(n_ctx: int | None, ids: list[int]) -> dict[str, Any]:
            # Every measured prompt is prefilled whole, as llama.cpp's (reset) and transformers'
            # are: the engine's prefix cache would otherwise leave one token to prefill.
            engine.reset_chat()
            start = time.perf_counter()
            first: float | None = None
            parts: list[str] = []
            usage = None
            for chunk in engine.completions.create(**request, prompt=ids, max_tokens=args["max_tokens"]):
                if chunk.choices and first is None:
                    first = time.perf_counter() - start
                parts.extend(c.text for c in chunk.choices)
                usage = chunk.usage or usage
            assert usage is not None and first is not None
            return {**_speeds(len(ids), usage.completion_tokens, first, time.perf_counter() - start),
                    "prefill_tokens_per_s": usage.prefill_tokens_per_s, "decode_tokens_per_s": usage.decode_tokens_per_s,
                    "context": n_ctx, "text": "".join(parts)}

        runs = [_best_of([one(n_ctx, ids) for _ in range(args["repeat"])]) for n_ctx, ids in _runs(args, prompt_ids)]
        streams = _concurrent_streams(engine, prompt_ids, args) if args.get("streams", 1) > 1 else None
        peak_rss_mb = _peak_rss_mb()  # before structured output, which brings PyTorch in (XGrammar imports it)
        structured = _structured_cost(engine, args, runs[0]["decode_tokens_per_s"]) if args.get("structured") else None
        return {
            **runs[0], "contexts": runs[1:], "streams": streams, "structured": structured,
            "load_s": load_s,
            "prepare_s": engine.load_stats.get("prepare_s"),
            "runtime_load_s": engine.load_stats.get("runtime_load_s"),
            "peak_rss_mb": peak_rss_mb,
            "prompt_ids": prompt_ids,
            "model_id": engine.model_id,
            "model_dir": str(engine.model_dir),
            "source": engine.config.get("source"),
            "threads": int(os.environ.get("TVM_NUM_THREADS", "0")) or None,
        }
    finally:
        engine.terminate()


def _concurrent_streams(engine: Any, prompt_ids: list[int], args: Mapping[str, Any]) -> dict[str, Any]:
    """`streams` requests at once (what `sphere_aae serve` does with concurrent clients): the
    engine decodes them in one batch; total generated tokens per second of wall time, against
    one stream alone measured the same way."""
    from concurrent.futures import ThreadPoolExecutor

    request = {"prompt": prompt_ids, "temperature": 0, "ignore_eos": True, "max_tokens": args["max_tokens"]}

    def timed(n: int) -> tuple[float, float]:
        """(generated tokens per second of wall time, prompts included; the sum of the
        streams' decode rates: each stream's decode time is the batched steps it was in)."""
        engine.reset_chat()  # each stream prefills its whole prompt (only finished sequences are reused)
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            done = list(pool.map(lambda _: engine.completions.create(**request), range(n)))
        assert all(r.usage.completion_tokens == args["max_tokens"] for r in done)
        return n * args["max_tokens"] / (time.perf_counter() - start), sum(r.usage.decode_tokens_per_s for r in done)

    def best(n: int) -> tuple[float, float]:
        runs = [timed(n) for _ in range(args["repeat"])]
        return max(r[0] for r in runs), max(r[1] for r in runs)

    (one, one_decode), (many, many_decode) = best(1), best(args["streams"])
    return {"streams": args["streams"], "one_stream_tokens_per_s": one, "total_tokens_per_s": many, "speedup": many / one,
            "one_stream_decode_tokens_per_s": one_decode, "total_decode_tokens_per_s": many_decode,
            "decode_speedup": many_decode / one_decode}


# The schema of the structured-output figure: nested objects, an array, an enum, bounded integers.
STRUCTURED_SCHEMA = {
    "type": "object", "required": ["name", "age", "city", "pets"],
    "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "pets": {"type": "array", "maxItems": 3, "items": {"type": "object", "required": ["kind"], "properties": {"kind": {"enum": ["cat", "dog"]}}}},
    },
}


def _structured_cost(engine: Any, args: Mapping[str, Any], decode_tokens_per_s: float | None) -> dict[str, Any]:
    """What structured output costs per token: a seeded json_schema request, then its tokens
    replayed through a fresh matcher of the same grammar, timing the mask and the accept of each
    (the work the scheduler adds to a step), against the plain run's decode step."""
    from .structured import ResponseFormat

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": STRUCTURED_SCHEMA}}
    messages = [{"role": "user", "content": "Describe a person as JSON."}]
    # As many tokens as the KV cache sized for the comparison leaves (the answer may be cut: length).
    room = int(engine.config["context_window_size"]) - len(engine.tokenizer.encode(engine.apply_chat_template(messages))) - 1
    t0 = time.perf_counter()
    r = engine.chat.completions.create(messages=messages, temperature=0.7, seed=1, max_tokens=max(2, min(256, room)),
                                       response_format=fmt, return_token_ids=True)
    wall = time.perf_counter() - t0
    grammars = engine._core.grammars
    compiled = grammars.compile(ResponseFormat("json_schema", schema=STRUCTURED_SCHEMA))
    ids = r.choices[0].token_ids
    eos = engine.tokenizer.eos_token_ids
    best = float("inf")
    for _ in range(3):  # the fastest of three replays: the machine is shared
        matcher = grammars.matcher(compiled)
        start = time.perf_counter()
        for t in ids:
            matcher.allowed()
            if t not in eos:
                matcher.accept(t)
        best = min(best, time.perf_counter() - start)
    grammar_ms = 1000 * best / len(ids)
    step_ms = 1000 / decode_tokens_per_s if decode_tokens_per_s else None
    return {"tokens": len(ids), "finish_reason": r.choices[0].finish_reason, "grammar_ms_per_token": grammar_ms, "decode_ms_per_token": step_ms,
            "share_of_step": grammar_ms / step_ms if step_ms else None, "tokens_per_s": len(ids) / wall, "text": r.choices[0].message.content}


def reference_hf_dir(source: str | None, work_dir: Path) -> Path:
    """A Hugging Face model folder with the original weights of `source` (see module docstring)."""
    if not source:
        raise RuntimeError("the model's aae-chat-config.json records no 'source', so there is no reference model to compare with")
    path = Path(source)
    if path.is_dir() and (path / "config.json").exists():
        return path
    from .loaders import export_hf_dir, load_source

    out = work_dir / "hf-reference"
    export_hf_dir(load_source(source), out)
    return out


def _detokenize(model_dir: str, prompt_ids: list[int], generated: list[int]) -> str:
    """The generated text as the engine's incremental detokenizer gives it: decoded with a little
    prompt context that is then cut off, so a SentencePiece leading space survives."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    context = prompt_ids[-4:]
    return tokenizer.decode(context + generated, skip_special_tokens=True)[len(tokenizer.decode(context, skip_special_tokens=True)):]


def _measured(one: Any, args: Mapping[str, Any], n_ctx: int | None, ids: list[int]) -> dict[str, Any]:
    """One measurement of another side: `one(ids)` -> (generated ids, first token s, total s)."""
    generated, first, total = one(ids)
    return {**_speeds(len(ids), len(generated), first, total), "context": n_ctx,
            "text": _detokenize(args["model_dir"], ids, generated)}


def _hf_worker(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if args["device"].startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory(prefix="aae-bench-") as tmp:
        t0 = time.perf_counter()
        hf_dir = reference_hf_dir(args["source"], Path(tmp))
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device).eval()
        load_s = time.perf_counter() - t0

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def one(ids_list: list[int]) -> tuple[list[int], float, float]:
        ids = torch.tensor([ids_list], device=device)
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        sync()
        first = time.perf_counter() - start
        generated, past = [int(token)], out.past_key_values
        for _ in range(args["max_tokens"] - 1):
            out = model(token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            generated.append(int(token))
        sync()
        return generated, first, time.perf_counter() - start

    runs = []
    with torch.inference_mode():
        model(torch.tensor([args["prompt_ids"][:4]], device=device))  # warm-up, as on the AAE side
        for n_ctx, ids in _runs(args, args["prompt_ids"]):
            runs.append(_best_of([_measured(one, args, n_ctx, ids) for _ in range(args["repeat"])]))
    return {**runs[0], "contexts": runs[1:], "load_s": load_s, "peak_rss_mb": _peak_rss_mb()}


LLAMACPP_HINT = ('install llama.cpp\'s Python binding: pip install "sphere-aae[llamacpp]" (it builds from source; on CPUs '
                 'that report AMX inside a VM set CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF '
                 '-DGGML_AMX_INT8=OFF" first, see the README)')


def _llamacpp_worker(args: dict[str, Any]) -> dict[str, Any]:
    source = args["source"] or ""
    if not source.endswith(".gguf"):
        raise RuntimeError(f"llama.cpp runs GGUF files; this model's source is {source!r}. Bench a model built from a .gguf")
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError as e:
        raise RuntimeError(f"llama.cpp is not installed ({e}); {LLAMACPP_HINT}") from None
    n_ctx = bench_context_size(len(args["prompt_ids"]), args)
    t0 = time.perf_counter()
    llm = Llama(model_path=source, n_ctx=n_ctx, n_batch=512, n_threads=args["threads"], n_threads_batch=args["threads"],
                logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0

    def one(ids: list[int]) -> tuple[list[int], float, float]:
        llm.reset()
        start = time.perf_counter()
        first, generated = 0.0, []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if not generated:
                first = time.perf_counter() - start
            generated.append(int(token))
            if len(generated) == args["max_tokens"]:
                break
        return generated, first, time.perf_counter() - start

    one(args["prompt_ids"][:4])  # warm-up
    runs = []
    for n_ctx_run, ids in _runs(args, args["prompt_ids"]):
        runs.append(_best_of([_measured(one, args, n_ctx_run, ids) for _ in range(args["repeat"])]))
    return {**runs[0], "contexts": runs[1:], "load_s": load_s, "peak_rss_mb": _peak_rss_mb(),
            "version": getattr(llama_cpp, "__version__", None), "threads": args["threads"]}


def _child_main(target: str, args: dict[str, Any], conn: Any) -> None:
    try:
        result = globals()[target](args)
        conn.send(("ok", result))
    except BaseException as exc:  # report any failure to the parent instead of dying silently
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _in_child(target: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run `target(args)` in a fresh interpreter (spawn) and return its result."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(target, args, child), name=f"aae-bench-{target}")
    proc.start()
    child.close()
    try:
        status, payload = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"benchmark process {target} died (exit code {proc.exitcode})") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark process {target} failed: {payload}")
    return payload


def _common_prefix_words(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(), b.split()):
        if x != y:
            break
        n += 1
    return n


OTHERS = ("transformers", "llama.cpp")
_WORKERS = {"transformers": "_hf_worker", "llama.cpp": "_llamacpp_worker"}
# Figures compared as AAE / other: higher is better for speeds, lower for times and memory.
RATIO_KEYS = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "peak_rss_mb")


def machine() -> dict[str, Any]:
    """What the figures were measured on: `lscpu`'s model name and the usable CPUs."""
    name = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": name or platform.processor() or platform.machine(), "vcpus": len(os.sched_getaffinity(0))}


def _ratios(aae: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, float | None]:
    return {k: (aae[k] / other[k] if aae.get(k) and other.get(k) else None) for k in RATIO_KEYS}


def _parse_against(against: str | Sequence[str]) -> list[str]:
    names = [a.strip() for a in (against.split(",") if isinstance(against, str) else against) if a.strip()]
    unknown = [a for a in names if a not in OTHERS]
    if unknown:
        raise ValueError(f"--against {unknown[0]!r}: compare with one or more of {', '.join(OTHERS)}")
    return names


def run_bench(
    model: str = DEFAULT_MODEL,
    quantization: str | None = None,
    device: str = "cpu",
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 32,
    *,
    model_lib: str | Path | None = None,
    overrides: str | Mapping[str, Any] | None = None,
    against: str | Sequence[str] = ("transformers",),
    contexts: Sequence[int] = (),
    streams: int = 1,
    structured: bool = False,
    repeat: int = 3,
) -> dict[str, Any]:
    """Benchmark `model` (see the module docstring); each figure is the best of `repeat` runs. Returns a JSON-able dict:
    {"model", "device", "prompt", "max_tokens", "machine", "aae": {...}, and for each side in
    `against`: its figures (or None with "<side>_error"), "ratios": {side: {figure: AAE / side}},
    "greedy_words_in_agreement": {side: n}; every side's "contexts" lists the context runs}."""
    if max_tokens < 2:
        raise ValueError("max_tokens must be at least 2 (decode speed needs a token after the first)")
    if repeat < 1:
        raise ValueError("--repeat must be at least 1")
    if any(int(n) < 1 for n in contexts):
        raise ValueError("--context lengths must be positive token counts")
    sides = _parse_against(against)
    args = {
        "model": model, "quantization": quantization, "device": device, "prompt": prompt, "max_tokens": max_tokens,
        "model_lib": str(model_lib) if model_lib is not None else None, "overrides": overrides,
        "contexts": [int(n) for n in contexts], "threads": len(os.sched_getaffinity(0)), "streams": int(streams),
        "structured": bool(structured), "repeat": int(repeat),
    }
    aae = _in_child("_aae_worker", args)
    result: dict[str, Any] = {
        "model": aae["model_id"], "device": device, "prompt": prompt, "max_tokens": max_tokens, "repeat": int(repeat),
        "machine": machine(),
        "aae": aae, "ratios": {}, "greedy_words_in_agreement": {},
    }
    for side in sides:
        result[side], result[f"{side}_error"] = None, None
        try:
            side_args = {**args, "prompt_ids": aae["prompt_ids"], "source": aae["source"], "model_dir": aae["model_dir"]}
            other = result[side] = _in_child(_WORKERS[side], side_args)
        except RuntimeError as exc:
            # The AAE numbers are still worth showing when another side cannot run.
            result[f"{side}_error"] = str(exc)
            continue
        result["ratios"][side] = {"prompt": _ratios(aae, other)} | {
            str(a["context"]): _ratios(a, o) for a, o in zip(aae["contexts"], other["contexts"])}
        result["greedy_words_in_agreement"][side] = _common_prefix_words(aae["text"], other["text"])
    return result


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} {unit}" if unit == "s" else f"{value:.2f}x" if unit == "x" else f"{value:.1f} {unit}"


_ROWS = (("load time", "load_s", "s"), ("time to first token", "ttft_s", "s"), ("prefill", "prefill_tokens_per_s", "tok/s"),
         ("decode", "decode_tokens_per_s", "tok/s"), ("peak memory (RSS)", "peak_rss_mb", "MiB"))


def _table(result: Mapping[str, Any], sides: list[str], context: str | None) -> Any:
    from rich.table import Table

    def run_of(side: str) -> Mapping[str, Any]:
        whole = result[side]
        return whole if context is None else next(c for c in whole["contexts"] if str(c["context"]) == context)

    table = Table(title=None if context is None else f"with {context} tokens of context")
    table.add_column("metric")
    for side in ["aae", *sides]:
        table.add_column("AAE" if side == "aae" else side, justify="right")
    for side in sides:
        table.add_column(f"AAE / {side}", justify="right")
    for label, key, unit in _ROWS:
        if context is not None and key in ("load_s", "peak_rss_mb"):
            continue
        ratio = [_fmt(result["ratios"][s]["prompt" if context is None else context].get(key), "x") for s in sides]
        table.add_row(label, *[_fmt(run_of(s).get(key), unit) for s in ["aae", *sides]], *ratio)
    return table


def format_bench(result: Mapping[str, Any]) -> str:
    """A human-readable report of `run_bench`'s result (tables, then the generated texts)."""
    import io

    from rich.console import Console

    aae = result["aae"]
    sides = [s for s in OTHERS if result.get(s)]
    buf = io.StringIO()
    m = result["machine"]
    buf.write(f"{result['model']} on {result['device']} ({m['cpu']}, {m['vcpus']} vCPUs): {aae['prompt_tokens']} prompt tokens, "
              f"{result['max_tokens']} new tokens (greedy), each figure the best of {result['repeat']} runs\n")
    console = Console(file=buf, width=140, force_terminal=False)
    console.print(_table(result, sides, None))
    for run in aae["contexts"]:
        console.print(_table(result, sides, str(run["context"])))
    lines = [
        f"AAE prepare (convert + compile, or cache hit): {aae['prepare_s']:.2f} s; runtime load: {aae['runtime_load_s']:.2f} s",
    ]
    if aae.get("streams"):
        st = aae["streams"]
        lines.append(f"AAE with {st['streams']} concurrent streams: decode {st['total_decode_tokens_per_s']:.1f} tok/s in all, "
                     f"{st['decode_speedup']:.2f}x one stream's {st['one_stream_decode_tokens_per_s']:.1f}; with the prompts, "
                     f"{st['total_tokens_per_s']:.1f} tok/s of wall time, {st['speedup']:.2f}x one stream's")
    if aae.get("structured"):
        so = aae["structured"]
        lines.append(f"AAE structured output (json_schema, {so['tokens']} tokens, {so['finish_reason']}): the grammar costs "
                     f"{so['grammar_ms_per_token']:.3f} ms a token, {100 * (so['share_of_step'] or 0):.1f}% of a {so['decode_ms_per_token'] or 0:.2f} ms decode step")
    lines += [
        f"AAE output: {aae['text']!r}",
    ]
    for side in OTHERS:
        if result.get(side):
            lines.append(f"{side} output: {result[side]['text']!r}")
            lines.append(f"greedy outputs of AAE and {side} agree on the first {result['greedy_words_in_agreement'][side]} words")
        elif result.get(f"{side}_error"):
            lines.append(f"{side} not run: {result[f'{side}_error'].splitlines()[0]}")
    return buf.getvalue() + "\n".join(lines)

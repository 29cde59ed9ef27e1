"""`sphere_aae bench`: speed and memory of the native engine, next to Hugging Face transformers.

Both sides run the same prompt token ids greedily for exactly `max_tokens` new tokens (EOS is
ignored so both generate the same amount). Each side runs in its own fresh child process, so its
peak memory (maximum resident set size of that process) is its own and not the sum of both, and
neither side's threads or caches slow the other. Reported per side:

- load time (for AAE also split into prepare = convert + compile or cache hit, and runtime load),
- time to first token (prompt submitted -> first generated token available),
- prefill and decode throughput in tokens/s,
- peak resident memory of the process (host RAM; GPU memory is not included),
- the generated text, and whether the two greedy texts agree.

The transformers side loads the model's original weights (the chat config's "source": a Hugging
Face folder as is, other formats exported to one with `sphere_aae.loaders.export_hf_dir`) in
float32, so for quantized builds it is the unquantized reference.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

from .engine import DEFAULT_MODEL

DEFAULT_PROMPT = "Write a short poem about the sea."


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _aae_worker(args: dict[str, Any]) -> dict[str, Any]:
    from .engine import SphereAaeEngine

    t0 = time.perf_counter()
    engine = SphereAaeEngine(
        args["model"], device=args["device"], quantization=args["quantization"], model_lib=args["model_lib"], overrides=args["overrides"]
    )
    load_s = time.perf_counter() - t0
    try:
        prompt_ids = engine.tokenizer.encode(args["prompt"])
        request = {"prompt": prompt_ids, "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        # Warm-up: first calls pay one-time costs (kernel setup, allocator growth) a server pays once.
        for _ in engine.completions.create(**{**request, "max_tokens": 2}):
            pass
        start = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        usage = None
        for chunk in engine.completions.create(**{**request, "max_tokens": args["max_tokens"]}):
            if chunk.choices and first is None:
                first = time.perf_counter() - start
            parts.extend(c.text for c in chunk.choices)
            usage = chunk.usage or usage
        assert usage is not None
        return {
            "load_s": load_s,
            "prepare_s": engine.load_stats.get("prepare_s"),
            "runtime_load_s": engine.load_stats.get("runtime_load_s"),
            "ttft_s": first,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "prefill_tokens_per_s": usage.prefill_tokens_per_s,
            "decode_tokens_per_s": usage.decode_tokens_per_s,
            "peak_rss_mb": _peak_rss_mb(),
            "text": "".join(parts),
            "prompt_ids": prompt_ids,
            "model_id": engine.model_id,
            "model_dir": str(engine.model_dir),
            "source": engine.config.get("source"),
        }
    finally:
        engine.terminate()


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


def _hf_worker(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if args["device"].startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory(prefix="aae-bench-") as tmp:
        t0 = time.perf_counter()
        hf_dir = reference_hf_dir(args["source"], Path(tmp))
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device).eval()
        load_s = time.perf_counter() - t0
    ids = torch.tensor([args["prompt_ids"]], device=device)
    n_new = args["max_tokens"]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        model(ids[:, : min(4, ids.shape[1])])  # warm-up, as on the AAE side
        sync()
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        sync()
        prefill_s = time.perf_counter() - start
        generated = [int(token)]
        past = out.past_key_values
        t1 = time.perf_counter()
        for _ in range(n_new - 1):
            out = model(token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            generated.append(int(token))
        sync()
        decode_s = time.perf_counter() - t1
    tokenizer = Tokenizer.from_file(str(Path(args["model_dir"]) / "tokenizer.json"))
    context = args["prompt_ids"][-4:]
    # Decode with a little prompt context, then cut it off, so a leading space survives the
    # SentencePiece decoder exactly as in the engine's incremental detokenizer.
    text = tokenizer.decode(context + generated, skip_special_tokens=True)[len(tokenizer.decode(context, skip_special_tokens=True)) :]
    return {
        "load_s": load_s,
        "ttft_s": prefill_s,
        "prompt_tokens": len(args["prompt_ids"]),
        "completion_tokens": len(generated),
        "prefill_tokens_per_s": len(args["prompt_ids"]) / prefill_s,
        "decode_tokens_per_s": (len(generated) - 1) / decode_s if decode_s > 0 else None,
        "peak_rss_mb": _peak_rss_mb(),
        "text": text,
    }


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


def run_bench(
    model: str = DEFAULT_MODEL,
    quantization: str | None = None,
    device: str = "cpu",
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 32,
    *,
    model_lib: str | Path | None = None,
    overrides: str | Mapping[str, Any] | None = None,
    compare_transformers: bool = True,
) -> dict[str, Any]:
    """Benchmark `model` (see the module docstring). Returns a JSON-able dict:
    {"model", "device", "prompt", "max_tokens", "aae": {...}, "transformers": {...} or None,
     "transformers_error": str or None, "greedy_words_in_agreement": int (when both ran)}."""
    if max_tokens < 2:
        raise ValueError("max_tokens must be at least 2 (decode speed needs a token after the first)")
    args = {
        "model": model, "quantization": quantization, "device": device, "prompt": prompt, "max_tokens": max_tokens,
        "model_lib": str(model_lib) if model_lib is not None else None, "overrides": overrides,
    }
    aae = _in_child("_aae_worker", args)
    result: dict[str, Any] = {
        "model": aae["model_id"], "device": device, "prompt": prompt, "max_tokens": max_tokens,
        "aae": aae, "transformers": None, "transformers_error": None,
    }
    if compare_transformers:
        try:
            hf_args = {**args, "prompt_ids": aae["prompt_ids"], "source": aae["source"], "model_dir": aae["model_dir"]}
            result["transformers"] = _in_child("_hf_worker", hf_args)
        except RuntimeError as exc:
            # The AAE numbers are still worth showing when the reference cannot run.
            result["transformers_error"] = str(exc)
        else:
            result["greedy_words_in_agreement"] = _common_prefix_words(aae["text"], result["transformers"]["text"])
    return result


def format_bench(result: Mapping[str, Any]) -> str:
    """A human-readable report of `run_bench`'s result (a table, then the generated texts)."""
    import io

    from rich.console import Console
    from rich.table import Table

    aae, hf = result["aae"], result["transformers"]
    table = Table()
    table.add_column("metric")
    table.add_column("AAE", justify="right")
    table.add_column("transformers", justify="right")

    def fmt(value: Any, unit: str) -> str:
        return "-" if value is None else f"{value:.3f} {unit}" if unit == "s" else f"{value:.1f} {unit}"

    rows = [
        ("load time", "load_s", "s"),
        ("time to first token", "ttft_s", "s"),
        ("prefill", "prefill_tokens_per_s", "tok/s"),
        ("decode", "decode_tokens_per_s", "tok/s"),
        ("peak memory (RSS)", "peak_rss_mb", "MiB"),
    ]
    for label, key, unit in rows:
        table.add_row(label, fmt(aae.get(key), unit), fmt(hf.get(key), unit) if hf else "-")
    buf = io.StringIO()
    buf.write(f"{result['model']} on {result['device']}: {aae['prompt_tokens']} prompt tokens, {result['max_tokens']} new tokens (greedy)\n")
    Console(file=buf, width=100, force_terminal=False).print(table)
    lines = [
        f"AAE prepare (convert + compile, or cache hit): {aae['prepare_s']:.2f} s; runtime load: {aae['runtime_load_s']:.2f} s",
        f"AAE output: {aae['text']!r}",
    ]
    if hf:
        lines.append(f"transformers output: {hf['text']!r}")
        lines.append(f"greedy outputs agree on the first {result['greedy_words_in_agreement']} words")
    elif result.get("transformers_error"):
        lines.append(f"transformers reference not run: {result['transformers_error'].splitlines()[0]}")
    return buf.getvalue() + "\n".join(lines)

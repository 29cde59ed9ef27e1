"""`aae-web bench`: the browser engine's speed, measured in headless Chromium on WebGPU, or on the
model's CPU library (`--device wasm`: model_lib.wasm, in a Chromium with WebGPU off).

Steps (each timed in the page, see site/bench.js):

1. build the model folder if missing (`aae-web build`, reused when current) and serve it with the
   demo site on 127.0.0.1;
2. cold load: a fresh browser profile, so every file comes from the server;
3. warm load: unload and load again in the same page; every file now comes from the browser's
   cache (the server's access log proves it: `warm_fetched_bytes`), kernels are compiled again;
4. a 2-token warm-up request (on lavapipe the first dispatch of each kernel compiles it), then
   the measured request from an empty KV cache: `max_tokens` new tokens, greedy, EOS ignored so
   every run generates the same amount (as `sphere_aae bench` does natively).

Reported: load_s, warm_load_s, ttft_s (request -> first token, prefill included), prefill_tok_s,
decode_tok_s (the engine's own counters), first_request_ttft_s (the warm-up's, kernel compiles
included), the text and ids, the device ("webgpu" or "wasm"), the route (`adapter_route`: the
WebGPU adapter route, or "wasm") and the adapter description, and the sizes a user downloads
(wasm_bytes: the library of that device, weights_bytes, engine_js_bytes).

Several devices in one run (`--device wasm --device webgpu`): one result per route, in order
(run_web_bench_devices), and a table with a route column (format_web_bench_table).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from .. import artifact
from . import browser
from .build import MODELS_LIST, build_web_model
from .server import start_server

DEFAULT_PROMPT = "Write a short poem about the sea."
Device = Literal["webgpu", "wasm"]
DEVICES: tuple[Device, ...] = ("webgpu", "wasm")
REPO = Path(__file__).resolve().parents[2]


def _model_folder(model: str, quantization: str | None, output: Path, progress: bool) -> tuple[Path, Path]:
    """(models_dir, model folder): an already built folder as is, else `aae-web build` into output."""
    given = Path(model)
    if (given / artifact.CHAT_CONFIG).is_file():
        cfg = artifact.read_chat_config(given)
        if quantization and cfg["quantization"] != quantization:
            raise ValueError(f"{given} is a built {cfg['quantization']} model; --quantization {quantization} cannot apply to it")
        if not (given.parent / MODELS_LIST).is_file():
            raise ValueError(f"{given} is a model folder but {given.parent / MODELS_LIST} is missing; build it with aae-web build -o")
        return given.parent, given
    # Build progress goes to stderr: with --json, stdout carries the result object only.
    with contextlib.redirect_stdout(sys.stderr):
        folder = build_web_model(model, quantization=quantization or "q4f32_1", output=output, progress=progress)
    return output, folder


def _fetched(srv: Any, prefix: str) -> tuple[int, int]:
    """(requests, body bytes) the server sent under `prefix` since the log was last cleared."""
    entries = [e for e in srv.access_log.entries if e.method == "GET" and e.path.startswith(prefix)]
    return len(entries), sum(e.bytes for e in entries)


def run_web_bench(
    model: str,
    *,
    quantization: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 32,
    output: Path = Path("dist"),
    adapter: browser.Adapter = "swiftshader",
    temperature: float = 0.0,
    timeout_s: float = 3600.0,
    progress: bool = True,
    structured: bool = False,
    device: Device = "webgpu",
) -> dict[str, Any]:
    """Build (if needed), serve and benchmark MODEL in headless Chromium; returns the figures.

    device "webgpu": the WebGPU library on `adapter`'s route; "wasm": the CPU library, in a Chromium
    launched without WebGPU (the engine asked for device "wasm"; `adapter` is not used)."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if adapter not in browser.ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; choose one of {', '.join(browser.ADAPTERS)}")
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    models_dir, folder = _model_folder(model, quantization, Path(output), progress)
    config = artifact.read_chat_config(folder)
    manifest = artifact.read_manifest(folder)
    model_id = config["model_id"]
    if device not in config["model_lib"]:
        raise ValueError(f"{folder} has no {device} library (model_lib lists {', '.join(config['model_lib'])}); rebuild it with aae-web build")
    wasm = folder / config["model_lib"][device]
    route = adapter if device == "webgpu" else "wasm"
    engine_js = REPO / "web" / "dist" / "index.js"
    if not engine_js.is_file():
        raise FileNotFoundError(f"{engine_js} is missing: build the web package (cd web && npm ci && npm run build)")
    timeout_ms = timeout_s * 1000
    say = (lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)

    profile = Path(tempfile.mkdtemp(prefix="aae-bench-profile-"))
    models_prefix = f"/models/{folder.name}/"
    try:
        with start_server(REPO / "site", models_dir, web_dist_dir=engine_js.parent) as srv, browser.sync_playwright() as p:
            ctx = browser.launch(p, profile, adapter if device == "webgpu" else None)
            try:
                page = ctx.new_page()
                page.set_default_timeout(timeout_ms)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{srv.url}/bench.html?driven=1")
                page.wait_for_function("window.aaeBench !== undefined")
                env = page.evaluate(
                    "o => window.aaeBench.configure(o)",
                    {
                        "modelId": model_id,
                        "requestAdapterOptions": browser.request_adapter_options(adapter) if device == "webgpu" else None,
                        "device": device,
                    },
                )

                say(f"cold load of {model_id} on {route}")
                srv.access_log.clear()
                cold = page.evaluate("() => window.aaeBench.load()")
                cold_req, cold_bytes = _fetched(srv, models_prefix)
                say(f"cold load {cold['seconds']:.1f} s ({cold_bytes / 1e6:.1f} MB fetched) on {cold['device']}: {cold['adapter']}")
                if cold["device"] != device:
                    raise RuntimeError(f"the engine loaded {model_id} on {cold['device']!r}, not {device!r}")

                srv.access_log.clear()
                warm = page.evaluate("() => window.aaeBench.load()")
                warm_req, warm_bytes = _fetched(srv, models_prefix)
                say(f"warm load {warm['seconds']:.1f} s ({warm_req} model files fetched)")

                request = {"prompt": prompt, "maxTokens": max_tokens, "temperature": temperature}
                say("warm-up request (2 tokens)")
                first = page.evaluate("r => window.aaeBench.generate(r)", {**request, "maxTokens": min(2, max_tokens)})
                say(f"measured request ({max_tokens} tokens)")
                t0 = time.perf_counter()
                r = page.evaluate("r => window.aaeBench.generate(r)", request)
                wall = time.perf_counter() - t0
                so = None
                if structured:
                    from ..bench import STRUCTURED_SCHEMA

                    say("structured output: a json_schema request, its grammar replayed")
                    so = page.evaluate("r => window.aaeBench.grammarCost(r)", {"schema": STRUCTURED_SCHEMA, "maxTokens": 96})
                if errors:
                    raise RuntimeError(f"the bench page reported errors: {errors}")
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)

    usage = r["usage"]
    return {
        "model": model_id,
        "quantization": config["quantization"],
        "device": cold["device"],
        "adapter_route": route,
        "adapter": cold["adapter"],
        "user_agent": env["userAgent"],
        "prompt": prompt,
        "text": r["text"],
        "ids": [*r["promptIds"], *r["ids"]],
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "finish_reason": r["finishReason"],
        "temperature": temperature,
        "load_s": cold["seconds"],
        "warm_load_s": warm["seconds"],
        "cold_fetched_bytes": cold_bytes,
        "cold_fetched_requests": cold_req,
        "warm_fetched_bytes": warm_bytes,
        "warm_fetched_requests": warm_req,
        "first_request_ttft_s": first["firstTokenS"],
        "ttft_s": r["firstTokenS"],
        "prefill_tok_s": usage["prefill_tokens_per_s"],
        "decode_tok_s": usage["decode_tokens_per_s"],
        "request_s": r["seconds"],
        "request_wall_s": wall,
        "wasm_bytes": wasm.stat().st_size,
        "weights_bytes": manifest["total_bytes"],
        "num_shards": len(manifest["shards"]),
        "engine_js_bytes": engine_js.stat().st_size,
        "structured": None if so is None else {
            "tokens": so["tokens"], "finish_reason": so["finishReason"], "grammar_ms_per_token": so["grammarMsPerToken"],
            "decode_ms_per_token": 1000 / usage["decode_tokens_per_s"] if usage["decode_tokens_per_s"] else None,
            "share_of_step": so["grammarMsPerToken"] * usage["decode_tokens_per_s"] / 1000 if usage["decode_tokens_per_s"] else None,
            "text": so["text"],
        },
    }


def format_web_bench(r: dict[str, Any]) -> str:
    """A human-readable report of run_web_bench's result."""
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    secs = lambda s: "n/a" if s is None else f"{s:.2f} s"  # noqa: E731
    lines = [
        f"model            {r['model']} ({r['quantization']})",
        f"device           {r['device']}",
        f"adapter          {r['adapter_route']}: {r['adapter']}",
        f"browser          {r['user_agent']}",
        f"download         {r['device']} library {mb(r['wasm_bytes'])}, weights {mb(r['weights_bytes'])} in {r['num_shards']} shards, "
        f"engine JS {mb(r['engine_js_bytes'])}",
        f"load, cold       {secs(r['load_s'])}  (empty cache; fetched {mb(r['cold_fetched_bytes'])})",
        f"load, warm       {secs(r['warm_load_s'])}  (from the browser cache; fetched {r['warm_fetched_requests']} model files)",
        f"first request    time to first token {secs(r['first_request_ttft_s'])} (kernels compiled on first use)",
        f"time to 1st tok  {secs(r['ttft_s'])}  ({r['prompt_tokens']} prompt tokens)",
        f"prefill          {r['prefill_tok_s']:.2f} tokens/s",
        f"decode           {r['decode_tok_s']:.2f} tokens/s  ({r['completion_tokens']} tokens)",
    ]
    if r.get("structured"):
        so = r["structured"]
        lines.append(f"structured       the grammar costs {so['grammar_ms_per_token']:.3f} ms a token, "
                     f"{100 * (so['share_of_step'] or 0):.1f}% of a {so['decode_ms_per_token'] or 0:.1f} ms decode step "
                     f"(json_schema, {so['tokens']} tokens, {so['finish_reason']})")
    lines += [
        "",
        f"{r['prompt']}{r['text']}",
    ]
    return "\n".join(lines)


def run_web_bench_devices(model: str, devices: list[Device], **kwargs: Any) -> list[dict[str, Any]]:
    """run_web_bench once per device (in order) on one model folder: built (or reused) by the first run."""
    if not devices:
        raise ValueError("no device to benchmark")
    results: list[dict[str, Any]] = []
    for device in devices:
        r = run_web_bench(model, device=device, **kwargs)
        if not results and not (Path(model) / artifact.CHAT_CONFIG).is_file():
            # The later runs take the folder the first one built (no second freshness check).
            model = str(Path(kwargs.get("output", Path("dist"))) / r["model"])
        results.append(r)
    return results


def format_web_bench_table(results: list[dict[str, Any]]) -> str:
    """Several runs of run_web_bench side by side: one row per route, then each run's text."""
    head = ["route", "device", "cold load", "warm load", "first token", "prefill tok/s", "decode tok/s", "library"]
    rows = [
        [
            r["adapter_route"], r["device"], f"{r['load_s']:.2f} s", f"{r['warm_load_s']:.2f} s", f"{r['ttft_s']:.2f} s",
            f"{r['prefill_tok_s']:.2f}", f"{r['decode_tok_s']:.2f}", f"{r['wasm_bytes'] / 1e6:.1f} MB",
        ]
        for r in results
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    first = results[0]
    out = [
        f"model    {first['model']} ({first['quantization']}), {first['prompt_tokens']} prompt tokens, {first['completion_tokens']} new tokens",
        f"browser  {first['user_agent']}",
        "",
        line(head),
        *(line(row) for row in rows),
        "",
    ]
    for r in results:
        out += [f"[{r['adapter_route']}] adapter: {r['adapter']}", f"[{r['adapter_route']}] {r['prompt']}{r['text']}"]
    return "\n".join(out)

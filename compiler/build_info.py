"""What a compiled library is built for (its `_metadata` and the library cache key), computed
without loading TVM's compiler.

The run path (chat, serve, bench, the engines) looks a cached library up by this key before it
knows whether anything must be compiled, and a process that only runs a library loads TVM's
runtime library alone (runtime/tvm_lib.py: ~180 MB less resident memory than libtvm_compiler.so,
which carries LLVM). So nothing here imports TVM's compiler: the TVM version is read from the
installed package's metadata, and the host CPU's LLVM name is remembered per CPU in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

DEVICES = ("cpu", "cuda", "webgpu", "wasm")

# Asks LLVM (full TVM) for the host CPU's name, in a child process: its memory is not ours.
# PyTorch is kept out only to make the child start faster.
_LLVM_CPU_SNIPPET = (
    "import sys; sys.modules['torch'] = None; import tvm; print(tvm.target.codegen.llvm_get_system_cpu())"
)


def tvm_version() -> str:
    """`tvm.__version__`, without importing TVM when it is not loaded yet."""
    tvm = sys.modules.get("tvm")
    if tvm is not None:
        return str(tvm.__version__)
    from importlib import metadata

    try:
        # The same string: tvm.__version__ comes from tvm/_version.py, which the wheel's build
        # writes from the distribution's version (tests/test_runtime_only.py checks they agree).
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:  # a source build of TVM: ask it
        import tvm as tvm_module

        return str(tvm_module.__version__)


def _llvm_in_process() -> bool:
    """Whether this process has TVM's compiler (and so LLVM) loaded already."""
    tvm = sys.modules.get("tvm")
    return tvm is not None and not getattr(tvm.base, "_RUNTIME_ONLY", False)


def _cpu_identity() -> str | None:
    """A fingerprint of what LLVM reads to name the host CPU (vendor, family, model, stepping,
    feature flags), from /proc/cpuinfo; None where there is none (then LLVM is always asked)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    first = text.split("\n\n", 1)[0]
    keep = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags", "Features", "CPU implementer",
            "CPU architecture", "CPU variant", "CPU part", "CPU revision", "isa", "uarch")
    fields = {}
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keep:
            fields[key.strip()] = value.strip()
    if not fields:
        return None
    # LLVM's answer also depends on its version, which comes with TVM's.
    material = json.dumps({"machine": platform.machine(), "tvm": tvm_version(), **fields}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _host_cpu_file() -> Path:
    from .pipeline import cache_home  # pipeline imports this module

    return cache_home() / "host_cpu.json"


def _read_known_cpus() -> dict[str, str]:
    try:
        known = json.loads(_host_cpu_file().read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _remember_cpu(identity: str, name: str) -> None:
    known = _read_known_cpus()
    if known.get(identity) == name:
        return
    known[identity] = name
    try:
        from .artifact import atomic_write_bytes

        atomic_write_bytes(_host_cpu_file(), (json.dumps(known, indent=1, sort_keys=True) + "\n").encode())
    except OSError:
        pass  # a read-only cache: the next run asks LLVM again


def _ask_llvm() -> str:
    if _llvm_in_process():
        import tvm

        return str(tvm.target.codegen.llvm_get_system_cpu())
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    done = subprocess.run([sys.executable, "-c", _LLVM_CPU_SNIPPET], env=env, capture_output=True, text=True, check=False)
    name = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not name:
        raise RuntimeError(f"could not ask LLVM for the host CPU's name: {done.stderr.strip()[-2000:]}")
    return name


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. "emeraldrapids", "znver4"): the CPU libraries
    are built for the machine that builds them, and their cache key includes it.

    LLVM's own answer (`llvm_get_system_cpu`), remembered in the cache per CPU fingerprint so a
    process without TVM's compiler gets the same name without loading LLVM. Where the compiler
    is loaded it is asked directly; elsewhere, on a CPU not seen before, a child process asks it."""
    identity = _cpu_identity()
    if identity is not None and not _llvm_in_process():
        known = _read_known_cpus().get(identity)
        if known:
            return known
    name = _ask_llvm()
    if identity is not None:
        _remember_cpu(identity, name)
    return name


def compile_metadata(chat_config: dict[str, Any], device: str, debug_functions: bool) -> dict[str, Any]:
    """What the library was built for; stored in the library as `_metadata` (a JSON string)."""
    return {
        "model_id": chat_config["model_id"],
        "model_type": chat_config["model_type"],
        "quantization": chat_config["quantization"],
        "device": device,
        "context_window_size": chat_config["context_window_size"],
        "prefill_chunk_size": chat_config["prefill_chunk_size"],
        "sliding_window_size": chat_config["sliding_window_size"],
        "max_batch_size": chat_config["max_batch_size"],
        "vocab_size": chat_config["model_config"]["vocab_size"],
        "hidden_size": chat_config["model_config"]["hidden_size"],
        "debug_functions": debug_functions,
        "cpu": host_cpu() if device == "cpu" else None,  # what the library's vector code needs
        "tvm_version": tvm_version(),
    }

"""Build TVM's WebAssembly runtime from the installed wheel and link model ``.wasm`` files.

A model library for the browser is one ``.wasm`` file holding
  * the model's host code (the Relax VM executable plus TIR host functions), which TVM emits as
    a wasm32 object file, together with the WGSL kernels packed as a data blob, and
  * TVM's C++ runtime (Relax VM, paged KV cache, WebGPU device glue, tvmjs support), which the
    JS side (npm ``@mlc-ai/web-runtime``, "tvmjs") drives through its exported C API.

The runtime part does not depend on the model, so it is compiled once with Emscripten into three
object files under ``wasm_runtime/build/`` and reused for every link. The sources are the
installed ``apache-tvm`` / ``apache-tvm-ffi`` wheels' own copies (``tvm/web/emcc/*.cc``,
``tvm/src/runtime``, ``tvm/include``, ``tvm_ffi/src``, ``tvm_ffi/include``), so the runtime always
matches the compiler that produced the model. Nine small headers the wheel does not ship are
provided by this project in ``wasm_runtime/include/`` (same relative paths as in TVM's tree).

Toolchain route (see /work/shared/TOOLCHAIN.md): Debian's emcc 3.1.6 (clang/lld 14) compiles the
runtime; TVM's LLVM 22 emits the model as a wasm *object file* (not bitcode, which lld 14 cannot
read), and emcc links both. Linking at ``-O1`` takes 1-4 s (most of it TVM writing the
model's objects).

Public API::

    ensure_built(progress=True, force=False) -> list[Path]       # runtime objects, cached
    link_model_wasm(executable, out_path, opt_level="-O1") -> LinkResult
    webgpu_target() -> tvm.target.Target                          # webgpu + wasm32 host
    required_webgpu_features(executable) -> list[str]             # e.g. ["shader-f16"]

Command line::

    python -m sphere_aae.wasm_runtime build [--force] [--quiet]
    python -m sphere_aae.wasm_runtime status
    python -m sphere_aae.wasm_runtime clean
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import wasm_runtime_patches
from .artifact import atomic_write_bytes
from .wasm_runtime_patches import PATCHES

if TYPE_CHECKING:  # tvm is imported lazily: `ensure_built` must stay fast and tvm-free.
    import tvm

__all__ = [
    "RUNTIME_SOURCES",
    "LinkResult",
    "RuntimeBuild",
    "WasmToolchainError",
    "build_dir",
    "build_runtime",
    "ensure_built",
    "link_key",
    "link_model_wasm",
    "required_webgpu_features",
    "runtime_dir",
    "runtime_status",
    "webgpu_target",
]

# Bump when the build recipe changes in a way the hashed inputs do not capture.
_BUILDER_VERSION = "2"

# Translation units of TVM's web runtime, as listed in the wheel's tvm/web/Makefile. Each is a
# "unity" file that #includes the runtime .cc files it needs, so three compiles cover everything.
RUNTIME_SOURCES: tuple[str, ...] = ("wasm_runtime.cc", "tvmjs_support.cc", "webgpu_runtime.cc")

# tvm/web/Makefile compiles with -O3. The runtime's hot paths are small (VM dispatch, KV-cache
# bookkeeping; the real work runs in WGSL on the GPU), so -O2 gives up nothing that matters, and
# the build is cached.
_RUNTIME_OPT = "-O2"
_RUNTIME_CFLAGS: tuple[str, ...] = (_RUNTIME_OPT, "-std=c++17", "-Wno-ignored-attributes")
# Our own sources (wasm_runtime/src) also use wasm atomics: thread_pool.cc's launch counter and
# futex waits. TVM's units stay single-threaded code (see thread_pool.cc for why that is safe).
_OWN_CFLAGS: tuple[str, ...] = ("-matomics", "-mbulk-memory")

# Link flags from tvm.support.emcc.create_tvmjs_wasm (what tvmjs expects of a model library):
# a standalone reactor module (no main), BigInt for i64 in the JS API, growable memory, and
# unresolved imports allowed because tvmjs supplies TVMFFIWasmSafeCall/FunctionDeleter.
_LINK_FLAGS: tuple[str, ...] = (
    "--no-entry",
    "-s", "WASM_BIGINT=1",
    "-s", "ERROR_ON_UNDEFINED_SYMBOLS=0",
    "-s", "STANDALONE_WASM=1",
    "-s", "ALLOW_MEMORY_GROWTH=1",
    "-s", "TOTAL_MEMORY=160MB",
)  # fmt: skip
_OPT_LEVELS = ("-O0", "-O1", "-O2", "-O3", "-Os", "-Oz")
# A CPU library's memory is shared, so compute threads (Web Workers on the same memory) can run
# its parallel loops (wasm_runtime/src/thread_pool.cc). It is imported, as shared memory must be
# created by the page and handed to every worker. Emscripten 3.1.6 refuses pthreads with
# STANDALONE_WASM, so these are wasm-ld's own flags; its feature check is off because TVM's units
# and libc are single-threaded code, which only the launching thread runs.
_SHARED_MEMORY_LINK_FLAGS: tuple[str, ...] = ("-Wl,--shared-memory", "-Wl,--import-memory", "-Wl,--no-check-features")

# Debian packages Node's modules (acorn, ...) here; emcc's JS tools fail without it.
_DEBIAN_NODE_PATH = "/usr/share/nodejs"

_PREFIX = "[wasm_runtime]"


class WasmToolchainError(RuntimeError):
    """The wasm toolchain is missing or failed; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class RuntimeBuild:
    """Result of :func:`build_runtime`."""

    objects: tuple[Path, ...]  # wasm object files to link, in link order
    key: str  # hash of every input; names the build in the stamp file
    rebuilt: bool  # False when the cached objects were up to date
    seconds: float  # wall time of this call


@dataclasses.dataclass(frozen=True)
class LinkResult:
    """Result of :func:`link_model_wasm`."""

    path: Path
    size_bytes: int
    link_seconds: float  # TVM object export + emcc link
    runtime_seconds: float  # time spent in ensure_built (near 0 when cached)


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def runtime_dir() -> Path:
    """The ``wasm_runtime/`` folder (our headers, harness, build output).

    ``AAE_WASM_RUNTIME_DIR`` overrides it; by default it is the repository folder next to the
    ``compiler/`` package (the package is installed in editable mode).
    """
    env = os.environ.get("AAE_WASM_RUNTIME_DIR")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "wasm_runtime"
    if not (path / "include").is_dir():
        raise WasmToolchainError(
            f"wasm runtime folder not found at {path} (need its include/ subfolder). Run from a "
            "checkout of the repository with `pip install -e .`, or set AAE_WASM_RUNTIME_DIR."
        )
    return path


def build_dir() -> Path:
    """Where objects, logs and the stamp go (``AAE_WASM_RUNTIME_BUILD_DIR`` overrides)."""
    env = os.environ.get("AAE_WASM_RUNTIME_BUILD_DIR")
    return Path(env) if env else runtime_dir() / "build"


def _package_dir(name: str, dist: str) -> Path:
    """Directory of an installed package, found without importing it (importing tvm is slow)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise WasmToolchainError(f"Python package `{name}` not found: pip install {dist}")
    return Path(next(iter(spec.submodule_search_locations)))


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class _Sources:
    """Where each part of the staged source tree comes from."""

    tvm_dir: Path
    ffi_dir: Path
    ours: Path  # wasm_runtime/include
    own_src: Path  # wasm_runtime/src (optional extra C++ of ours)

    def tree_map(self) -> list[tuple[Path, str]]:
        """(source directory, destination relative to the stage root), wheel first."""
        return [
            (self.tvm_dir / "src" / "runtime", "src/runtime"),
            (self.tvm_dir / "include", "include"),
            (self.tvm_dir / "web" / "emcc", "web/emcc"),
            (self.ffi_dir / "src", "3rdparty/tvm-ffi/src"),
            (self.ffi_dir / "include", "3rdparty/tvm-ffi/include"),
        ]


def _locate_sources() -> _Sources:
    tvm_dir = _package_dir("tvm", "apache-tvm")
    ffi_dir = _package_dir("tvm_ffi", "apache-tvm-ffi")
    for need in (tvm_dir / "web" / "emcc" / "wasm_runtime.cc", tvm_dir / "src" / "runtime",
                 ffi_dir / "src" / "ffi", ffi_dir / "include" / "tvm" / "ffi"):  # fmt: skip
        if not need.exists():
            raise WasmToolchainError(
                f"{need} is missing: the installed TVM wheel lacks the web runtime sources. "
                "Reinstall it: pip install --force-reinstall 'apache-tvm>=0.27,<0.28'"
            )
    here = runtime_dir()
    return _Sources(tvm_dir, ffi_dir, here / "include", here / "src")


# --------------------------------------------------------------------------------------------
# Toolchain
# --------------------------------------------------------------------------------------------


def _emcc_env() -> dict[str, str]:
    """Environment for emcc: NODE_PATH must reach Debian's node modules (acorn, ...)."""
    env = dict(os.environ)
    if Path(_DEBIAN_NODE_PATH).is_dir():
        parts = [p for p in env.get("NODE_PATH", "").split(os.pathsep) if p]
        if _DEBIAN_NODE_PATH not in parts:
            env["NODE_PATH"] = os.pathsep.join([*parts, _DEBIAN_NODE_PATH])
    return env


def _find_emcc() -> str:
    emcc = os.environ.get("EMCC") or shutil.which("emcc")
    if not emcc:
        raise WasmToolchainError(
            "emcc not found: run `make setup` or `apt-get install emscripten` "
            "(or set EMCC to the emcc executable)"
        )
    if not shutil.which("node"):
        raise WasmToolchainError("emcc needs Node.js: apt-get install nodejs")
    return emcc


def _emcc_identity(emcc: str) -> str:
    """A cheap fingerprint of the Emscripten install (version + config), for the build key.

    Reading files avoids `emcc --version`, which takes about a second (it boots Python + node).
    """
    real = Path(emcc).resolve()
    parts = [str(real)]
    for candidate in (real.parent, real.parent.parent / "share" / "emscripten"):
        version = candidate / "emscripten-version.txt"
        if version.is_file():
            parts.append(version.read_text().strip())
            config = candidate / ".emscripten"
            if config.is_file():
                parts.append(config.read_text())
            break
    else:  # unknown layout: ask emcc itself
        out = subprocess.run(
            [emcc, "--version"], check=False, capture_output=True, text=True, env=_emcc_env()
        )
        parts.append(out.stdout.splitlines()[0] if out.stdout else out.stderr)
    # These environment variables change which clang/libs emcc uses.
    parts += [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("EM_")]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Runtime build
# --------------------------------------------------------------------------------------------


def _iter_files(root: Path) -> Iterator[Path]:
    """Regular files under root, sorted, skipping Python caches."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def _plan_stage(src: _Sources) -> dict[str, Path]:
    """Map each staged relative path to the file it is copied from.

    The wheel's files come first; our headers only fill the gaps, so that if a later wheel
    ships one of them, the wheel's own version (which matches its sources) wins.
    """
    plan: dict[str, Path] = {}
    for root, dest in src.tree_map():
        for f in _iter_files(root):
            plan[f"{dest}/{f.relative_to(root).as_posix()}"] = f
    for f in _iter_files(src.ours):
        plan.setdefault(f.relative_to(src.ours).as_posix(), f)
    return plan


def _own_sources(src: _Sources) -> list[Path]:
    """Extra C++ translation units of ours (wasm_runtime/src/*.cc), if any."""
    return sorted(src.own_src.glob("*.cc")) if src.own_src.is_dir() else []


def _include_flags(stage: Path) -> list[str]:
    # Same search path as tvm/web/Makefile, relative to the staged tree: TVM root (for the
    # unity files' "src/runtime/..." and "3rdparty/tvm-ffi/src/..." includes), TVM include,
    # tvm-ffi include (also holds dlpack/), compiler-rt (builtin_fp16.h).
    return [
        f"-I{stage}",
        f"-I{stage / 'include'}",
        f"-I{stage / '3rdparty' / 'tvm-ffi' / 'include'}",
        f"-I{stage / '3rdparty' / 'compiler-rt'}",
    ]


def _build_key(plan: dict[str, Path], own: list[Path], emcc_id: str) -> str:
    h = hashlib.sha256()
    for item in (
        f"builder={_BUILDER_VERSION}",
        f"apache-tvm={_dist_version('apache-tvm')}",
        f"apache-tvm-ffi={_dist_version('apache-tvm-ffi')}",
        "cflags=" + " ".join(_RUNTIME_CFLAGS),
        "own_cflags=" + " ".join(_OWN_CFLAGS),
        "emcc=" + emcc_id,
    ):
        h.update(item.encode() + b"\0")
    # Content, not mtimes: a reinstall of the same wheel must not force a 2-minute rebuild.
    for rel in sorted(plan):
        h.update(rel.encode() + b"\0" + plan[rel].read_bytes() + b"\0")
    for f in own:
        h.update(f"own/{f.name}".encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(b"patches\0" + Path(wasm_runtime_patches.__file__).read_bytes())
    return h.hexdigest()


def _object_names(own: list[Path]) -> list[str]:
    return [Path(s).stem + ".o" for s in RUNTIME_SOURCES] + [f"aae_{f.stem}.o" for f in own]


def _read_stamp(bdir: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((bdir / "stamp.json").read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _is_current(bdir: Path, key: str, names: list[str]) -> bool:
    stamp = _read_stamp(bdir)
    return (
        stamp is not None
        and stamp.get("key") == key
        and all((bdir / "obj" / n).is_file() for n in names)
    )


@contextlib.contextmanager
def _build_lock(bdir: Path) -> Iterator[None]:
    """Serialise builds across processes (parallel tests, two CLIs) with an flock."""
    bdir.mkdir(parents=True, exist_ok=True)
    with open(bdir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stage_tree(plan: dict[str, Path], stage: Path) -> None:
    """Copy the planned files into a fresh stage folder (replaced atomically)."""
    tmp = stage.with_name(stage.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, src in plan.items():
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for rel, fix in PATCHES.items():  # fixes to the wheel's runtime (wasm_runtime_patches.py)
        target = tmp / rel
        target.write_text(fix(target.read_text()))
    shutil.rmtree(stage, ignore_errors=True)
    os.replace(tmp, stage)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"{_PREFIX} {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class _CompileJob:
    source: Path
    obj: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log_fh: Any = None
    started: float = 0.0

    @property
    def tmp_obj(self) -> Path:
        return self.obj.with_name(self.obj.name + ".tmp")


def _compile_all(
    emcc: str, jobs: list[tuple[Path, Path]], stage: Path, logs: Path, progress: bool
) -> None:
    """Compile (source, object) pairs in parallel, one process per CPU core."""
    env = _emcc_env()
    logs.mkdir(parents=True, exist_ok=True)
    # Largest unit first: wasm_runtime.cc alone takes most of the build.
    pending = [_CompileJob(src, obj, logs / (src.name + ".log")) for src, obj in jobs]
    pending.sort(key=lambda j: j.source.name != "wasm_runtime.cc")
    running: list[_CompileJob] = []
    failures: list[str] = []
    max_jobs = max(1, os.cpu_count() or 1)
    try:
        while pending or running:
            while pending and len(running) < max_jobs:
                job = pending.pop(0)
                # file-prefix-map: __FILE__ in TVM's log/error messages reads "tvm/src/..."
                # instead of this machine's build path, and objects are reproducible.
                own = () if job.source.name in RUNTIME_SOURCES else _OWN_CFLAGS
                cmd = [emcc, *_RUNTIME_CFLAGS, *own, f"-ffile-prefix-map={stage}/=tvm/",
                       *_include_flags(stage), "-c", str(job.source), "-o", str(job.tmp_obj)]  # fmt: skip
                job.log_fh = open(job.log_path, "wb")  # noqa: SIM115 -- closed when the job ends
                job.log_fh.write((" ".join(cmd) + "\n\n").encode())
                job.log_fh.flush()
                # Own process group: emcc is a wrapper around clang, so stopping a job early
                # must signal the whole group, not just the wrapper.
                job.proc = subprocess.Popen(cmd, cwd=stage, env=env, stdout=job.log_fh,
                                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
                job.started = time.monotonic()
                running.append(job)
                _log(progress, f"compiling {job.source.name} ...")
            time.sleep(0.2)
            for job in list(running):
                assert job.proc is not None
                if job.proc.poll() is None:
                    continue
                running.remove(job)
                job.log_fh.close()
                if job.proc.returncode == 0:
                    os.replace(job.tmp_obj, job.obj)
                    _log(progress, f"compiled {job.source.name} in "
                                   f"{time.monotonic() - job.started:.0f} s")  # fmt: skip
                else:
                    tail = "\n".join(job.log_path.read_text(errors="replace").splitlines()[-25:])
                    failures.append(f"{job.source.name} (exit {job.proc.returncode}, "
                                    f"log {job.log_path}):\n{tail}")  # fmt: skip
    finally:
        # Interrupted (Ctrl-C) or an error above: stop the compiles this call started.
        for job in running:
            assert job.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.proc.pid, signal.SIGKILL)
            job.proc.wait()
            job.log_fh.close()
            job.tmp_obj.unlink(missing_ok=True)
    if failures:
        raise WasmToolchainError("compiling the TVM web runtime failed:\n" + "\n\n".join(failures))


def build_runtime(progress: bool = True, force: bool = False) -> RuntimeBuild:
    """Compile TVM's web runtime into wasm objects unless the cached ones are current.

    The cache key hashes the content of every staged source file (wheel + our headers + our
    own .cc files), the TVM / TVM-FFI versions, the compile flags and the Emscripten install.
    """
    t0 = time.monotonic()
    emcc = _find_emcc()
    src = _locate_sources()
    plan = _plan_stage(src)
    own = _own_sources(src)
    key = _build_key(plan, own, _emcc_identity(emcc))
    names = _object_names(own)
    bdir = build_dir()
    objects = tuple(bdir / "obj" / n for n in names)

    if not force and _is_current(bdir, key, names):  # fast path without taking the lock
        return RuntimeBuild(objects, key, False, time.monotonic() - t0)

    with _build_lock(bdir):
        if not force and _is_current(bdir, key, names):  # another process just built it
            return RuntimeBuild(objects, key, False, time.monotonic() - t0)
        _log(progress, f"building TVM web runtime (apache-tvm {_dist_version('apache-tvm')}, "
                       f"{_RUNTIME_OPT}) into {bdir}; takes 2-5 minutes on 2 cores")  # fmt: skip
        (bdir / "stamp.json").unlink(missing_ok=True)  # never leave a stale "current" stamp
        stage = bdir / "stage"
        _stage_tree(plan, stage)
        (bdir / "obj").mkdir(parents=True, exist_ok=True)
        jobs = [
            (stage / "web" / "emcc" / s, bdir / "obj" / n) for s, n in zip(RUNTIME_SOURCES, names)
        ]
        jobs += [(f, bdir / "obj" / f"aae_{f.stem}.o") for f in own]
        _compile_all(emcc, jobs, stage, bdir / "logs", progress)
        seconds = time.monotonic() - t0
        stamp = {
            "key": key,
            "apache_tvm": _dist_version("apache-tvm"),
            "apache_tvm_ffi": _dist_version("apache-tvm-ffi"),
            "cflags": list(_RUNTIME_CFLAGS),
            "objects": names,
            "source_files": len(plan) + len(own),
            "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_bytes(bdir / "stamp.json", (json.dumps(stamp, indent=2) + "\n").encode())
        _log(progress, f"runtime built in {seconds:.0f} s")
        return RuntimeBuild(objects, key, True, seconds)


def ensure_built(progress: bool = True, force: bool = False) -> list[Path]:
    """Return the runtime's wasm object files, building them first if stale (2-5 min)."""
    return list(build_runtime(progress=progress, force=force).objects)


def runtime_status() -> dict[str, Any]:
    """Whether the cached runtime is current, plus its stamp (for `status` and diagnostics)."""
    emcc = _find_emcc()
    src = _locate_sources()
    plan = _plan_stage(src)
    own = _own_sources(src)
    key = _build_key(plan, own, _emcc_identity(emcc))
    bdir = build_dir()
    names = _object_names(own)
    return {
        "build_dir": str(bdir),
        "up_to_date": _is_current(bdir, key, names),
        "key": key,
        "objects": [str(bdir / "obj" / n) for n in names],
        "stamp": _read_stamp(bdir),
        "emcc": emcc,
    }


def link_key() -> str:
    """What a linked model library depends on besides the model: the runtime's build key (its
    sources, patches, flags and Emscripten) and this file (the link flags and post-link steps).
    Part of the library cache key for the wasm devices (pipeline.library_key)."""
    status = runtime_status()
    return hashlib.sha256((status["key"] + "\0").encode() + Path(__file__).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Model linking
# --------------------------------------------------------------------------------------------


def webgpu_target() -> tvm.target.Target:
    """WebGPU device code with a wasm32 host: the target to pass to ``relax.build``.

    TVM 0.27 rejects ``-mtriple`` strings, hence the dicts. relax.build sets the system-lib
    prefix for wasm hosts itself; setting ``system_lib_prefix`` by hand crashes.
    """
    import tvm

    return tvm.target.Target(
        {"kind": "webgpu"}, host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}
    )


def _export_root(executable: Any) -> Any:
    """The runtime module that owns export_library (a VMExecutable or a runtime.Module)."""
    if not hasattr(executable, "export_library"):
        raise TypeError(
            "link_model_wasm expects the result of tvm.relax.build(...) (relax.VMExecutable) or "
            f"a tvm.runtime.Module, got {type(executable).__name__}"
        )
    return getattr(executable, "mod", executable)


def _all_modules(root: Any) -> list[Any]:
    """The root module and everything it imports (VMExecutable -> llvm host -> webgpu)."""
    return list(root._collect_from_import_tree(lambda _m: True))  # pylint: disable=protected-access


def _check_wasm_host(root: Any) -> None:
    """Fail early (and clearly) when the executable was not built for a wasm32 host."""
    for mod in _all_modules(root):
        if mod.kind == "llvm":
            triple = str(mod.get_function("_get_target_string")())
            if "wasm32" not in triple:
                raise ValueError(
                    "the executable's host code targets "
                    f"{triple!r}, not wasm32: build it with "
                    "relax.build(mod, target=sphere_aae.wasm_runtime.webgpu_target())"
                )


def required_webgpu_features(executable: Any) -> list[str]:
    """WebGPU features the WGSL kernels need (e.g. ``shader-f16``) for requestDevice."""
    features: set[str] = set()
    for mod in _all_modules(_export_root(executable)):
        if mod.kind != "webgpu":
            continue
        wgsl = str(mod.inspect_source())
        if "enable f16;" in wgsl:
            features.add("shader-f16")
        if "enable subgroups;" in wgsl:
            features.add("subgroups")
    return sorted(features)


def _make_fcompile(emcc: str, runtime_objects: Sequence[Path], link_flags: Sequence[str]) -> Any:
    """An ``fcompile`` for export_library that links with emcc.

    ``object_format = "o"`` makes TVM's LLVM 22 emit wasm object files: Emscripten 3.1.6's
    lld 14 cannot read LLVM 22 bitcode (TVM's own create_tvmjs_wasm asks for "bc").
    """

    def fcompile(output: str, objects: Sequence[str], options: Sequence[str] | None = None,
                 **_: Any) -> None:  # fmt: skip
        cmd = [emcc, *link_flags, "-o", output, *map(str, runtime_objects), *objects]
        cmd += list(options or ())
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_emcc_env())
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()
            hint = ""
            if "acorn" in out:
                hint = "\nhint: emcc needs NODE_PATH=/usr/share/nodejs (Debian's node modules)"
            elif "opaque pointers" in out.lower() or "Unknown attribute kind" in out:
                hint = "\nhint: an LLVM bitcode input reached lld 14; TVM must emit .o objects"
            raise WasmToolchainError(f"emcc link failed:\n$ {' '.join(cmd)}\n{out[-4000:]}{hint}")

    fcompile.object_format = "o"  # type: ignore[attr-defined]
    return fcompile


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_leb128(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def export_imported_memory(path: Path) -> None:
    """Add the export ``memory`` (memory 0) to a module that imports its memory, in place.

    tvmjs and its Emscripten shim read the memory from the exports; wasm-ld 14 (Emscripten
    3.1.6) has no ``--export-memory``. Rewrites the export section (id 7) with one more entry.
    """
    data = path.read_bytes()
    at, out = 8, bytearray(data[:8])
    while at < len(data):
        section_id = data[at]
        size, body = _read_leb128(data, at + 1)
        end = body + size
        if section_id == 7:
            count, entries = _read_leb128(data, body)
            name = b"memory"
            payload = _leb128(count + 1) + data[entries:end] + _leb128(len(name)) + name + b"\x02\x00"
            out += bytes([7]) + _leb128(len(payload)) + payload + data[end:]
            path.write_bytes(bytes(out))
            return
        out += data[at:end]
        at = end
    raise WasmToolchainError(f"{path}: no export section to add the memory to")


def link_model_wasm(
    executable: Any,
    out_path: Path | str,
    opt_level: str = "-O1",
    *,
    strip_names: bool = True,
    extra_link_flags: Sequence[str] = (),
    progress: bool = True,
    webgpu: bool = True,
    shared_memory: bool | None = None,
) -> LinkResult:
    """Link a ``relax.build(..., target=webgpu_target())`` result into a model ``.wasm``.

    webgpu: link TVM's WebGPU device glue (``webgpu_runtime.o``). False for a CPU-only library
        (``compile --device wasm``: LLVM wasm32 kernels, no WGSL), which then needs no WebGPU
        device to load.

    shared_memory: import a shared memory (and export it again, as tvmjs reads it from the
        exports) so the browser engine can run parallel loops on compute threads. Default: for
        a CPU library. The engine turns the import into a plain one where threads cannot run.

    Builds the runtime first if needed. The file is written atomically: a temporary file in
    the destination folder, then ``os.replace``.

    opt_level: emcc link optimisation. ``-O1`` links in seconds; ``-O2`` and above also run
        binaryen's wasm-opt over the whole runtime (a minute or more on 2 cores) for ~25%
        smaller output (1-layer test model: 5.3 MB at -O1, 4.0 MB at -O2).
    strip_names: drop the wasm "name" section (about 1.4 MB). Keep it (False) to see C++
        function names in browser stack traces.
    """
    if opt_level not in _OPT_LEVELS:
        raise ValueError(f"opt_level must be one of {_OPT_LEVELS}, got {opt_level!r}")
    out_path = Path(out_path)
    if out_path.suffix != ".wasm":
        raise ValueError(
            f"out_path must end in .wasm (emcc picks the output kind from it): {out_path}"
        )
    root = _export_root(executable)
    _check_wasm_host(root)

    t0 = time.monotonic()
    runtime_objects = ensure_built(progress=progress)
    if not webgpu:
        runtime_objects = [o for o in runtime_objects if o.name != "webgpu_runtime.o"]
    t1 = time.monotonic()
    emcc = _find_emcc()
    flags = [opt_level, *_LINK_FLAGS]
    if opt_level in ("-O0", "-O1"):
        # emcc keeps the name section below -O2. Strip it in the linker -- but only here:
        # --strip-all also drops the target_features section, and from -O2 on emcc derives
        # wasm-opt's feature flags from it (without it wasm-opt assumes MVP and rejects the
        # sign-ext / bulk-memory ops that TVM's LLVM 22 emits).
        if strip_names:
            flags.append("-Wl,--strip-all")
    elif not strip_names:
        flags.append("--profiling-funcs")  # -O2+ drops names unless asked to keep them
    if shared_memory is None:
        shared_memory = not webgpu
    if shared_memory:
        flags += _SHARED_MEMORY_LINK_FLAGS
    flags += list(extra_link_flags)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target so the final rename is atomic; ".wasm" suffix for emcc.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".tmp.wasm",
                                    dir=out_path.parent)  # fmt: skip
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryDirectory(prefix="aae-wasm-link-") as workspace:
            executable.export_library(
                str(tmp), fcompile=_make_fcompile(emcc, runtime_objects, flags),
                workspace_dir=workspace,
            )  # fmt: skip
        if shared_memory:
            export_imported_memory(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    t2 = time.monotonic()
    size = out_path.stat().st_size
    _log(progress, f"linked {out_path.name}: {size / 1e6:.2f} MB in {t2 - t1:.1f} s ({opt_level})")
    return LinkResult(out_path, size, t2 - t1, t1 - t0)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sphere_aae.wasm_runtime",
        description="Build (cached) TVM's WebAssembly runtime objects for linking model .wasm files.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", help="build the runtime objects if stale")
    p_build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p_build.add_argument("--quiet", action="store_true", help="no progress output")
    sub.add_parser("status", help="print whether the cached runtime is current (exit 1 if not)")
    sub.add_parser("clean", help="delete the build folder")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "build":
            result = build_runtime(progress=not args.quiet, force=args.force)
            if not result.rebuilt and not args.quiet:
                _log(True, f"up to date ({result.key[:12]})")
            for obj in result.objects:
                print(obj)
            return 0
        if args.cmd == "status":
            status = runtime_status()
            print(json.dumps(status, indent=2))
            return 0 if status["up_to_date"] else 1
        if args.cmd == "clean":
            shutil.rmtree(build_dir(), ignore_errors=True)
            return 0
    except WasmToolchainError as err:
        print(f"{_PREFIX} error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Which of TVM's native libraries this process loads.

`import tvm` loads libtvm_runtime.so and libtvm_compiler.so; the compiler carries LLVM and adds
~180 MB of resident memory (SmolLM2 q4f32_1 under `sphere_aae bench`: see README, Benchmarks).
Running a compiled CPU library needs only the runtime: `tvm.runtime.load_module`, the Relax VM
and its builtins (paged KV cache included) all live in libtvm_runtime.so. TVM 0.27 loads the
runtime alone when `TVM_USE_RUNTIME_LIB=1` is set at its import (tvm/base.py); `tvm.relax`,
`tvm.target` codegen and everything that compiles are then unavailable in the process.

The engines opt in when their library is already compiled (scheduler.py); a library that must
be compiled later in such a process is compiled in a child process (pipeline.ensure_library).
`SPHERE_AAE_RUNTIME_ONLY=0` turns this off, for a program that wants the engine and TVM's
compiler in one process.
"""

from __future__ import annotations

import os
import sys

_TVM_ENV = "TVM_USE_RUNTIME_LIB"  # read by tvm/base.py when tvm is imported
OPT_OUT_ENV = "SPHERE_AAE_RUNTIME_ONLY"


def runtime_only() -> bool:
    """Whether TVM is loaded in this process without its compiler."""
    tvm = sys.modules.get("tvm")
    return tvm is not None and bool(getattr(tvm.base, "_RUNTIME_ONLY", False))


def import_runtime_only() -> bool:
    """Import TVM with libtvm_runtime.so alone, unless TVM is imported already (then it stays as
    it is) or the user opted out. Returns whether this process's TVM is runtime-only."""
    if "tvm" not in sys.modules and os.environ.get(OPT_OUT_ENV, "1") != "0":
        previous = os.environ.get(_TVM_ENV)
        os.environ[_TVM_ENV] = "1"
        try:
            import tvm  # noqa: F401
        finally:
            # Only this import reads it: child processes (a compile, bench workers) start with full TVM.
            if previous is None:
                del os.environ[_TVM_ENV]
            else:
                os.environ[_TVM_ENV] = previous
    return runtime_only()

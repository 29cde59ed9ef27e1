"""The run path loads TVM's runtime library alone when the model library is compiled already:
no libtvm_compiler.so (LLVM, ~180 MB resident) in an engine's process, the same library cache
keys as a process with the compiler, and the same greedy tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import STORIES, STORIES_REFERENCE_IDS

PROMPT = "Once upon a time"  # the fixture's first 5 reference ids
REFERENCE_IDS = STORIES_REFERENCE_IDS[5:29]  # its 24 greedy tokens

# A fresh interpreter: finds the library with TVM not imported at all, then runs the engine.
CHILD = """
import json, sys
import sphere_aae
sphere_aae.keep_torch_out()  # as chat / serve / bench's worker
from sphere_aae.pipeline import library_key, prepare_model
prepared = prepare_model(sys.argv[1], quantization="q0f32", progress=False)
key = library_key(prepared.config, "cpu", False)
assert "tvm" not in sys.modules, "finding a cached library imported TVM"
from sphere_aae import SphereAaeEngine
engine = SphereAaeEngine(sys.argv[1], quantization="q0f32")
r = engine.completions.create(prompt=sys.argv[2], temperature=0, max_tokens=24, return_token_ids=True)
engine.terminate()
import tvm
libs = sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line})
print(json.dumps({"ids": r.choices[0].token_ids, "key": key, "lib": str(prepared.lib_path), "libs": libs,
                  "runtime_only": bool(tvm.base._RUNTIME_ONLY), "relax": "tvm.relax" in sys.modules}))
"""


def _child(*args: str, env: dict[str, str] | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_tvm_version_without_tvm_matches_tvm() -> None:
    import tvm
    from importlib import metadata

    assert metadata.version("apache-tvm") == tvm.__version__  # what build_info.tvm_version reads before TVM loads


@pytest.mark.slow
def test_engine_runs_on_the_runtime_library_alone() -> None:
    from sphere_aae import SphereAaeEngine
    from sphere_aae.build_info import host_cpu
    from sphere_aae.pipeline import library_key, prepare_model

    # This process compiles (or finds) the library with TVM's compiler loaded, as before.
    import tvm

    prepared = prepare_model(str(STORIES), quantization="q0f32", progress=False)
    engine = SphereAaeEngine(str(STORIES), quantization="q0f32")
    try:
        want = engine.completions.create(prompt=PROMPT, temperature=0, max_tokens=24, return_token_ids=True).choices[0].token_ids
    finally:
        engine.terminate()
    assert host_cpu() == str(tvm.target.codegen.llvm_get_system_cpu())  # the remembered name is LLVM's

    got = _child(str(STORIES), PROMPT)
    names = [Path(lib).name for lib in got["libs"]]
    assert got["runtime_only"] and not got["relax"]
    assert "libtvm_runtime.so" in names
    assert not any(n.startswith(("libtvm_compiler", "libtvm.so", "libLLVM")) for n in names), names
    # The same cached library (same key: the CPU name came without LLVM) and the same greedy ids.
    assert got["key"] == library_key(prepared.config, "cpu", False) and got["lib"] == str(prepared.lib_path)
    assert got["ids"] == want == REFERENCE_IDS

    # Opting out keeps the compiler in the process.
    full = _child(str(STORIES), PROMPT, env={"SPHERE_AAE_RUNTIME_ONLY": "0"})
    assert not full["runtime_only"] and full["ids"] == want
    assert any(Path(lib).name.startswith("libtvm_compiler") for lib in full["libs"])


@pytest.mark.slow
def test_a_runtime_only_process_converts_and_compiles_in_a_child(tmp_path) -> None:
    """An engine made the process runtime-only; a model that is not built yet (another cache)
    is converted and compiled in a child process with the compiler, then runs here."""
    code = """
import json, os, sys
import sphere_aae
sphere_aae.keep_torch_out()
from sphere_aae.runtime.tvm_lib import import_runtime_only, runtime_only
assert import_runtime_only()
os.environ["SPHERE_AAE_HOME"] = sys.argv[2]  # empty: convert + compile needed
from sphere_aae import SphereAaeEngine
engine = SphereAaeEngine(sys.argv[1], quantization="q0f32")
r = engine.completions.create(prompt="Once upon a time", temperature=0, max_tokens=24, return_token_ids=True)
engine.terminate()
print(json.dumps({"ids": r.choices[0].token_ids, "runtime_only": runtime_only()}))
"""
    r = subprocess.run([sys.executable, "-c", code, str(STORIES), str(tmp_path / "home")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["runtime_only"] and got["ids"] == REFERENCE_IDS
    assert list((tmp_path / "home" / "libs").glob("*.so")) and (tmp_path / "home" / "host_cpu.json").is_file()

"""End-to-end tests of the WebAssembly runtime: build it, link models, run them on WebGPU.

What is proven here:
  * sphere_aae.wasm_runtime builds TVM's web runtime from the installed wheel (cached),
  * tiny tvm.relax.frontend.nn models compile for webgpu (dlight GPU schedules) and link into a
    model .wasm,
  * that .wasm runs under Node 20 with npm @mlc-ai/web-runtime (tvmjs) on Dawn + SwiftShader
    (npm `webgpu`), matching numpy to 1e-4 -- including a 1-layer attention block on TVM's
    paged KV cache (prefill, then decode steps that read the cache back),
  * our replacement headers (wasm_runtime/include) behave: a native C++ unit test checks fp16
    conversion against numpy, base64, the serializer's byte format, the ring buffer and arena.

Needs emcc, node/npm (npm registry reachable on first run to install the harness) and
Chromium's SwiftShader Vulkan driver; tests skip with the reason when any is missing.
Timings are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sphere_aae import wasm_runtime as wr

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "wasm_runtime" / "test_harness"
SWIFTSHADER_ICD = Path("/usr/lib/chromium/vk_swiftshader_icd.json")

# Tests that need the runtime build (minutes the first time) are marked slow.
slow = pytest.mark.slow


def _require_tools() -> None:
    for tool, fix in (("emcc", "apt-get install emscripten"), ("node", "apt-get install nodejs"),
                      ("npm", "apt-get install npm")):  # fmt: skip
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found ({fix})")


@pytest.fixture(scope="session")
def runtime_objects() -> list[Path]:
    _require_tools()
    t0 = time.monotonic()
    result = wr.build_runtime(progress=True)
    print(f"\n[timing] runtime ensure_built: {time.monotonic() - t0:.1f} s "
          f"(rebuilt={result.rebuilt})")  # fmt: skip
    return list(result.objects)


@pytest.fixture(scope="session")
def harness() -> Path:
    """The Node harness with its npm packages installed (once)."""
    _require_tools()
    if (
        not (HARNESS / "node_modules" / "@mlc-ai" / "web-runtime").is_dir()
        or not (HARNESS / "node_modules" / "webgpu").is_dir()
    ):
        # --ignore-scripts: webgpu's postinstall only matters on macOS.
        cmd = ["npm", "ci" if (HARNESS / "package-lock.json").exists() else "install",
               "--no-audit", "--no-fund", "--ignore-scripts"]  # fmt: skip
        proc = subprocess.run(
            cmd, check=False, cwd=HARNESS, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            pytest.skip(f"npm install for the harness failed: {proc.stderr[-800:]}")
    return HARNESS


def _webgpu_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Vulkan loaders complain loudly without a private XDG_RUNTIME_DIR.
    if not env.get("XDG_RUNTIME_DIR"):
        runtime = tmp_path / "xdg"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    if "VK_ICD_FILENAMES" not in env:
        if not SWIFTSHADER_ICD.exists():
            pytest.skip(
                f"{SWIFTSHADER_ICD} missing (apt-get install chromium) and no VK_ICD_FILENAMES"
            )
        env["VK_ICD_FILENAMES"] = str(SWIFTSHADER_ICD)
    return env


def _save(arr: np.ndarray, path: Path) -> dict[str, Any]:
    arr = np.ascontiguousarray(arr)
    arr.tofile(path)
    return {"file": str(path), "shape": list(arr.shape), "dtype": str(arr.dtype)}


def _run_case(harness: Path, case: dict[str, Any], workdir: Path) -> dict[str, Any]:
    case_path = workdir / "case.json"
    case_path.write_text(json.dumps(case))
    t0 = time.monotonic()
    proc = subprocess.run(["node", str(harness / "run_case.mjs"), str(case_path)],
                          check=False, capture_output=True, text=True, env=_webgpu_env(workdir),
                          timeout=600)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"harness printed no result (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1])
    assert result.get("ok"), f"harness failed:\n{result.get('error')}\n{proc.stderr[-3000:]}"
    result["wall_s"] = time.monotonic() - t0
    return result


def _read_output(desc: dict[str, Any]) -> np.ndarray:
    return np.fromfile(desc["file"], dtype=desc["dtype"]).reshape(desc["shape"])


def _build(mod: Any) -> Any:
    """Legalize, apply dlight GPU schedules, then relax.build for webgpu + wasm32 host."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    target = wr.webgpu_target()
    with target:
        mod = relax.get_pipeline("zero")(mod)
        mod = dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )(mod)  # fmt: skip
    return tvm.relax.build(mod, target=target)


def _link(ex: Any, out: Path) -> wr.LinkResult:
    result = wr.link_model_wasm(ex, out, opt_level="-O1")
    print(f"\n[timing] link {out.name}: {result.link_seconds:.2f} s, "
          f"{result.size_bytes / 1e6:.2f} MB")  # fmt: skip
    return result


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps) * w).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Runtime build / cache
# ------------------------------------------------------------------------------------------


@slow
def test_runtime_build_is_cached(runtime_objects: list[Path]) -> None:
    assert [p.name for p in runtime_objects][:3] == ["wasm_runtime.o", "tvmjs_support.o",
                                                     "webgpu_runtime.o"]  # fmt: skip
    for obj in runtime_objects:
        assert obj.read_bytes()[:4] == b"\0asm", f"{obj} is not a wasm object file"
    t0 = time.monotonic()
    again = wr.build_runtime(progress=False)
    elapsed = time.monotonic() - t0
    print(f"\n[timing] cached ensure_built: {elapsed * 1000:.0f} ms")
    assert not again.rebuilt
    assert list(again.objects) == runtime_objects
    assert elapsed < 5.0
    assert wr.runtime_status()["up_to_date"]


def test_link_rejects_non_wasm_host(tmp_path: Path) -> None:
    import tvm
    from tvm.relax.frontend import nn

    class Tiny(nn.Module):
        def forward(self, x: nn.Tensor) -> nn.Tensor:
            return x + x

    mod, _ = Tiny().export_tvm(spec={"forward": {"x": nn.spec.Tensor([4], "float32")}})
    ex = tvm.relax.build(mod, target=tvm.target.Target({"kind": "llvm"}))
    with pytest.raises(ValueError, match="wasm32"):
        wr.link_model_wasm(ex, tmp_path / "bad.wasm", progress=False)
    assert not (tmp_path / "bad.wasm").exists()


def test_build_key_tracks_our_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Editing one of our headers changes the cache key (so the runtime rebuilds)."""
    if shutil.which("emcc") is None:
        pytest.skip("emcc not found (apt-get install emscripten)")
    copy = tmp_path / "wasm_runtime"
    shutil.copytree(REPO / "wasm_runtime" / "include", copy / "include")
    monkeypatch.setenv("AAE_WASM_RUNTIME_DIR", str(copy))
    monkeypatch.setenv("AAE_WASM_RUNTIME_BUILD_DIR", str(tmp_path / "build"))
    before = wr.runtime_status()
    assert not before["up_to_date"]  # nothing built in the empty build dir
    header = copy / "include" / "src" / "support" / "utils.h"
    header.write_text(header.read_text() + "\n// touched\n")
    assert wr.runtime_status()["key"] != before["key"]


def test_missing_emcc_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMCC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(wr.WasmToolchainError, match="apt-get install emscripten"):
        wr.ensure_built(progress=False)


@slow
def test_failed_link_leaves_no_file(runtime_objects: list[Path], tmp_path: Path) -> None:
    from tvm.relax.frontend import nn

    class Double(nn.Module):
        def forward(self, x: nn.Tensor) -> nn.Tensor:
            return x + x

    mod, _ = Double().export_tvm(spec={"forward": {"x": nn.spec.Tensor([4], "float32")}})
    ex = _build(mod)
    out = tmp_path / "double.wasm"
    with pytest.raises(wr.WasmToolchainError, match="emcc link failed"):
        wr.link_model_wasm(ex, out, extra_link_flags=["-Wl,--no-such-flag"], progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file
    result = wr.link_model_wasm(ex, out, progress=False)  # and a normal link works
    assert result.path == out and out.read_bytes()[:4] == b"\0asm"


# ------------------------------------------------------------------------------------------
# Linear + RMSNorm
# ------------------------------------------------------------------------------------------


@slow
def test_linear_rmsnorm_runs_in_node_webgpu(runtime_objects: list[Path], harness: Path,
                                            tmp_path: Path) -> None:  # fmt: skip
    from tvm.relax.frontend import nn

    in_f, out_f, eps = 64, 32, 1e-5

    class LinearNorm(nn.Module):
        def __init__(self) -> None:
            self.proj = nn.Linear(in_f, out_f, bias=True)
            self.norm = nn.RMSNorm(out_f, axes=-1, epsilon=eps, bias=False)

        def forward(self, x: nn.Tensor) -> nn.Tensor:
            return self.norm(self.proj(x))

    spec = {"forward": {"x": nn.spec.Tensor([2, in_f], "float32"),
                        "$": {"param_mode": "packed", "effect_mode": "none"}}}  # fmt: skip
    mod, named_params = LinearNorm().export_tvm(spec=spec)
    t0 = time.monotonic()
    ex = _build(mod)
    print(f"\n[timing] relax.build linear+rmsnorm: {time.monotonic() - t0:.1f} s")
    assert wr.required_webgpu_features(ex) == []
    wasm = _link(ex, tmp_path / "linear_norm.wasm").path

    rng = np.random.default_rng(0)
    values = {
        "proj.weight": rng.standard_normal((out_f, in_f), dtype=np.float32) * 0.1,
        "proj.bias": rng.standard_normal((out_f,), dtype=np.float32) * 0.1,
        "norm.weight": rng.uniform(0.5, 1.5, (out_f,)).astype(np.float32),
    }
    assert [name for name, _ in named_params] == list(values)
    x = rng.standard_normal((2, in_f), dtype=np.float32)
    ref = _rms_norm(x @ values["proj.weight"].T + values["proj.bias"], values["norm.weight"], eps)

    case = {
        "wasm": str(wasm),
        "out_dir": str(tmp_path),
        "params": [_save(v, tmp_path / f"p{i}.bin") for i, v in enumerate(values.values())],
        "mode": "forward",
        "function": "forward",
        "inputs": [_save(x, tmp_path / "x.bin")],
    }
    result = _run_case(harness, case, tmp_path)
    out = _read_output(result["outputs"][0])
    err = float(np.max(np.abs(out - ref)))
    print(f"[timing] node run: {result['wall_s']:.1f} s wall, {result['timings_ms']} "
          f"adapter={result['adapter']!r} max_abs_err={err:.2e}")  # fmt: skip
    assert out.shape == ref.shape
    assert err < 1e-4


# ------------------------------------------------------------------------------------------
# One attention layer on TVM's paged KV cache (TIRPagedKVCache): prefill + decode
# ------------------------------------------------------------------------------------------

HIDDEN, N_Q, N_KV, HEAD_DIM, THETA, EPS = 64, 4, 2, 16, 10000.0, 1e-5


def _attention_module(rope: bool) -> Any:
    from tvm import relax as rx
    from tvm import tirx
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn import op
    from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

    class AttnBlock(nn.Module):
        """x + o_proj(attention(rope(qkv_proj(rms_norm(x))))) with a paged KV cache."""

        def __init__(self) -> None:
            self.norm = nn.RMSNorm(HIDDEN, axes=-1, epsilon=EPS, bias=False)
            self.qkv_proj = nn.Linear(HIDDEN, (N_Q + 2 * N_KV) * HEAD_DIM, bias=False)
            self.o_proj = nn.Linear(N_Q * HEAD_DIM, HIDDEN, bias=False)

        def _step(self, x: nn.Tensor, kv: PagedKVCache) -> nn.Tensor:
            b, s, _ = x.shape
            qkv = op.reshape(self.qkv_proj(self.norm(x)), (b, s, N_Q + 2 * N_KV, HEAD_DIM))
            attn = kv.attention_with_fused_qkv(0, qkv, N_Q, sm_scale=HEAD_DIM**-0.5)
            return x + self.o_proj(op.reshape(attn, (b, s, N_Q * HEAD_DIM)))

        def prefill(self, x: nn.Tensor, paged_kv_cache: PagedKVCache) -> Any:
            return self._step(x, paged_kv_cache), paged_kv_cache

        def decode(self, x: nn.Tensor, paged_kv_cache: PagedKVCache) -> Any:
            return self._step(x, paged_kv_cache), paged_kv_cache

        def create_tir_paged_kv_cache(
            self,
            max_batch_size: tirx.Var,
            max_total_seq_len: tirx.Var,
            prefill_chunk_size: tirx.Var,
            page_size: tirx.Var,
            support_sliding_window: tirx.Var,
        ) -> PagedKVCache:
            return TIRPagedKVCache(
                attn_kind="mha",
                max_batch_size=max_batch_size,
                max_total_seq_len=max_total_seq_len,
                prefill_chunk_size=prefill_chunk_size,
                page_size=page_size,
                support_sliding_window=support_sliding_window,
                layer_partition=rx.ShapeExpr([0, 1]),
                num_hidden_layers=1,
                num_attention_heads=N_Q,
                num_key_value_heads=N_KV,
                qk_head_dim=HEAD_DIM,
                v_head_dim=HEAD_DIM,
                mla_original_qk_head_dim=0,
                mla_original_v_head_dim=0,
                rope_mode=RopeMode.NORMAL if rope else RopeMode.NONE,
                rope_scale=1,
                rope_theta=THETA,
                rope_scaling={},
                rope_ext_factors=rx.prim_value(0),
                rotary_dim=HEAD_DIM,
                enable_disaggregation=False,
                dtype="float32",
                target=wr.webgpu_target(),
            )

    packed = {"param_mode": "packed", "effect_mode": "none"}
    kv_spec = nn.spec.Object(object_type=PagedKVCache)
    spec = {
        "prefill": {"x": nn.spec.Tensor([1, "seq_len", HIDDEN], "float32"),
                    "paged_kv_cache": kv_spec, "$": packed},
        "decode": {"x": nn.spec.Tensor([1, 1, HIDDEN], "float32"),
                   "paged_kv_cache": kv_spec, "$": packed},
        "create_tir_paged_kv_cache": {
            "max_batch_size": int, "max_total_seq_len": int, "prefill_chunk_size": int,
            "page_size": int, "support_sliding_window": int,
            "$": {"param_mode": "none", "effect_mode": "none"},
        },
    }  # fmt: skip
    return AttnBlock().export_tvm(spec=spec)


def _rope(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Llama RoPE, half-split layout (TVM's llama_rope_with_position_map). x: [s, h, d]."""
    d = x.shape[-1]
    inv = THETA ** (-(np.arange(d) * 2 % d) / d)  # frequency of dim i pairs i and i +/- d/2
    ang = positions[:, None, None].astype(np.float64) * inv[None, None, :]
    rot = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return (x * np.cos(ang) + rot * np.sin(ang)).astype(np.float32)


def _attention_reference(xs: np.ndarray, w: dict[str, np.ndarray], rope: bool) -> np.ndarray:
    """Causal attention block over the whole sequence xs [n, HIDDEN] (float64 math)."""
    n = xs.shape[0]
    h = _rms_norm(xs, w["norm.weight"], EPS).astype(np.float64)
    qkv = (h @ w["qkv_proj.weight"].T.astype(np.float64)).reshape(n, N_Q + 2 * N_KV, HEAD_DIM)
    q, k = qkv[:, :N_Q], qkv[:, N_Q : N_Q + N_KV]
    if rope:
        q = _rope(q, np.arange(n)).astype(np.float64)
        k = _rope(k, np.arange(n)).astype(np.float64)
    v = qkv[:, N_Q + N_KV :]
    group = N_Q // N_KV
    out = np.zeros((n, N_Q, HEAD_DIM))
    for head in range(N_Q):
        kh, vh = k[:, head // group], v[:, head // group]
        scores = q[:, head] @ kh.T * HEAD_DIM**-0.5
        scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[:, head] = (p / p.sum(axis=-1, keepdims=True)) @ vh
    o = out.reshape(n, N_Q * HEAD_DIM) @ w["o_proj.weight"].T.astype(np.float64)
    return (xs + o).astype(np.float32)


@slow
@pytest.mark.parametrize(
    ("rope", "tol", "preload"),
    [
        # No RoPE: checks the paged KV cache and attention kernels exactly (observed ~2e-6).
        pytest.param(False, 1e-4, False, id="no-rope"),
        # RoPE in the cache (RopeMode.NORMAL): WGSL lets sin/cos be off by 2^-11 absolute and
        # SwiftShader uses that freedom, so outputs differ by ~1e-3 (TVM on CPU matches the
        # reference to ~2e-6). Also compiles every KV-cache pipeline up front, as a browser
        # engine would, which proves all of them pass Dawn's WGSL validation (~45 s here).
        pytest.param(True, 3e-3, True, id="rope"),
    ],
)
def test_paged_kv_attention_runs_in_node_webgpu(runtime_objects: list[Path], harness: Path,
                                                tmp_path: Path, rope: bool, tol: float,
                                                preload: bool) -> None:  # fmt: skip
    mod, named_params = _attention_module(rope)
    t0 = time.monotonic()
    ex = _build(mod)
    print(f"\n[timing] relax.build paged-KV attention: {time.monotonic() - t0:.1f} s")
    wasm = _link(ex, tmp_path / "attn_kv.wasm").path

    rng = np.random.default_rng(1)
    shapes = {name: tuple(int(s) for s in p.shape) for name, p in named_params}
    weights = {
        "norm.weight": rng.uniform(0.5, 1.5, shapes["norm.weight"]).astype(np.float32),
        "qkv_proj.weight": (rng.standard_normal(shapes["qkv_proj.weight"]) * 0.2).astype(
            np.float32
        ),
        "o_proj.weight": (rng.standard_normal(shapes["o_proj.weight"]) * 0.2).astype(np.float32),
    }
    assert [name for name, _ in named_params] == list(weights)

    # Prefill 7 tokens, then decode 3 one at a time: decode rows depend on the cached K/V.
    n_prompt, n_decode = 7, 3
    xs = rng.standard_normal((n_prompt + n_decode, HIDDEN)).astype(np.float32)
    ref = _attention_reference(xs, weights, rope)

    steps = [
        {"function": "prefill", "input": _save(xs[None, :n_prompt], tmp_path / "x_prefill.bin")}
    ]
    for i in range(n_decode):
        row = xs[None, n_prompt + i : n_prompt + i + 1]
        steps.append({"function": "decode", "input": _save(row, tmp_path / f"x_decode{i}.bin")})
    case = {
        "wasm": str(wasm),
        "out_dir": str(tmp_path),
        "params": [_save(v, tmp_path / f"p{i}.bin") for i, v in enumerate(weights.values())],
        "mode": "paged_kv",
        "preload_pipelines": preload,
        "kv_create": {"function": "create_tir_paged_kv_cache", "max_batch_size": 1,
                      "max_total_seq_len": 64, "prefill_chunk_size": 16, "page_size": 16},
        "steps": steps,
    }  # fmt: skip
    result = _run_case(harness, case, tmp_path)
    got = np.concatenate([_read_output(o).reshape(-1, HIDDEN) for o in result["outputs"]])
    err = float(np.max(np.abs(got - ref)))
    print(f"[timing] node run: {result['wall_s']:.1f} s wall, {result['timings_ms']} "
          f"adapter={result['adapter']!r} max_abs_err={err:.2e}")  # fmt: skip
    assert got.shape == ref.shape
    assert err < tol


# ------------------------------------------------------------------------------------------
# Native unit test of our replacement headers
# ------------------------------------------------------------------------------------------


def test_replacement_headers_native(tmp_path: Path) -> None:
    """Compile wasm_runtime/tests/headers_test.cc natively and check it against numpy."""
    cxx = shutil.which("clang++-22") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no native C++ compiler")
    import tvm_ffi

    ffi = Path(tvm_ffi.__file__).parent
    inc = REPO / "wasm_runtime" / "include"
    exe = tmp_path / "headers_test"
    cmd = [cxx, "-std=c++17", "-O1", "-Wall", "-Wno-unused-function",
           f"-I{inc / 'include'}", f"-I{inc / 'src'}", f"-I{inc / '3rdparty' / 'compiler-rt'}",
           f"-I{ffi / 'include'}", str(REPO / "wasm_runtime" / "tests" / "headers_test.cc"),
           "-o", str(exe), f"-L{ffi / 'lib'}", "-ltvm_ffi", f"-Wl,-rpath,{ffi / 'lib'}"]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # Every float16 bit pattern -> float32, and a spread of float32 values -> float16 bits,
    # including exact midpoints between neighbouring halves (round-half-to-even cases).
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = np.sort(
        halves.view(np.float16)[np.isfinite(halves.view(np.float16))].astype(np.float64)
    )
    midpoints = ((finite[:-1] + finite[1:]) / 2).astype(np.float32)  # exact in float32
    rng = np.random.default_rng(0)
    floats = np.concatenate([
        rng.standard_normal(200000).astype(np.float32) * 1000,
        rng.standard_normal(200000).astype(np.float32) * 1e-5,
        finite.astype(np.float32), midpoints,
        np.array([np.inf, -np.inf, 65504, 65520, 65519.99, 1e-8, -0.0, 0.0, 5.96e-8, 2.98e-8,
                  2.99e-8, 1e30, -1e30], np.float32),
    ]).astype(np.float32)  # fmt: skip
    halves.tofile(tmp_path / "halves.bin")
    floats.tofile(tmp_path / "floats.bin")
    proc = subprocess.run(
        [str(exe), str(tmp_path)], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    h2f = np.fromfile(tmp_path / "h2f.bin", dtype=np.float32)
    expect = halves.view(np.float16).astype(np.float32)
    nan = np.isnan(expect)
    assert np.array_equal(np.isnan(h2f), nan)
    assert np.array_equal(h2f[~nan].view(np.uint32), expect[~nan].view(np.uint32))

    f2h = np.fromfile(tmp_path / "f2h.bin", dtype=np.uint16)
    with np.errstate(over="ignore"):  # +-inf for values beyond the half range is the point
        expect16 = floats.astype(np.float16).view(np.uint16)
    assert np.array_equal(f2h, expect16), np.flatnonzero(f2h != expect16)[:10]
    assert "ALL OK" in proc.stdout

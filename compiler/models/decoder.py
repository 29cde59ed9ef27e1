"""The one decoder network every architecture compiles to, and the compiled-function interface.

`DecoderConfig` holds every option the building blocks (blocks.py) understand; an architecture
file (llama.py, qwen2.py, gemma2.py, ...) turns a Hugging Face config into one and says where its
weights come from. `DecoderForCausalLM` composes the blocks and exports the functions of
ARTIFACT.md (embed, prefill, decode, batch_decode, create_tir_paged_kv_cache, and the debug
functions) the same way for every architecture.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from .. import artifact
from .base import ArchitectureError, Embedding
from .blocks import Attention, RopeSpec, VocabEmbedding, VocabLinear, make_mlp, make_norm, rope_inv_freq, softcap, vocab_part_rows

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope", "yarn")


@dataclasses.dataclass
class DecoderConfig:
    """The numbers and options that change the compiled network (stored as `model_config`)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int = 2048
    norm: str = "rms"  # "rms" | "rms_offset" (Gemma's x * (1 + w)) | "layer" (with bias)
    norm_eps: float = 1e-5
    mlp: str = "gated"  # "gated" (act(gate) * up) | "plain" (fc1 -> act -> fc2)
    hidden_act: str = "silu"  # "silu" | "gelu_tanh" | "gelu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm of q and k before rope (Qwen3, Gemma 3)
    sandwich_norms: bool = False  # norms on the attention and MLP outputs too (Gemma 2/3)
    parallel_block: bool = False  # attention and MLP both read one norm's output, summed (Phi-2)
    query_scale: float | None = None  # attention scale; None: head_dim ** -0.5
    attn_logit_softcap: float | None = None  # Gemma 2: scores = cap * tanh(scores / cap)
    final_logit_softcap: float | None = None  # Gemma 2: logits = cap * tanh(logits / cap)
    embed_scale: float | None = None  # Gemma: embeddings * sqrt(hidden), in the model dtype
    # MiniCPM: attention and MLP outputs * residual_scale before their residual add, and the
    # final hidden state / logit_divisor before the LM head.
    residual_scale: float | None = None
    logit_divisor: float | None = None
    rotary_dim: int | None = None  # None: the whole head (partial rotary otherwise)
    rope_interleaved: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF's dict: linear, llama3, longrope
    # Per-layer attention: "full" or "sliding" for each layer (None: all full). A config with a
    # `sliding_window` and no layer_types slides on every layer (Mistral). Sliding layers may use
    # their own rope base and scaling.
    layer_types: list[str] | None = None
    sliding_window: int | None = None
    local_rope_theta: float | None = None
    local_rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    lm_head_bias: bool = False
    # Row parts of the embedding / LM head (see blocks.VocabEmbedding); filled by `finish`.
    vocab_parts: list[int] | None = None

    def finish(self) -> "DecoderConfig":
        """Validate the options and fill what follows from them; every architecture calls this."""
        if self.num_attention_heads % self.num_key_value_heads:
            raise ArchitectureError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of num_key_value_heads={self.num_key_value_heads}"
            )
        if (self.rope_scaling or {}).get("rope_type") == "yarn":
            self.rope_scaling.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        for scaling in (self.rope_scaling, self.local_rope_scaling):
            kind = (scaling or {}).get("rope_type", "default")
            if kind not in SUPPORTED_ROPE_TYPES:
                raise ArchitectureError(f"rope_scaling.rope_type={kind!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
        if self.rotary_dim is None:
            self.rotary_dim = self.head_dim
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ArchitectureError(f"rotary dimension {self.rotary_dim} must be even and at most head_dim={self.head_dim}")
        if self.sliding_window and self.layer_types is None:
            self.layer_types = ["sliding"] * self.num_hidden_layers
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - {"full", "sliding"}:
                raise ArchitectureError(f"layer_types must list 'full' or 'sliding' for each of the {self.num_hidden_layers} layers")
            if "sliding" in self.layer_types and not self.sliding_window:
                raise ArchitectureError("layer_types has sliding layers but the config sets no sliding_window")
            if "sliding" not in self.layer_types:
                self.layer_types, self.sliding_window = None, None
        if self.vocab_parts is None:
            self.vocab_parts = vocab_part_rows(self.vocab_size, self.hidden_size, artifact.MAX_BINDING_BYTES)
        return self

    @property
    def context_limit(self) -> int:
        """The longest context this network is compiled for: longrope models stop where their
        long factors would take over (blocks.rope_inv_freq uses the short ones)."""
        if (self.rope_scaling or {}).get("rope_type") == "longrope":
            return min(self.max_position_embeddings, int(self.rope_scaling["original_max_position_embeddings"]))
        return self.max_position_embeddings

    @property
    def rope_in_cache(self) -> bool:
        """Whether TVM's KV cache can apply the rope (fused into its q/k/v split, one kernel per
        layer instead of four): one base for every layer, half-split pairs, and a scaling TVM
        computes as transformers does (none, llama3). Everything else is applied in the model
        (blocks.apply_rope), which covers every case."""
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        one_base = self.local_rope_theta is None or not self.sliding_layers
        return one_base and not self.rope_interleaved and kind in ("default", "llama3")

    @property
    def attention_scale(self) -> float:
        return float(self.query_scale) if self.query_scale else self.head_dim**-0.5

    @property
    def sliding_layers(self) -> list[int]:
        """Layers whose kernels attend to the last `sliding_window` tokens only."""
        return [i for i, t in enumerate(self.layer_types or []) if t == "sliding"]

    def rope_for_layer(self, layer_id: int) -> RopeSpec:
        local = self.layer_types is not None and self.layer_types[layer_id] == "sliding" and self.local_rope_theta is not None
        theta = self.local_rope_theta if local else self.rope_theta
        scaling = self.local_rope_scaling if local else self.rope_scaling
        inv, factor = rope_inv_freq(float(theta), int(self.rotary_dim), scaling)
        return RopeSpec(int(self.rotary_dim), tuple(float(f) for f in inv), factor, self.rope_interleaved)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); with `sandwich_norms`
    the attention and MLP outputs are normalised too, before their residual add; with
    `parallel_block`, x + attn(norm(x)) + mlp(norm(x)) from the one norm."""

    def __init__(self, cfg: DecoderConfig, layer_id: int):
        self.self_attn = Attention(cfg, layer_id)
        self.mlp = make_mlp(cfg)
        self.input_layernorm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps)
        self.parallel = cfg.parallel_block
        self.post_attention_layernorm = None if cfg.parallel_block else make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps)
        self.residual_scale = cfg.residual_scale
        if cfg.sandwich_norms:
            self.attn_output_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps)
            self.mlp_output_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps)
        else:
            self.attn_output_norm = self.mlp_output_norm = None

    def _scaled(self, branch: Tensor) -> Tensor:
        if self.residual_scale is None:
            return branch
        return branch * _dtype_const(self.residual_scale, branch.dtype)

    def forward(self, hidden: Tensor, kv_cache: PagedKVCache, positions: Tensor) -> Tensor:
        if self.parallel:
            normed = self.input_layernorm(hidden)
            return hidden + self.self_attn(normed, kv_cache, positions) + self.mlp(normed)
        attn = self.self_attn(self.input_layernorm(hidden), kv_cache, positions)
        if self.attn_output_norm is not None:
            attn = self.attn_output_norm(attn)
        hidden = hidden + self._scaled(attn)
        mlp = self.mlp(self.post_attention_layernorm(hidden))
        if self.mlp_output_norm is not None:
            mlp = self.mlp_output_norm(mlp)
        return hidden + self._scaled(mlp)


class DecoderModel(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        parts = cfg.vocab_parts or [cfg.vocab_size]
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size) if len(parts) == 1 else VocabEmbedding(parts, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps)
        self.rope_in_cache = cfg.rope_in_cache

    def _positions(self, hidden: Tensor, kv_cache: PagedKVCache) -> Tensor | None:
        b, s, _ = hidden.shape
        return None if self.rope_in_cache else kv_cache.get_query_positions(b * s)

    def forward(self, hidden: Tensor, kv_cache: PagedKVCache) -> Tensor:
        positions = self._positions(hidden, kv_cache)
        for layer in self.layers:
            hidden = layer(hidden, kv_cache, positions)
        return self.norm(hidden)

    def hidden_states(self, hidden: Tensor, kv_cache: PagedKVCache) -> list[Tensor]:
        """The embedding output and every layer's output, the last one after the final norm:
        the same list Hugging Face returns with output_hidden_states=True (for `check --level 1`)."""
        positions = self._positions(hidden, kv_cache)
        states = [hidden]
        for layer in self.layers:
            hidden = layer(hidden, kv_cache, positions)
            states.append(hidden)
        states[-1] = self.norm(states[-1])
        return states


def _last_position(x: Tensor) -> Tensor:
    """[b, s, h] -> [b, 1, h]: prefill only needs the logits of the prompt's last token."""

    def compute(x_te: te.Tensor):
        b, s, h = x_te.shape
        return te.compute((b, 1, h), lambda i, _, k: x_te[i, s - 1, k], name="index_last")

    return op.tensor_expr_op(compute, "index_last", args=[x])


class DecoderForCausalLM(nn.Module):
    """Every architecture's compiled module; only `DecoderConfig` differs between them."""

    def __init__(self, cfg: DecoderConfig, dtype: str = "float32"):
        self.cfg = cfg
        self.dtype = dtype
        self.model = DecoderModel(cfg)
        self.tie_word_embeddings = cfg.tie_word_embeddings
        if not cfg.tie_word_embeddings:
            parts = cfg.vocab_parts or [cfg.vocab_size]
            if len(parts) == 1:
                self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.lm_head_bias)
            else:
                self.lm_head = VocabLinear(parts, cfg.hidden_size, cfg.lm_head_bias)

    # -- pieces -----------------------------------------------------------------------------
    def _logits(self, hidden: Tensor) -> Tensor:
        if self.cfg.logit_divisor:
            hidden = hidden / _dtype_const(self.cfg.logit_divisor, hidden.dtype)
        if self.tie_word_embeddings:
            logits = self.model.embed_tokens.lm_head_forward(hidden)
        else:
            logits = self.lm_head(hidden)
        if logits.dtype != "float32":
            logits = logits.astype("float32")
        return softcap(logits, self.cfg.final_logit_softcap)

    # -- exported functions (see ARTIFACT.md) ------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        embeds = self.model.embed_tokens(input_ids)
        if self.cfg.embed_scale:
            # transformers multiplies by the scale cast to the activation dtype (Gemma).
            embeds = embeds * _dtype_const(self.cfg.embed_scale, embeds.dtype)
        return embeds

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        return self._logits(_last_position(hidden)), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        return self._logits(hidden), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embeds, paged_kv_cache)
        return self._logits(hidden), paged_kv_cache

    def prefill_all_logits(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        return self._logits(hidden), paged_kv_cache

    def prefill_hidden_states(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        states = self.model.hidden_states(input_embed, paged_kv_cache)
        stacked = op.concat([op.reshape(s, (1, s.shape[1], s.shape[2])) for s in states], dim=0)
        return stacked.astype("float32") if stacked.dtype != "float32" else stacked, paged_kv_cache

    def create_tir_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        import tvm  # local: Target.current() is only meaningful inside the compile's target scope
        from tvm import relax

        cfg = self.cfg
        sliding = cfg.sliding_layers
        num_layers = cfg.num_hidden_layers
        attn_kind: Any = "mha"
        extra: dict[str, Any] = {}
        if sliding:
            # Layers with a window get TVM's windowed kernels: the window is part of the library
            # and the cache keeps every token (runtimes never enable TVM's evicting window).
            attn_kind = ["mha_sliding" if i in sliding else "mha" for i in range(num_layers)]
            if "mha" not in attn_kind:
                # TVM 0.27 allocates its attention workspaces only when some layer is plain
                # "mha"; a model that slides on every layer (Mistral) gets one unused layer.
                attn_kind.append("mha")
                num_layers += 1
            # Decode appends the new token before attending, so a window of W cached keys is
            # Hugging Face's W (the token included). Prefill chunks never reach the window's edge
            # (the chunk rule of ARTIFACT.md), where TVM's prefill kernels would be off by one.
            extra["layer_sliding_window_size"] = int(cfg.sliding_window)
        return TIRPagedKVCache(
            attn_kind=attn_kind,
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=relax.ShapeExpr([0, num_layers]),
            num_hidden_layers=num_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            qk_head_dim=cfg.head_dim,
            v_head_dim=cfg.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            # Either the cache rotates q/k (NORMAL: before storing k) or the model already did
            # (blocks.apply_rope); the cache stores rotated keys either way.
            rope_mode=RopeMode.NORMAL if cfg.rope_in_cache else RopeMode.NONE,
            rope_scale=1.0,
            rope_theta=cfg.rope_theta,
            rope_scaling=(cfg.rope_scaling or {}) if cfg.rope_in_cache else {},
            rope_ext_factors=relax.prim_value(0),
            rotary_dim=cfg.rotary_dim,
            enable_disaggregation=False,
            dtype=self.dtype,
            target=tvm.target.Target.current(),
            **extra,
        )

    def get_default_spec(self, debug_functions: bool = False) -> nn.spec.ModuleSpec:
        h = self.cfg.hidden_size
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        spec: dict[str, Any] = {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", h], self.dtype), "paged_kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, h], self.dtype), "paged_kv_cache": kv, "$": packed},
            "batch_decode": {
                "input_embeds": nn.spec.Tensor(["batch_size", 1, h], self.dtype),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "create_tir_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
        }
        if debug_functions:
            for name in ("prefill_all_logits", "prefill_hidden_states"):
                spec[name] = {"input_embed": nn.spec.Tensor([1, "seq_len", h], self.dtype), "paged_kv_cache": kv, "$": packed}
        return nn.spec.ModuleSpec.from_raw(spec, self)


def _dtype_const(value: float, dtype: str) -> Tensor:
    return Tensor.from_const(np.asarray(value, dtype=dtype))


def common_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """DecoderConfig fields every Llama-like HF config spells the same way (after the loader's
    normalisation: defaults filled, `rope_parameters` folded into rope_theta / rope_scaling)."""
    heads = int(hf["num_attention_heads"])
    return dict(
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        vocab_size=int(hf["vocab_size"]),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=float(hf.get("rope_theta") or 10000.0),
        rope_scaling=hf.get("rope_scaling"),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def require_activation(hf: dict[str, Any], allowed: tuple[str, ...], key: str = "hidden_act") -> str:
    act = hf.get(key) or allowed[0]
    names = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}
    if act not in allowed or act not in names:
        raise ArchitectureError(f"{key}={act!r} is not supported for {hf.get('model_type')} (supported: {', '.join(allowed)})")
    return names[act]

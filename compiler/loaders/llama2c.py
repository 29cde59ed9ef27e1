"""llama.2c checkpoints (the "v0"/legacy export) and their tokenizer .bin files.

Checkpoint layout (all little-endian): 7 int32 [dim, hidden_dim, n_layers, n_heads, n_kv_heads,
vocab_size, seq_len] -- a negative vocab_size means the classifier is NOT shared with the token
embedding -- then float32 arrays, each stacked over layers:
token_embedding (vocab, dim), rms_att (L, dim), wq (L, dim, dim), wk (L, kv_dim, dim),
wv (L, kv_dim, dim), wo (L, dim, dim), rms_ffn (L, dim), w1 (L, hidden, dim),
w2 (L, dim, hidden), w3 (L, hidden, dim), rms_final (dim), freq_cis_real (seq_len, head/2),
freq_cis_imag (seq_len, head/2), and wcls (vocab, dim) only when unshared.
Matrices are (out, in) like PyTorch. w1/w2/w3 are Llama's gate/down/up projections.

llama2.c rotates interleaved pairs (Meta's layout), so wq/wk rows are reordered into Hugging
Face's half-split layout on the way out.

Tokenizer .bin: int32 max_token_length, then per token float32 score, int32 byte length, bytes.
The exporter wrote SentencePiece pieces with "\u2581" turned into " ", and BOS/EOS as "\n<s>\n" /
"\n</s>\n"; ids 0/1/2 are <unk>/<s>/</s> (llama2.c hard-codes BOS=1, EOS=2).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from .base import (
    ModelSourceError,
    SourceModel,
    check_tensor_set,
    interleaved_to_half_split,
    normalize_hf_config,
)
from .tokenizer_build import (
    SPIECE_UNDERLINE,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    VocabSpec,
    build_tokenizer_files,
)

_HEADER = struct.Struct("<7i")
# Newer llama2.c exports (version 1 fp32, version 2 int8) start with this magic instead.
_MAGIC_V1_V2 = 0x616B3432  # "ak42"
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")


def is_llama2c_checkpoint(path: Path) -> bool:
    """Cheap sniff: a header of 7 plausible int32s whose implied size is the file size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_HEADER.size)
    except OSError:
        return False
    if len(head) < _HEADER.size:
        return False
    if struct.unpack_from("<I", head)[0] == _MAGIC_V1_V2:
        return True  # recognised; `load_llama2c` explains why it is refused
    dim, hidden, layers, heads, kv, vocab, seq = _HEADER.unpack(head)
    return all(0 < x < 1 << 20 for x in (dim, hidden, layers, heads, kv, abs(vocab), seq)) and (
        dim % heads == 0 and size > _HEADER.size
    )


def _layout(dim: int, hidden: int, layers: int, heads: int, kv_heads: int, vocab: int,
            seq_len: int, shared: bool) -> list[tuple[str, tuple[int, ...]]]:
    head = dim // heads
    kv_dim = kv_heads * head
    parts = [
        ("token_embedding", (vocab, dim)),
        ("rms_att", (layers, dim)),
        ("wq", (layers, heads * head, dim)),
        ("wk", (layers, kv_dim, dim)),
        ("wv", (layers, kv_dim, dim)),
        ("wo", (layers, dim, heads * head)),
        ("rms_ffn", (layers, dim)),
        ("w1", (layers, hidden, dim)),
        ("w2", (layers, dim, hidden)),
        ("w3", (layers, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_cis_real", (seq_len, head // 2)),
        ("freq_cis_imag", (seq_len, head // 2)),
    ]
    if not shared:
        parts.append(("wcls", (vocab, dim)))
    return parts


def read_llama2c_tokenizer(path: Path, vocab_size: int) -> VocabSpec:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelSourceError(f"{path}: cannot read tokenizer ({e.strerror})") from e
    if len(data) < 4:
        raise ModelSourceError(f"{path}: truncated llama2.c tokenizer (only {len(data)} bytes)")
    tokens: list[str] = []
    scores: list[float] = []
    off = 4
    for i in range(vocab_size):
        if off + 8 > len(data):
            raise ModelSourceError(
                f"{path}: truncated llama2.c tokenizer: the model has {vocab_size} tokens but the "
                f"file ends after {i}. Use the tokenizer .bin this checkpoint was exported with."
            )
        score, n = struct.unpack_from("<fi", data, off)
        off += 8
        if n < 0 or off + n > len(data):
            raise ModelSourceError(f"{path}: truncated or corrupt llama2.c tokenizer at token {i}")
        raw = data[off:off + n]
        off += n
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelSourceError(f"{path}: token {i} is not valid UTF-8 ({raw!r})") from e
        tokens.append(text)
        scores.append(score)
    if off != len(data):
        raise ModelSourceError(
            f"{path}: llama2.c tokenizer has more than {vocab_size} tokens ({len(data) - off} "
            f"bytes left over): it does not belong to this checkpoint."
        )
    types: list[int] = []
    for i, text in enumerate(tokens):
        if i == 0:
            types.append(TOKEN_UNKNOWN)
        elif i in (1, 2):
            types.append(TOKEN_CONTROL)
        elif _BYTE_TOKEN.match(text):
            types.append(TOKEN_BYTE)
        else:
            types.append(TOKEN_NORMAL)
    # Undo the exporter's respellings so the vocabulary is SentencePiece's again.
    tokens[1] = tokens[1].strip("\n")
    tokens[2] = tokens[2].strip("\n")
    tokens = [t if types[i] != TOKEN_NORMAL else t.replace(" ", SPIECE_UNDERLINE)
              for i, t in enumerate(tokens)]
    return VocabSpec(
        model="llama", tokens=tokens, token_types=types, scores=scores,
        bos_id=1, eos_id=2, unk_id=0, pad_id=None,
        add_bos=True, add_eos=False, add_space_prefix=True, where=str(path),
    )


def _find_tokenizer(ckpt: Path, vocab_size: int) -> Path:
    """tokenizer.bin beside the checkpoint, else the one tok*.bin whose size fits the vocab."""
    beside = ckpt.parent / "tokenizer.bin"
    if beside.is_file() and beside != ckpt:
        return beside
    candidates = [p for p in sorted(ckpt.parent.glob("tok*.bin")) if p != ckpt]
    for p in candidates:
        try:
            read_llama2c_tokenizer(p, vocab_size)
            return p
        except ModelSourceError:
            continue
    raise ModelSourceError(
        f"{ckpt}: no llama2.c tokenizer found beside the checkpoint (looked for tokenizer.bin "
        f"and tok*.bin with {vocab_size} tokens in {ckpt.parent}). Put it there or pass "
        f"load_source(path, tokenizer=...)."
    )


def load_llama2c(path: Path, tokenizer: Path | None = None) -> SourceModel:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise ModelSourceError(f"{path}: truncated llama2.c checkpoint ({size} bytes, no header)")
    if struct.unpack_from("<I", head)[0] == _MAGIC_V1_V2:
        version = struct.unpack_from("<i", head, 4)[0]
        raise ModelSourceError(
            f"{path}: llama2.c checkpoint format version {version} is not supported; export it "
            f"with llama2.c's legacy format (export.py --version 0) or as a Hugging Face folder "
            f"(--version -1)."
        )
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = _HEADER.unpack(head)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, layers, heads, kv_heads, vocab, seq_len) <= 0 or dim % heads or (
        heads % kv_heads
    ):
        raise ModelSourceError(
            f"{path}: not a llama2.c checkpoint (implausible header dim={dim} hidden={hidden} "
            f"layers={layers} heads={heads} kv_heads={kv_heads} vocab={vocab} seq_len={seq_len})"
        )
    parts = _layout(dim, hidden, layers, heads, kv_heads, vocab, seq_len, shared)
    offsets: dict[str, tuple[int, tuple[int, ...]]] = {}
    off = _HEADER.size
    for name, shape in parts:
        offsets[name] = (off, shape)
        off += int(np.prod(shape)) * 4
    if size < off:
        raise ModelSourceError(
            f"{path}: truncated llama2.c checkpoint: its header implies {off} bytes "
            f"(dim={dim}, layers={layers}, vocab={vocab}) but the file has {size}. Copy or "
            f"download it again."
        )
    if size > off:
        raise ModelSourceError(
            f"{path}: {size - off} bytes more than a v0 llama2.c checkpoint with this header "
            f"holds; it is a different format or a corrupt file."
        )

    hf_config = normalize_hf_config(
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": dim,
            "intermediate_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": dim // heads,
            "vocab_size": vocab,
            "max_position_embeddings": seq_len,
            "rms_norm_eps": 1e-5,  # llama2.c's run.c and model.py hard-code this
            "rope_theta": 10000.0,  # ditto
            "rope_scaling": None,
            "hidden_act": "silu",
            "tie_word_embeddings": shared,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        str(path),
    )

    mm = np.memmap(path, dtype=np.uint8, mode="r")

    def block(name: str) -> np.ndarray:
        start, shape = offsets[name]
        return mm[start:start + int(np.prod(shape)) * 4].view("<f4").reshape(shape)

    # HF name -> function producing the array (views; the q/k permutation copies).
    sources: dict[str, object] = {"model.embed_tokens.weight": lambda: block("token_embedding")}
    for i in range(layers):
        p = f"model.layers.{i}."
        sources.update({
            p + "input_layernorm.weight": lambda i=i: block("rms_att")[i],
            p + "self_attn.q_proj.weight":
                lambda i=i: interleaved_to_half_split(block("wq")[i], heads),
            p + "self_attn.k_proj.weight":
                lambda i=i: interleaved_to_half_split(block("wk")[i], kv_heads),
            p + "self_attn.v_proj.weight": lambda i=i: block("wv")[i],
            p + "self_attn.o_proj.weight": lambda i=i: block("wo")[i],
            p + "post_attention_layernorm.weight": lambda i=i: block("rms_ffn")[i],
            p + "mlp.gate_proj.weight": lambda i=i: block("w1")[i],
            p + "mlp.down_proj.weight": lambda i=i: block("w2")[i],
            p + "mlp.up_proj.weight": lambda i=i: block("w3")[i],
        })
    sources["model.norm.weight"] = lambda: block("rms_final")
    if not shared:
        sources["lm_head.weight"] = lambda: block("wcls")

    shapes = {
        "model.embed_tokens.weight": (vocab, dim),
        "model.norm.weight": (dim,),
    }
    head = dim // heads
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (dim,),
            p + "self_attn.q_proj.weight": (heads * head, dim),
            p + "self_attn.k_proj.weight": (kv_heads * head, dim),
            p + "self_attn.v_proj.weight": (kv_heads * head, dim),
            p + "self_attn.o_proj.weight": (dim, heads * head),
            p + "post_attention_layernorm.weight": (dim,),
            p + "mlp.gate_proj.weight": (hidden, dim),
            p + "mlp.down_proj.weight": (dim, hidden),
            p + "mlp.up_proj.weight": (hidden, dim),
        })
    if not shared:
        shapes["lm_head.weight"] = (vocab, dim)
    names = check_tensor_set(shapes, hf_config, str(path))

    tok_path = Path(tokenizer) if tokenizer is not None else _find_tokenizer(path, vocab)
    if not tok_path.is_file():
        raise ModelSourceError(f"{tok_path}: tokenizer file not found")
    spec = read_llama2c_tokenizer(tok_path, vocab)
    spec.model_max_length = seq_len
    tokenizer_files = build_tokenizer_files(spec)

    return SourceModel(
        path=path,
        format="llama2c",
        hf_config=hf_config,
        tensor_names=names,
        tokenizer_files=tokenizer_files,
        tensor_shapes={n: shapes[n] for n in names},
        source_dtypes={n: "F32" for n in names},
        metadata={"llama2c_header": [dim, hidden, layers, heads, kv_heads,
                                     vocab if shared else -vocab, seq_len],
                  "tokenizer_path": str(tok_path), "tokenizer_notes": spec.notes},
        _reader=lambda name: sources[name](),  # type: ignore[operator]
    )

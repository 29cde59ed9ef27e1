"""Rebuild Hugging Face `tokenizers` files from a bare vocabulary (GGUF metadata, llama2.c .bin).

GGUF files and llama2.c checkpoints carry a vocabulary, not a `tokenizer.json`. The runtimes (the
browser uses `@huggingface/tokenizers`, the native engine and the reference checks use the Python
`tokenizers`) all want `tokenizer.json`, so we reconstruct one that tokenizes exactly like the
original. Two families:

* "gpt2": byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen2 ...). The vocabulary is spelled in
  GPT-2's byte-to-unicode alphabet and the file lists its merges in rank order, so the BPE model is
  given directly; what must be chosen right is the pre-tokenizer (the regex that cuts text into
  words before BPE), which llama.cpp names in `tokenizer.ggml.pre`. See `BYTE_LEVEL_PRE`.
* "llama": SentencePiece BPE (Llama 1/2, Mistral v0.1, TinyLlama, llama2.c): tokens spelled with
  "\u2581" for spaces, a score per token, byte-fallback tokens `<0x00>`..`<0xFF>`, and no merges.
  SentencePiece's encoder repeatedly merges the adjacent pair whose concatenation is the
  highest-scoring vocabulary piece. A BPE model whose merge ranks follow those scores does the
  same thing, so we derive merges from scores (see `merges_from_scores`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from .base import ModelSourceError

# llama.cpp / GGUF token types (gguf.TokenType); SentencePiece's model proto uses the same numbers.
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

SPIECE_UNDERLINE = "\u2581"

# --- pre-tokenizers for byte-level vocabularies, by llama.cpp's `tokenizer.ggml.pre` ----------
# Each entry: a function building the `tokenizers` pre-tokenizer, and whether BPE must use
# `ignore_merges` (a word that is itself a vocabulary token is emitted whole, without merging;
# Llama 3 and Tekken tokenizers are trained/defined that way and llama.cpp mirrors it).

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2_bytelevel() -> Any:
    # ByteLevel's built-in regex is GPT-2's:
    # 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)


def _digits_then_gpt2() -> Any:
    # llama.cpp's "smollm"/"starcoder"/... pre-tokenizer is two regexes applied in turn:
    # "\p{N}" (every digit its own piece), then GPT-2's regex on each remaining stretch. Hugging
    # Face's own tokenizer.json for SmolLM2 / StarCoder spells the same thing as
    # Digits(individual_digits=True) followed by ByteLevel with GPT-2's regex, which is what we
    # write, so our file matches the model's original tokenizer.json. (Digits isolates digits
    # *before* the GPT-2 regex runs, which matters: "a  1" is "a", "  ", "1" -- the two spaces
    # become one "\u0120\u0120" token -- not GPT-2's "a", " ", " 1".)
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), _gpt2_bytelevel()]
    )


def _split_then_bytes(pattern: str):
    def build() -> Any:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    return build


BYTE_LEVEL_PRE: dict[str, tuple[Any, bool]] = {
    # GPT-2's regex alone. A byte-level GGUF with no `tokenizer.ggml.pre` key predates the key
    # (llama.cpp then guesses "default"); GPT-2's regex is what such vocabularies were made with.
    "default": (_gpt2_bytelevel, False),
    "gpt2": (_gpt2_bytelevel, False),
    "mpt": (_gpt2_bytelevel, False),
    "olmo": (_gpt2_bytelevel, False),
    "jais": (_gpt2_bytelevel, False),
    # Digits, then GPT-2's regex.
    "smollm": (_digits_then_gpt2, False),
    "starcoder": (_digits_then_gpt2, False),
    "refact": (_digits_then_gpt2, False),
    "command-r": (_digits_then_gpt2, False),
    "codeshell": (_digits_then_gpt2, False),
    "exaone": (_digits_then_gpt2, False),
    "minerva-7b": (_digits_then_gpt2, False),
    # Llama 3's regex (also used by several Llama-architecture derivatives).
    "llama-bpe": (_split_then_bytes(_LLAMA3_SPLIT), True),
    "llama3": (_split_then_bytes(_LLAMA3_SPLIT), True),
    "llama-v3": (_split_then_bytes(_LLAMA3_SPLIT), True),
    "falcon3": (_split_then_bytes(_LLAMA3_SPLIT), False),
    "smaug-bpe": (_split_then_bytes(_LLAMA3_SPLIT), False),
    "dbrx": (_split_then_bytes(_LLAMA3_SPLIT), False),
    # Mistral's Tekken (Mistral-Nemo, Ministral ...).
    "tekken": (_split_then_bytes(_TEKKEN_SPLIT), True),
    # Qwen2's regex.
    "qwen2": (_split_then_bytes(_QWEN2_SPLIT), False),
    "deepseek-r1-qwen": (_split_then_bytes(_QWEN2_SPLIT), False),
    "stablelm2": (_split_then_bytes(_QWEN2_SPLIT), False),
}


@dataclass
class VocabSpec:
    """Everything a tokenizer rebuild needs, in llama.cpp's terms (GGUF `tokenizer.ggml.*`)."""

    model: str  # "gpt2" (byte-level BPE) | "llama" (SentencePiece BPE)
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: Sequence[str] | None = None  # "left right" strings, rank order (gpt2 only)
    pre: str | None = None  # tokenizer.ggml.pre (gpt2 only)
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = True  # SentencePiece's dummy prefix ("llama" only)
    # llama.cpp puts the dummy prefix in front of every stretch of text that follows a special
    # token, not only at the start of the input (Hugging Face's "legacy" Llama tokenizer does the
    # same; its newer non-legacy mode only prefixes the very start). "llama" only.
    prefix_after_special: bool = False
    # SentencePiece normalization a tokenizer.model may carry ("llama" only): its NFKC-like
    # character map, and remove_extra_whitespaces (leading/trailing spaces dropped, runs of
    # spaces made one). GGUF and llama2.c vocabularies come from models that use neither.
    precompiled_charsmap: bytes | None = None
    collapse_whitespace: bool = False
    # SentencePiece's split_by_whitespace: BPE never merges across a "\u2581" (a word starts at
    # each one). Off for GGUF / llama2.c vocabularies, as llama.cpp encodes them.
    split_words: bool = False
    chat_template: str | None = None
    model_max_length: int | None = None
    where: str = "tokenizer"  # names the source in error messages
    notes: list[str] = field(default_factory=list)  # filled by the builder: non-fatal findings


def merges_from_scores(
    tokens: Sequence[str], scores: Sequence[float], mergeable: Sequence[int]
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-driven encoding.

    SentencePiece BPE merges, at each step, the adjacent pair whose concatenation is the
    highest-scoring piece. So every way of cutting a piece into two pieces that are themselves in
    the vocabulary is a merge, ranked by the score of the piece it makes (higher first). Ties are
    broken by the made piece's id (earlier = learned earlier) and then the left piece's id, which
    keeps the order deterministic.
    """
    index = {}
    for i in mergeable:
        index.setdefault(tokens[i], i)
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, i in index.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                ranked.append((-float(scores[i]), i, index[left], left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _post_processor(spec: VocabSpec, tokens: list[str]) -> Any:
    """BOS/EOS insertion, the way Hugging Face's own Llama tokenizer.json does it."""
    single: list[str] = []
    specials: list[tuple[str, int]] = []
    if spec.add_bos and spec.bos_id is not None:
        single.append(f"{tokens[spec.bos_id]}:0")
        specials.append((tokens[spec.bos_id], spec.bos_id))
    single.append("$A:0")
    if spec.add_eos and spec.eos_id is not None:
        single.append(f"{tokens[spec.eos_id]}:0")
        if spec.eos_id != spec.bos_id:
            specials.append((tokens[spec.eos_id], spec.eos_id))
    if len(single) == 1:
        return None
    pair = single + [s.replace(":0", ":1").replace("$A", "$B") for s in single]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _added_tokens(spec: VocabSpec, types: set[int]) -> tuple[list[AddedToken], list[AddedToken]]:
    """(special, non-special) added tokens: matched whole in the input text, never split.

    CONTROL (<|im_start|>, <s>, ...) and UNKNOWN (<unk>) tokens are special (skipped when decoding
    with skip_special_tokens); USER_DEFINED ones are matched whole too but decode as text. All are
    `normalized=False`: they match the raw input text exactly, like llama.cpp's special-token pass
    (which cuts out exactly these three types).
    """
    special, plain = [], []
    for tok, ty in zip(spec.tokens, spec.token_types, strict=True):
        if ty in types and ty != TOKEN_USER_DEFINED:
            special.append(AddedToken(tok, special=True, normalized=False))
        elif ty == TOKEN_USER_DEFINED:
            plain.append(AddedToken(tok, special=False, normalized=False))
    return special, plain


def _vocab_dict(spec: VocabSpec) -> dict[str, int]:
    vocab: dict[str, int] = {}
    dups = 0
    for i, tok in enumerate(spec.tokens):
        if tok in vocab:
            dups += 1  # keep the first id; later copies are unreachable when encoding
        else:
            vocab[tok] = i
    if dups:
        spec.notes.append(f"{dups} duplicate token string(s) in the vocabulary; first id kept")
    return vocab


def _build_byte_level(spec: VocabSpec) -> Tokenizer:
    if spec.merges is None:
        raise ModelSourceError(
            f"{spec.where}: byte-level BPE vocabulary without merges (tokenizer.ggml.merges); "
            f"cannot rebuild the tokenizer"
        )
    pre = spec.pre or "default"
    if pre not in BYTE_LEVEL_PRE:
        raise ModelSourceError(
            f"{spec.where}: tokenizer.ggml.pre = {pre!r} is a pre-tokenizer the loader does not "
            f"know, so it cannot rebuild the tokenizer exactly. Known: {sorted(BYTE_LEVEL_PRE)}. "
            f"Add its regex to sphere_aae.loaders.tokenizer_build.BYTE_LEVEL_PRE (llama.cpp's "
            f"llama-vocab.cpp lists the regex for each name), or load the model from its Hugging "
            f"Face folder instead."
        )
    make_pre, ignore_merges = BYTE_LEVEL_PRE[pre]
    merges: list[tuple[str, str]] = []
    for m in spec.merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ModelSourceError(f"{spec.where}: malformed merge {m!r} (expected 'left right')")
        merges.append((parts[0], parts[1]))
    bpe = models.BPE(
        vocab=_vocab_dict(spec), merges=merges, ignore_merges=ignore_merges,
        fuse_unk=False, byte_fallback=False,
    )
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = make_pre()
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = _post_processor(spec, spec.tokens) or processors.ByteLevel(
        trim_offsets=False
    )
    special, plain = _added_tokens(spec, {TOKEN_CONTROL, TOKEN_UNKNOWN})
    tk.add_special_tokens(special)
    tk.add_tokens(plain)
    return tk


def _sentencepiece_normalizers(spec: VocabSpec) -> list[Any]:
    """SentencePiece's own normalization, in its order: the character map, then whitespace."""
    steps: list[Any] = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.collapse_whitespace:
        # Spaces only: SentencePiece keeps tabs and newlines (they reach the byte fallback).
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    return steps


def _build_sentencepiece(spec: VocabSpec) -> Tokenizer:
    if spec.scores is None:
        raise ModelSourceError(
            f"{spec.where}: SentencePiece vocabulary without scores (tokenizer.ggml.scores); "
            f"cannot derive the merge order"
        )
    mergeable = [i for i, ty in enumerate(spec.token_types) if ty == TOKEN_NORMAL]
    merges = merges_from_scores(spec.tokens, spec.scores, mergeable)
    unk = spec.tokens[spec.unk_id] if spec.unk_id is not None else None
    bpe = models.BPE(
        vocab=_vocab_dict(spec), merges=merges, unk_token=unk,
        fuse_unk=True, byte_fallback=any(t == TOKEN_BYTE for t in spec.token_types),
    )
    tk = Tokenizer(bpe)
    # SentencePiece turns spaces into "\u2581" and (add_dummy_prefix) puts one in front of the
    # text; the whole text stays one "word" (no split on spaces), as SentencePiece / llama.cpp
    # encode it.
    norm = _sentencepiece_normalizers(spec)
    if norm or spec.split_words or (spec.add_space_prefix and spec.prefix_after_special):
        # The dummy prefix goes in the normalizer here: always (Metaspace's "first" scheme skips
        # text that already starts with a space, or whose start the normalizer moved), and, since
        # added tokens are cut out of the text before normalization, once per stretch of text
        # between special tokens (llama.cpp's behaviour, wanted by prefix_after_special).
        prefix = [normalizers.Prepend(SPIECE_UNDERLINE)] if spec.add_space_prefix else []
        tk.normalizer = normalizers.Sequence(norm + prefix + [normalizers.Replace(" ", SPIECE_UNDERLINE)])
        if spec.split_words:
            tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="never", split=True)
    else:
        tk.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=SPIECE_UNDERLINE,
            prepend_scheme="first" if spec.add_space_prefix else "never",
            split=spec.split_words,
        )
    steps = [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))  # drop the dummy prefix
    tk.decoder = decoders.Sequence(steps)
    tk.post_processor = _post_processor(spec, spec.tokens)
    special, plain = _added_tokens(spec, {TOKEN_CONTROL, TOKEN_UNKNOWN})
    tk.add_special_tokens(special)
    tk.add_tokens(plain)
    return tk


def _check_ids(tk: Tokenizer, spec: VocabSpec) -> None:
    """Every token must keep its id: the model's embedding rows are indexed by it."""
    seen: set[str] = set()
    for i, tok in enumerate(spec.tokens):
        if tok in seen:
            continue
        seen.add(tok)
        got = tk.token_to_id(tok)
        if got != i:
            raise ModelSourceError(
                f"{spec.where}: rebuilt tokenizer maps token {tok!r} to id {got}, the vocabulary "
                f"says {i}"
            )


def build_tokenizer(spec: VocabSpec) -> Tokenizer:
    if len(spec.token_types) != len(spec.tokens):
        raise ModelSourceError(
            f"{spec.where}: {len(spec.tokens)} tokens but {len(spec.token_types)} token types"
        )
    if spec.model == "gpt2":
        tk = _build_byte_level(spec)
    elif spec.model == "llama":
        tk = _build_sentencepiece(spec)
    else:
        raise ModelSourceError(
            f"{spec.where}: tokenizer model {spec.model!r} is not supported (supported: 'gpt2' "
            f"byte-level BPE, 'llama' SentencePiece BPE)"
        )
    _check_ids(tk, spec)
    return tk


def tokenizer_config(spec: VocabSpec) -> dict[str, Any]:
    """tokenizer_config.json for the rebuilt tokenizer (what AutoTokenizer and our runtimes read)."""

    def name(i: int | None) -> str | None:
        return spec.tokens[i] if i is not None and 0 <= i < len(spec.tokens) else None

    cfg: dict[str, Any] = {
        # The generic fast tokenizer: it takes tokenizer.json as-is instead of rebuilding the
        # pipeline from class defaults (which e.g. LlamaTokenizer would).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(spec.bos_id),
        "eos_token": name(spec.eos_id),
        "unk_token": name(spec.unk_id),
        "pad_token": name(spec.pad_id),
        "add_bos_token": bool(spec.add_bos),
        "add_eos_token": bool(spec.add_eos),
        "clean_up_tokenization_spaces": False,
    }
    if spec.model_max_length:
        cfg["model_max_length"] = int(spec.model_max_length)
    if spec.chat_template:
        cfg["chat_template"] = spec.chat_template
    return cfg


def build_tokenizer_files(spec: VocabSpec) -> dict[str, bytes]:
    """{"tokenizer.json": ..., "tokenizer_config.json": ...} as UTF-8 bytes."""
    tk = build_tokenizer(spec)
    return {
        "tokenizer.json": tk.to_str(pretty=False).encode("utf-8"),
        "tokenizer_config.json": json.dumps(
            tokenizer_config(spec), indent=2, ensure_ascii=False
        ).encode("utf-8"),
    }

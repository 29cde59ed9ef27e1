"""Tokenization: the model's `tokenizers` tokenizer (`TextTokenizer`) and streaming detokenization
(`IncrementalDetokenizer`). Twin of web/src/tokenizer.ts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .request_spec import SPEC


def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: each byte is drawn as one printable character,
    bytes that are already printable as themselves and the rest as code points from 256 up."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table: dict[str, int] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _special_token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):  # older tokenizer_config.json stores AddedToken dicts
        content = value.get("content")
        return content if isinstance(content, str) else None
    return None


class TextTokenizer:
    """The model folder's `tokenizers` tokenizer plus what the chat config says about BOS/EOS."""

    def __init__(self, model_dir: Path, config: Mapping[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok_config: dict[str, Any] = {}
        cfg_path = model_dir / "tokenizer_config.json"
        if cfg_path.exists():
            tok_config = json.loads(cfg_path.read_text(encoding="utf-8"))
        self.bos_token_id: int | None = config.get("bos_token_id")
        self.add_bos_token = bool(config.get("add_bos_token", False)) and self.bos_token_id is not None
        self.eos_token_ids: frozenset[int] = frozenset(config.get("eos_token_ids") or [])

        def token_text(name: str, token_id: int | None) -> str:
            text = _special_token_text(tok_config.get(name))
            if text is None and token_id is not None:
                text = self.tokenizer.id_to_token(token_id)
            return text or ""

        first_eos = min(self.eos_token_ids) if self.eos_token_ids else None
        self.special_tokens = {
            "bos_token": token_text("bos_token", self.bos_token_id),
            "eos_token": token_text("eos_token", first_eos),
            "unk_token": token_text("unk_token", None),
            "pad_token": token_text("pad_token", config.get("pad_token_id")),
        }
        decoder = json.loads(self.tokenizer.to_str()).get("decoder") or {}
        self._byte_level = "ByteLevel" in json.dumps(decoder)
        self._byte_decoder = _gpt2_byte_decoder() if self._byte_level else {}
        self._bytes_cache: dict[int, bytes] = {}

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`; special-token text (e.g. `<|im_start|>`) maps to its token. BOS is
        prepended when the config says so, unless the text already starts with it."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if (self.add_bos_token if add_bos is None else add_bos) and self.bos_token_id is not None:
            if not ids or ids[0] != self.bos_token_id:
                ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        # Generated text skips special tokens; the tokenizer server can show them.
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for (a partial UTF-8 character is possible)."""
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        piece = self.tokenizer.id_to_token(token_id) or ""
        if self._byte_level:
            try:
                raw = bytes(self._byte_decoder[c] for c in piece)
            except KeyError:  # an added token written in plain text
                raw = piece.encode("utf-8")
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            raw = bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
        else:
            raw = piece.replace("\u2581", " ").encode("utf-8")  # SentencePiece word marker
        self._bytes_cache[token_id] = raw
        return raw

    def token_text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decoding token by token is wrong twice over: a multi-byte UTF-8 character can be split over
    several byte tokens, and SentencePiece decoders strip the leading space of whatever they decode.
    So each step decodes a short window of recent tokens and emits what the new token added to the
    window's text, and it waits (emits nothing) while the text ends in an incomplete character
    (U+FFFD). The window starts with the prompt's last tokens so the first generated token decodes
    with its leading space. web/src/tokenizer.ts's IncrementalDetokenizer is its twin
    (request_spec.json "detokenizer").
    """

    CONTEXT_TOKENS: int = SPEC["detokenizer"]["prefix_tokens"]

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(prompt_ids[-self.CONTEXT_TOKENS :])
        self._prefix = 0  # window start
        self._read = len(self._ids)  # tokens before this are already emitted

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        text = self._tok.decode(self._ids[self._prefix :])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end of generation)."""
        if self._read == len(self._ids):
            return ""
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        text = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(prefix_text) :] if len(text) > len(prefix_text) else ""

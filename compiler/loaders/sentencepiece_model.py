"""SentencePiece `tokenizer.model` files -> VocabSpec, for checkpoints that ship no tokenizer.json
(ChatGLM3's remote-code tokenizer wraps a SentencePiece model and appends its own tokens).

The file is a protobuf `ModelProto`, read with the schema module the `sentencepiece` package ships.
A BPE model is what tokenizer_build's "llama" family rebuilds: the pieces' scores give the merge
order; the normalizer spec says whether a dummy prefix is added, whether whitespace is collapsed
and which character map applies. Unigram models would need a Unigram `tokenizers` model and are
refused (no supported architecture ships one without a tokenizer.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import ModelSourceError
from .tokenizer_build import TOKEN_CONTROL, VocabSpec

_BPE = 2  # sentencepiece TrainerSpec.ModelType


def read_sentencepiece_model(path: Path, *, extra_specials: Sequence[str] = (), add_bos: bool | None = None) -> VocabSpec:
    """The vocabulary of `path`; `extra_specials` are appended after its pieces, with the next ids,
    as CONTROL tokens (what ChatGLM's tokenizer code does with [gMASK], sop, <|user|>, ...)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:  # a dependency of the package; only a broken install lacks it
        raise ModelSourceError(f"{path}: reading tokenizer.model needs the sentencepiece and protobuf packages ({e})") from e
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as e:  # protobuf's DecodeError, or an OSError
        raise ModelSourceError(f"{path}: not a readable SentencePiece model ({e}); re-download tokenizer.model") from e
    if not proto.pieces:
        raise ModelSourceError(f"{path}: the SentencePiece model has no pieces (truncated or corrupt file)")
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != _BPE:
        raise ModelSourceError(f"{path}: SentencePiece model type {trainer.model_type} is not BPE; only BPE "
                               "tokenizer.model files are converted. Provide the model's tokenizer.json instead.")
    if trainer.treat_whitespace_as_suffix:
        raise ModelSourceError(f"{path}: SentencePiece treat_whitespace_as_suffix is not supported; provide a tokenizer.json")
    if norm.normalization_rule_tsv:
        raise ModelSourceError(f"{path}: custom SentencePiece normalization rules are not supported; provide a tokenizer.json")
    tokens = [p.piece for p in proto.pieces] + list(extra_specials)
    types = [int(p.type) for p in proto.pieces] + [TOKEN_CONTROL] * len(extra_specials)
    scores = [float(p.score) for p in proto.pieces] + [0.0] * len(extra_specials)

    def opt(i: int) -> int | None:
        return int(i) if 0 <= i < len(proto.pieces) else None

    bos = opt(trainer.bos_id)
    return VocabSpec(
        model="llama", tokens=tokens, token_types=types, scores=scores,
        bos_id=bos, eos_id=opt(trainer.eos_id), unk_id=opt(trainer.unk_id), pad_id=opt(trainer.pad_id),
        add_bos=bool(bos is not None) if add_bos is None else add_bos,
        add_space_prefix=bool(norm.add_dummy_prefix),
        precompiled_charsmap=bytes(norm.precompiled_charsmap) or None,
        collapse_whitespace=bool(norm.remove_extra_whitespaces),
        split_words=bool(trainer.split_by_whitespace),
        where=str(path),
    )

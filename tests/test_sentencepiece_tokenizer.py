"""SentencePiece tokenizer.model -> tokenizer.json (checkpoints that ship no tokenizer.json: ChatGLM3).

The reference is the `sentencepiece` library itself, which ChatGLM3's remote-code tokenizer wraps
(its SPTokenizer encodes with SentencePieceProcessor and appends its command tokens after the
pieces). Ids and decoded text must be identical on varied strings, for the real stories260K
tokenizer.model and for BPE models trained here with SentencePiece's defaults (NFKC character map,
extra whitespace removed) and with Llama's settings (identity, whitespace kept).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import STORIES
from tiny_families import make_family

from sphere_aae.loaders import ModelSourceError, load_source
from sphere_aae.loaders.sentencepiece_model import read_sentencepiece_model
from sphere_aae.loaders.tokenizer_build import build_tokenizer
from sphere_aae.models.chatglm import SPECIAL_TOKENS

spm = pytest.importorskip("sentencepiece")

REPO = Path(__file__).resolve().parent.parent

STRINGS = [
    "", " ", "   ", "hello world", "Hello, World!", "  two  spaces  ", " lead", "trail ", "\ttab", "a \tb", "a\t b",
    "a \n b", " \t x  \n  y  ", "new\nline\n\n", "x" * 60, "1234567890 3.14159 -42", "Grüße aus München, ça va?",
    "naïve café ﬁ ① ②  Ｆｕｌｌ width", "你好，世界", "こんにちは", "🙂🚀 emoji", "def f(a, b):\n    return a + b\n",
    "<|user|> is plain text here", "[gMASK]sop", "\u00a0non-breaking\u2009thin", "Once upon a time, there was a little girl.",
]


def _corpus() -> list[str]:
    lines = [line for f in sorted((REPO / "compiler").rglob("*.py"))[:40] for line in f.read_text().splitlines()]
    return lines + ["Once upon a time there was a little dog.", "Grüße aus München, ça va? 你好世界 🙂 naïve café"] * 40


def _strings() -> list[str]:
    return STRINGS + _corpus()[:300]


def _trained(tmp: Path, **settings) -> Path:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_writer=buf, vocab_size=800,
                                   model_type="bpe", byte_fallback=True, minloglevel=2, **settings)
    path = tmp / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


MODELS = {
    "stories260K": lambda tmp: STORIES / "tokenizer.model",
    "defaults (nfkc, extra whitespace removed)": lambda tmp: _trained(tmp),
    "llama-like (identity, whitespace kept)": lambda tmp: _trained(
        tmp, normalization_rule_name="identity", remove_extra_whitespaces=False),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_ids_and_text_equal_sentencepiece(name: str, tmp_path: Path) -> None:
    path = MODELS[name](tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok = build_tokenizer(read_sentencepiece_model(path))
    strings = _strings()
    assert len(strings) > 300
    for text in strings:
        ids = sp.encode(text)
        assert tok.encode(text, add_special_tokens=False).ids == ids, (text, sp.encode(text, out_type=str))
        assert tok.decode(ids) == sp.decode(ids), text


def test_chatglm_command_tokens_follow_the_pieces_and_match_whole() -> None:
    """ChatGLM's command tokens take the ids after the SentencePiece pieces, in its order, and a
    rendered chat prompt cuts them out whole (the ids the model's own chat builder writes)."""
    sp = spm.SentencePieceProcessor(model_file=str(STORIES / "tokenizer.model"))
    n = sp.get_piece_size()
    tok = build_tokenizer(read_sentencepiece_model(STORIES / "tokenizer.model", extra_specials=SPECIAL_TOKENS, add_bos=False))
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(n, n + len(SPECIAL_TOKENS)))
    ids = tok.encode("[gMASK]sop<|user|>\n Hi there<|assistant|>", add_special_tokens=False).ids
    gmask, sop, user, assistant = (tok.token_to_id(t) for t in ("[gMASK]", "sop", "<|user|>", "<|assistant|>"))
    assert ids[:3] == [gmask, sop, user] and ids[-1] == assistant
    assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids[3:-1])
    assert tok.encode("Hi", add_special_tokens=True).ids == sp.encode("Hi")  # no BOS: the template starts the prompt


def test_chatglm_folder_gets_a_tokenizer_json(tiny_models_root: Path) -> None:
    src = load_source(make_family(tiny_models_root, "chatglm"))
    assert not (Path(src.path) / "tokenizer.json").exists()
    cfg = json.loads(src.tokenizer_files["tokenizer_config.json"])
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["add_bos_token"] is False
    assert cfg["chat_template"].startswith("[gMASK]sop")  # the folder's own settings are kept
    assert "auto_map" not in cfg  # the remote code is not what reads our tokenizer.json


def test_bad_tokenizer_model_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x0a\xff\xff garbage")
    with pytest.raises(ModelSourceError, match="tokenizer.model|SentencePiece"):
        read_sentencepiece_model(bad)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_writer=buf, vocab_size=300,
                                   model_type="unigram", minloglevel=2)
    bad.write_bytes(buf.getvalue())
    with pytest.raises(ModelSourceError, match="not BPE"):
        read_sentencepiece_model(bad)

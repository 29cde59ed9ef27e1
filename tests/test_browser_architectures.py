"""Every architecture family in headless Chromium on WebGPU: greedy ids equal the native engine's.

- the tiny families of tiny_families.py (qwen2, qwen3, gemma, gemma2, gemma3_text, phi3), q0f32,
  a ~73-token prompt (past gemma2/gemma3's window of 16) and 24 new tokens;
- a large vocabulary: a tiny Llama with 262144 tokens and hidden 160 in f32, whose tied embedding
  (160 MiB) exceeds one WebGPU storage binding and is split by the compiler into row parts
  (`model.embed_tokens.parts.N.weight`), each within the 128 MiB bindings of the lavapipe route.
  8 new tokens; the prompt holds ids from every part (the last row included), and the model gets
  a tokenizer of its own vocabulary size (the stories tokenizer's 512 ids plus placeholder words),
  since the engine detokenizes what it generates and an id the tokenizer lacks cannot be decoded.

Every model runs in ONE browser session on one server (the faster route, `webgpu_route`), each
loaded, run and unloaded in turn by the in-page engine, to keep the number of browser starts and
kernel compiles down; the per-model load and generation times are printed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from browser_support import (  # noqa: F401  (fixtures are used by name)
    SITE,
    build,
    native_greedy,
    playwright,
    web_dist,
    web_models_dir,
    webgpu_route,
)
from conftest import STORIES, make_tiny_model
from sphere_aae import artifact
from sphere_aae.web import browser, start_server
from tiny_families import FAMILIES, PROMPT, make_family

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NEW_TOKENS = 24
VOCAB = 262144
VOCAB_NEW_TOKENS = 8  # each decode step reads the 160 MiB head: ~1 s a token on lavapipe

# -- the large-vocabulary model ------------------------------------------------------------------


def _vocab_tokenizer_json(vocab_size: int) -> str:
    """The stories260K tokenizer grown to `vocab_size` ids: ids >= 512 are plain words ("▁w<id>",
    decoded " w<id>") that no merge produces, so encoding is unchanged and every id decodes."""
    tok = json.loads((STORIES / "tokenizer.json").read_text())
    vocab: dict[str, int] = tok["model"]["vocab"]
    taken = set(vocab)
    next_id = max(vocab.values()) + 1
    while next_id < vocab_size:
        piece = f"\u2581w{next_id}"
        assert piece not in taken
        vocab[piece] = next_id
        next_id += 1
    return json.dumps(tok, ensure_ascii=False)


def make_large_vocab_model(root: Path) -> Path:
    src = make_tiny_model(
        root / f"llama-vocab{VOCAB}", "llama", vocab_size=VOCAB, hidden_size=160, intermediate_size=320,
        num_hidden_layers=1, num_attention_heads=5, num_key_value_heads=1, tie_word_embeddings=True,
    )
    tok = src / "tokenizer.json"
    # Written once: a rewrite would change the source's fingerprint and rebuild the model.
    if len(json.loads(tok.read_text())["model"]["vocab"]) != VOCAB:
        artifact.atomic_write_bytes(tok, _vocab_tokenizer_json(VOCAB).encode())
    return src


# -- building -------------------------------------------------------------------------------------


def _prompt_ids(folder: Path, extra: list[int] = ()) -> list[int]:
    from tokenizers import Tokenizer

    config = json.loads((folder / "aae-chat-config.json").read_text())
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT, add_special_tokens=False).ids
    half = len(ids) // 2
    return [config["bos_token_id"], *ids[:half], *extra, *ids[half:]]


@pytest.fixture(scope="module")
def arch_models(tiny_models_root: Path, web_models_dir: Path) -> dict[str, dict[str, Any]]:
    """name -> {src, folder, config, prompt, n} or {src, error}: each model built for the browser.

    A failed build is recorded, not raised, so the other families still run; its own test fails.
    """
    out: dict[str, dict[str, Any]] = {}
    makers = {name: (lambda name=name: make_family(tiny_models_root, name)) for name in FAMILIES}
    makers["large-vocab"] = lambda: make_large_vocab_model(tiny_models_root)
    for name, make in makers.items():
        t0 = time.perf_counter()
        try:
            src = make()
            folder = build(src, "q0f32", web_models_dir)
        except Exception as e:  # noqa: BLE001  (reported by the family's own test)
            out[name] = {"error": f"build failed: {type(e).__name__}: {e}"}
            continue
        config = json.loads((folder / "aae-chat-config.json").read_text())
        if name == "large-vocab":
            # Ids from the first part, the second part and its last row.
            parts = _vocab_parts(folder)
            extra = [parts[0] - 1, parts[0], VOCAB - 1, parts[0] + 1234]
            prompt, n = _prompt_ids(folder, extra), VOCAB_NEW_TOKENS
        else:
            prompt, n = _prompt_ids(folder), NEW_TOKENS
        out[name] = {"src": src, "folder": folder, "config": config, "prompt": prompt, "n": n}
        print(f"[arch tests] {name}: built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def _vocab_parts(folder: Path) -> list[int]:
    """Row counts of the embedding parts in the manifest (in order)."""
    manifest = json.loads((folder / "tensor-manifest.json").read_text())
    parts = {t["name"]: t for t in manifest["tensors"] if t["name"].startswith("model.embed_tokens.parts.")}
    return [parts[f"model.embed_tokens.parts.{i}.weight"]["shape"][0] for i in range(len(parts))]


# -- one browser session for all of them ----------------------------------------------------------

SETUP_JS = """async () => {
  const { Engine } = await import('/web/dist/index.js');
  const base = new URL('/models/models.json', location.href);
  const models = await (await fetch(base, { cache: 'no-store' })).json();
  window.__arch = { Engine, model_list: models.map((m) => ({ ...m, model_url: new URL(m.model_url, base).href })) };
  return window.__arch.model_list.map((m) => m.model_id);
}"""

RUN_JS = """async ([modelId, prompt, n, adapterOptions]) => {
  const { Engine, model_list } = window.__arch;
  const engine = new Engine({ appConfig: { model_list }, requestAdapterOptions: adapterOptions ?? undefined, store: null });
  const t0 = performance.now();
  try {
    await engine.reload(modelId);
    const t1 = performance.now();
    const r = await engine.completions.create({ prompt, max_tokens: n, temperature: 0, ignore_eos: true, return_token_ids: true });
    const c = r.choices[0];
    return { ids: [...r.prompt_token_ids, ...c.token_ids], text: c.text, finish: c.finish_reason,
             adapter: engine.adapterInfo ?? '', load_s: (t1 - t0) / 1000, generate_s: (performance.now() - t1) / 1000 };
  } catch (e) {
    return { error: `${e && e.name}: ${e && e.message}` };
  } finally {
    await engine.unload().catch(() => {});
  }
}"""


@pytest.fixture(scope="module")
def browser_runs(
    arch_models: dict[str, dict[str, Any]], web_models_dir: Path, web_dist: Path, playwright: Any, webgpu_route: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """name -> the page's result for that model ({ids, text, finish, ...} or {error}); plus the
    adapter's storage-binding limit under "__limits"."""
    runs: dict[str, Any] = {}
    t_start = time.perf_counter()
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv:
        ctx = browser.launch(playwright, tmp_path_factory.mktemp("arch-profile"), webgpu_route)
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + "/bench.html")
            listed = page.evaluate(SETUP_JS)
            runs["__limits"] = page.evaluate(browser.PROBE_JS, browser.request_adapter_options(webgpu_route))
            for name, m in arch_models.items():
                if "error" in m:
                    continue
                model_id = m["config"]["model_id"]
                assert model_id in listed, f"{model_id} is not in models.json"
                r = page.evaluate(RUN_JS, [model_id, m["prompt"], m["n"], browser.request_adapter_options(webgpu_route)])
                runs[name] = r
                timing = f"load {r['load_s']:.1f} s, {m['n']} tokens {r['generate_s']:.1f} s" if "ids" in r else r["error"]
                print(f"[arch tests] {name} on {webgpu_route}: {timing}", file=sys.stderr)
            runs["__errors"] = errors
        finally:
            ctx.close()
    print(f"[arch tests] browser session: {time.perf_counter() - t_start:.1f} s", file=sys.stderr)
    return runs


def _check_ids(name: str, arch_models: dict[str, dict[str, Any]], browser_runs: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    m = arch_models[name]
    assert "error" not in m, m["error"]
    r = browser_runs[name]
    assert "error" not in r, f"{name} in the browser: {r['error']}"
    assert browser_runs["__errors"] == []
    native = native_greedy(str(m["src"]), "q0f32", m["prompt"], m["n"], banned=tuple(m["config"]["eos_token_ids"]))
    assert r["finish"] == "length"
    assert r["ids"] == native, f"{name}: browser ids differ from native at position {_first_diff(r['ids'], native)}"
    return m, native


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_ids_match_native(name: str, arch_models: dict[str, dict[str, Any]], browser_runs: dict[str, Any]) -> None:
    m, native = _check_ids(name, arch_models, browser_runs)
    window = m["config"]["sliding_window_size"]
    if window > 0:
        assert len(m["prompt"]) > window + 8, "the prompt must run past the window"
    generated = native[len(m["prompt"]):]
    assert len(set(generated)) >= 4, f"a near-constant continuation proves little: {generated}"


def test_large_vocab_is_split_and_matches_native(arch_models: dict[str, dict[str, Any]], browser_runs: dict[str, Any], webgpu_route: str) -> None:
    m = arch_models["large-vocab"]
    assert "error" not in m, m["error"]
    manifest = json.loads((m["folder"] / "tensor-manifest.json").read_text())
    parts = [t for t in manifest["tensors"] if t["name"].startswith("model.embed_tokens.")]
    assert VOCAB * 160 * 4 > artifact.MAX_BINDING_BYTES, "the whole embedding must not fit one binding"
    assert len(parts) >= 2 and sum(t["shape"][0] for t in parts) == VOCAB
    assert all(t["bytes"] <= artifact.MAX_BINDING_BYTES for t in manifest["tensors"])
    if webgpu_route == "lavapipe":
        # The route really has the small bindings the split is for.
        assert browser_runs["__limits"]["maxStorageBufferBindingSize"] <= artifact.MAX_BINDING_BYTES
    first_part = parts[0]["shape"][0]
    assert any(t >= first_part for t in m["prompt"]), "the prompt must use the second part"
    _check_ids("large-vocab", arch_models, browser_runs)

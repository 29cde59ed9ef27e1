"""Real compiled models in headless Chromium on WebGPU (no GPU here: CPU WebGPU routes).

- stories260K q0f32 on the demo page (worker engine, SwiftShader): greedy token ids equal the
  native engine's, which equal the fixture's reference; then the page's JSON mode with a schema
  gives JSON valid against it;
- a sliding-window model (tiny Mistral, W = 32) with a prompt past the window, then a second
  request that diverges from it past the window (the cache rolled back with popn): ids equal the
  native engine's (the window in the kernels, a cache that keeps every token, and the prefill
  chunk rule of ARTIFACT.md, applied by web/src/model_runtime.ts);
- SmolLM2-135M-Instruct q4f32_1 on the chat page: a streamed answer naming Paris; a second browser
  session on the same profile loads it without fetching a shard; a shard corrupted inside the
  browser cache is caught by its sha256 and fetched again, alone, and the answer is unchanged.

Models are built on demand (browser_support.build, cached in $SPHERE_AAE_HOME/web-dist).
SmolLM2 and the sliding-window model run on the faster route available (`webgpu_route`: lavapipe
when it works, else SwiftShader with fewer tokens).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from browser_support import (  # noqa: F401  (fixtures are used by name)
    SITE,
    build,
    load_in_site,
    model_paths,
    native_greedy,
    playwright,
    site_url,
    wait_state,
    web_dist,
    web_models_dir,
    webgpu_route,
)
from conftest import STORIES_REFERENCE_IDS, STORIES_REFERENCE_TEXT, make_tiny_model
from sphere_aae.web import browser, start_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STORY_PROMPT = "Once upon a time"
STORY_TOKENS = 40
SMOL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"


def _page(ctx: Any) -> tuple[Any, list[str]]:
    """A new tab, and the list its uncaught errors go to (the tests require it to stay empty)."""
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def _send_chat(page: Any, text: str, *, max_tokens: int, timeout_s: float) -> None:
    """Type a message on the demo page with greedy settings and wait until the answer is complete."""
    page.evaluate("document.querySelector('details').open = true")  # the settings panel
    page.fill("#temperature", "0")
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#prompt", text)
    before = page.evaluate("document.querySelectorAll('.msg.assistant').length")
    page.click("#send-btn")
    # Done: a new assistant bubble exists, it is no longer streaming, and the page is idle again.
    page.wait_for_function(
        """n => document.querySelectorAll('.msg.assistant').length > n
             && !document.querySelector('.msg.assistant.streaming')
             && ['ready', 'error'].includes(document.body.dataset.state)""",
        arg=before,
        timeout=timeout_s * 1000,
    )
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")


# -- stories260K: exact ids ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stories_web(stories_dir: Path, web_models_dir: Path) -> Path:
    return build(stories_dir, "q0f32", web_models_dir)


PAGE_SCHEMA = {"type": "object", "required": ["name", "age"], "properties": {
    "name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 1, "maximum": 9}}}


def test_stories260k_ids_match_native_and_reference(
    stories_dir: Path, stories_web: Path, web_models_dir: Path, web_dist: Path, playwright: Any, tmp_path: Path
) -> None:
    native = native_greedy(str(stories_dir), "q0f32", STORIES_REFERENCE_IDS[:5], STORY_TOKENS)
    assert native == STORIES_REFERENCE_IDS, "the native engine drifted from the fixture's reference"

    model_id = json.loads((stories_web / "aae-chat-config.json").read_text())["model_id"]
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv:
        ctx = browser.launch(playwright, tmp_path / "profile", "swiftshader")
        try:
            page, errors = _page(ctx)
            load_in_site(page, site_url(srv, model_id, "swiftshader"))
            _send_chat(page, STORY_PROMPT, max_tokens=STORY_TOKENS, timeout_s=300)
            answer = page.evaluate("window.aae.lastAnswer")
            bubble = page.eval_on_selector(".msg.assistant", "el => el.firstChild.textContent")
            # JSON mode with a schema in the settings: the answer is JSON valid against it.
            page.click("#reset-btn")
            page.check("#json-mode")
            page.fill("#json-schema", json.dumps(PAGE_SCHEMA))
            _send_chat(page, "Tom had a dog", max_tokens=60, timeout_s=300)
            json_answer = page.evaluate("window.aae.lastAnswer")
            assert errors == []
        finally:
            ctx.close()
    import jsonschema

    assert json_answer["finish"] == "stop", json_answer
    jsonschema.validate(json.loads(json_answer["content"]), PAGE_SCHEMA)
    # The page ran a base model's chat turn: the prompt is the text, BOS first.
    assert answer["promptIds"] + answer["ids"] == native == STORIES_REFERENCE_IDS
    assert answer["finish"] == "length"
    assert STORY_PROMPT + bubble == STORIES_REFERENCE_TEXT


# -- sliding window -------------------------------------------------------------------------------

LONG_PROMPT = (
    "Once upon a time there was a little dog. The dog liked to run in the park with his friend the cat "
    "every day. One day they found a big red ball under a tree, and they played with it until the sun went down."
)


def test_sliding_window_model_ids_match_native(
    tiny_models_root: Path, web_models_dir: Path, web_dist: Path, playwright: Any, webgpu_route: str, tmp_path: Path
) -> None:
    src = make_tiny_model(tiny_models_root / "mistral-sliding-window", "mistral", sliding_window=32, max_position_embeddings=256)
    folder = build(src, "q0f32", web_models_dir)
    config = json.loads((folder / "aae-chat-config.json").read_text())
    window = config["sliding_window_size"]
    assert window == 32
    from tokenizers import Tokenizer

    prompt_ids = [config["bos_token_id"], *Tokenizer.from_file(str(folder / "tokenizer.json")).encode(LONG_PROMPT, add_special_tokens=False).ids]
    assert len(prompt_ids) > window + 8, "the prompt must run past the window"
    n = 12
    native = native_greedy(str(src), "q0f32", prompt_ids, n, banned=tuple(config["eos_token_ids"]))
    # A second request sharing the first 60 tokens: the engine rolls its cache back to them with
    # kv_state_popn (allowed at any length: the cache keeps every token) and prefills the rest.
    diverged = [*prompt_ids[:60], *prompt_ids[5:15]]
    native2 = native_greedy(str(src), "q0f32", diverged, n, banned=tuple(config["eos_token_ids"]))

    run = """([prompt, n]) => window.aae.engine.completions.create(
               {prompt, max_tokens: n, temperature: 0, ignore_eos: true, return_token_ids: true})"""
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv:
        ctx = browser.launch(playwright, tmp_path / "profile", webgpu_route)
        try:
            page, errors = _page(ctx)
            load_in_site(page, site_url(srv, config["model_id"], webgpu_route))
            r = page.evaluate(run, [prompt_ids, n])
            r2 = page.evaluate(run, [diverged, n])
            assert errors == []
        finally:
            ctx.close()
    assert r["prompt_token_ids"] + r["choices"][0]["token_ids"] == native
    assert r2["prompt_token_ids"] + r2["choices"][0]["token_ids"] == native2


# -- SmolLM2 on the chat page: answer, cached reload, corrupted shard ------------------------------


@pytest.fixture(scope="module")
def smol_web(web_models_dir: Path) -> Path:
    return build(SMOL, "q4f32_1", web_models_dir)


@pytest.fixture(scope="module")
def smol_server(smol_web: Path, web_models_dir: Path, web_dist: Path) -> Iterator[Any]:
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv:
        yield srv


@pytest.fixture(scope="module")
def smol_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One browser profile for the SmolLM2 tests: the first session fills its cache."""
    return tmp_path_factory.mktemp("smol-profile")


def _answer_tokens(route: str) -> int:
    # "The capital of France is Paris." is 7 tokens + EOS. SwiftShader decodes SmolLM2 at well under
    # a token a second here, so on that fallback the answer is cut just after "Paris".
    return 16 if route == "lavapipe" else 7


# Records the assistant bubble's text each time it changes, with a timestamp: proof that the answer
# streamed in pieces rather than arriving at once.
WATCH_BUBBLE_JS = """() => {
  window.__snapshots = [];
  const log = document.querySelector('#chat-log');
  new MutationObserver(() => {
    const b = log.querySelector('.msg.assistant');
    if (!b) return;
    const text = b.firstChild ? b.firstChild.textContent : '';
    const last = window.__snapshots[window.__snapshots.length - 1];
    if (!last || last.text !== text) window.__snapshots.push({ text, t: performance.now(), streaming: b.classList.contains('streaming') });
  }).observe(log, { childList: true, subtree: true, characterData: true });
}"""


@pytest.fixture(scope="module")
def smol_first_session(smol_web: Path, smol_server: Any, smol_profile: Path, playwright: Any, webgpu_route: str) -> dict[str, Any]:
    """First visit: empty cache, load on the chat page (worker), ask the question, keep the record."""
    srv = smol_server
    srv.access_log.clear()
    ctx = browser.launch(playwright, smol_profile, webgpu_route)
    try:
        page, errors = _page(ctx)
        load_in_site(page, site_url(srv, smol_web.name, webgpu_route))
        fetched = model_paths(srv, smol_web.name)
        page.evaluate(WATCH_BUBBLE_JS)
        _send_chat(page, QUESTION, max_tokens=_answer_tokens(webgpu_route), timeout_s=900)
        return {
            "fetched": fetched,
            "answer": page.evaluate("window.aae.lastAnswer"),
            "snapshots": page.evaluate("window.__snapshots"),
            "stats": page.inner_text("#stats"),
            "errors": list(errors),
        }
    finally:
        ctx.close()


def test_smollm2_streams_a_coherent_answer(smol_first_session: dict[str, Any], smol_web: Path) -> None:
    s = smol_first_session
    assert s["errors"] == []
    manifest = json.loads((smol_web / "tensor-manifest.json").read_text())
    assert len(manifest["shards"]) >= 3
    # First visit: every shard came from the server.
    assert {f"/models/{smol_web.name}/{x['file']}" for x in manifest["shards"]} <= set(s["fetched"])
    answer = s["answer"]["content"]
    assert "Paris" in answer, answer
    assert len(s["answer"]["promptIds"]) > 10  # the ChatML template was applied
    # Streamed: the bubble grew several times, each text extending the previous one, while the
    # bubble was still marked as streaming.
    texts = [x["text"] for x in s["snapshots"] if x["text"]]
    assert len(texts) >= 3, s["snapshots"]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), texts
    assert any(x["streaming"] for x in s["snapshots"] if x["text"])
    assert texts[-1].startswith(answer) or answer.startswith(texts[-1])
    assert "decode" in s["stats"]


def test_smollm2_second_session_fetches_no_model_file(
    smol_first_session: dict[str, Any], smol_web: Path, smol_server: Any, smol_profile: Path, playwright: Any, webgpu_route: str
) -> None:
    srv = smol_server
    srv.access_log.clear()
    ctx = browser.launch(playwright, smol_profile, webgpu_route)  # a new browser on the same profile
    try:
        page, errors = _page(ctx)
        load_in_site(page, site_url(srv, smol_web.name, webgpu_route))
        assert errors == []
    finally:
        ctx.close()
    assert "/models/models.json" in srv.access_log.paths()  # the server was asked, just not for the model
    assert model_paths(srv, smol_web.name) == []


# Overwrite bytes in the middle of one cached shard, keeping the entry's headers (its recorded size
# and sha256): only re-hashing the bytes can notice. Runs in the page (same origin as the cache).
CORRUPT_JS = """async (suffix) => {
  const cache = await caches.open('aae-models');
  const key = (await cache.keys()).find((r) => r.url.endsWith(suffix));
  if (!key) throw new Error('no cached entry ends with ' + suffix);
  const resp = await cache.match(key);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  for (let i = 0; i < 4096; i++) bytes[(bytes.length >> 1) + i] ^= 0x5a;
  await cache.put(key, new Response(bytes, { status: 200, headers: resp.headers }));
  return key.url;
}"""

CACHED_SHA256_JS = """async (suffix) => {
  const cache = await caches.open('aae-models');
  const key = (await cache.keys()).find((r) => r.url.endsWith(suffix));
  const bytes = await (await cache.match(key)).arrayBuffer();
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}"""


def test_smollm2_corrupted_cached_shard_is_refetched(
    smol_first_session: dict[str, Any], smol_web: Path, smol_server: Any, smol_profile: Path, playwright: Any, webgpu_route: str
) -> None:
    srv = smol_server
    manifest = json.loads((smol_web / "tensor-manifest.json").read_text())
    victim = manifest["shards"][1]
    ctx = browser.launch(playwright, smol_profile, webgpu_route)
    try:
        page, errors = _page(ctx)
        # Corrupt the entry before the engine reads it: open the page without autoload.
        page.goto(site_url(srv, smol_web.name, webgpu_route, autoload=False))
        wait_state(page, ("idle",), 60)
        page.evaluate(CORRUPT_JS, victim["file"])
        assert page.evaluate(CACHED_SHA256_JS, victim["file"]) != victim["sha256"]

        srv.access_log.clear()
        page.click("#load-btn")
        assert wait_state(page, ("ready", "error"), 600) == "ready", page.inner_text("#status")
        # Exactly the corrupted shard came from the server again; everything else from the cache.
        assert model_paths(srv, smol_web.name) == [f"/models/{smol_web.name}/{victim['file']}"]
        # ...and the cache now holds the good bytes.
        assert page.evaluate(CACHED_SHA256_JS, victim["file"]) == victim["sha256"]
        assert hashlib.sha256((smol_web / victim["file"]).read_bytes()).hexdigest() == victim["sha256"]

        _send_chat(page, QUESTION, max_tokens=_answer_tokens(webgpu_route), timeout_s=900)
        again = page.evaluate("window.aae.lastAnswer")
        assert errors == []
    finally:
        ctx.close()
    first = smol_first_session["answer"]
    assert again["promptIds"] + again["ids"] == first["promptIds"] + first["ids"]
    assert again["content"] == first["content"]

"""The engine's request-level checks (web/scripts/integration-checks.mjs) on stories260K in
headless Chromium: the reference continuation, KV-cache reuse and popN back to a shared prefix on
TVM's real paged cache (same, diverging and extended prompts give the fresh-cache text), chunked
prefill (prefill_chunk_size 3), streaming, interrupt, seeded sampling, two concurrent requests
(batch_decode) equal to their solo runs, one of them aborted through its AbortSignal without
touching the other and with its KV pages freed, and the context-window refusal. In-page engine, on the faster CPU WebGPU route available (`webgpu_route`).

Then, in the same page, the request spec end to end (REQUESTS.md): seeded requests with
temperature, top_p, the three penalties and logit_bias, chat and completions, streaming and not,
n = 2, give the native engine's token ids (`SphereAaeEngine` on the CPU): one PRNG, one sampling
pipeline, one detokenizer and stop rule in both.

The same seeded comparison on SmolLM2-135M-Instruct at q0f32 (a real chat model: ChatML template,
49k vocabulary, f32 weights so CPU and WebGPU logits stay close), with few tokens per request.
"""

from __future__ import annotations

import json
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from browser_support import (  # noqa: F401  (fixtures are used by name)
    SITE,
    WEB,
    build,
    playwright,
    web_dist,
    web_models_dir,
    webgpu_route,
)
from sphere_aae.web import browser, start_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN_JS = """async ({ modelUrl, adapterOptions, config }) => {
  const aae = await import('/web/dist/index.js');
  const { runIntegrationChecks, fetchWithConfigOverrides } = window.aaeIntegrationChecks;
  const load = (overrides) => aae.CreateEngine('m', {
    appConfig: { model_list: [{ model_id: 'm', model_url: modelUrl }] },
    // No browser cache: a config changed by `overrides` must not be stored under the real URL.
    store: null,
    fetch: fetchWithConfigOverrides((input, init) => fetch(input, init), overrides),
    ...(adapterOptions ? { requestAdapterOptions: adapterOptions } : {}),
    logger: () => {},
  });
  const lines = [];
  const failures = await runIntegrationChecks({ aae, load, config, log: (l) => lines.push(l) });
  return { failures, lines };
}"""

# Each request's prompt ids and, per choice index, its generated ids (streams: concatenated).
SEEDED_JS = """async ({ modelUrl, adapterOptions, requests }) => {
  const aae = await import('/web/dist/index.js');
  const engine = await aae.CreateEngine('m', {
    appConfig: { model_list: [{ model_id: 'm', model_url: modelUrl }] }, store: null, logger: () => {},
    ...(adapterOptions ? { requestAdapterOptions: adapterOptions } : {}),
  });
  const out = [];
  for (const { kind, body } of requests) {
    const r = await (kind === 'chat' ? engine.chat.completions : engine.completions).create(body);
    const ids = {};
    let prompt = body.stream ? null : r.prompt_token_ids;
    if (body.stream) {
      for await (const chunk of r) {
        if (chunk.prompt_token_ids) prompt = chunk.prompt_token_ids;
        for (const c of chunk.choices) (ids[c.index] ??= []).push(...(c.token_ids ?? []));
      }
    } else {
      for (const c of r.choices) ids[c.index] = c.token_ids;
    }
    out.push({ prompt, choices: ids });
  }
  await engine.unload();
  return out;
}"""

SAMPLING = {"temperature": 0.9, "top_p": 0.9, "presence_penalty": 0.3, "frequency_penalty": 0.4, "repetition_penalty": 1.1,
            "logit_bias": {"261": -2.5, "286": 1.5}, "max_tokens": 24, "return_token_ids": True}
STORY_SCHEMA = {"type": "object", "required": ["name", "age", "friends"], "properties": {
    "name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 1, "maximum": 9},
    "friends": {"type": "array", "maxItems": 2, "items": {"enum": ["Lily", "Tom", "Sue"]}}}}
SEEDED_REQUESTS = [
    ("chat", {"messages": [{"role": "user", "content": "Once upon a time"}], "seed": 1234, "n": 2, **SAMPLING}),
    ("chat", {"messages": [{"role": "user", "content": "Lily and Tom"}], "seed": 99, "stream": True, **SAMPLING}),
    ("completion", {"prompt": "The cat sat", "seed": 7, **SAMPLING}),
    ("completion", {"prompt": "One day", "seed": -3, "stream": True, **SAMPLING, "temperature": 1.2}),
    # Structured output: XGrammar's masks in both engines, so the same seed gives the same JSON.
    ("chat", {"messages": [{"role": "user", "content": "Tom had a dog"}], "seed": 5, "n": 2, **SAMPLING, "max_tokens": 48,
              "response_format": {"type": "json_schema", "json_schema": {"name": "story", "schema": STORY_SCHEMA}}}),
    ("chat", {"messages": [{"role": "user", "content": "The sun"}], "seed": 6, "stream": True, **SAMPLING,
              "response_format": {"type": "grammar", "grammar": 'root ::= "The " ("cat" | "dog" | "girl") " was " [a-z]+ "."'}}),
]


def native_seeded(source: str | Path, requests: list[tuple[str, dict[str, Any]]], quantization: str = "q0f32") -> list[dict[str, Any]]:
    """`requests` on the native engine, written as SEEDED_JS writes the browser's."""
    from sphere_aae.engine import SphereAaeEngine

    out = []
    with SphereAaeEngine(str(source), quantization=quantization) as engine:
        for kind, body in requests:
            r = (engine.chat.completions if kind == "chat" else engine.completions).create(**body)
            ids: dict[str, list[int]] = {}
            prompt = None
            for chunk in r if body.get("stream") else [r]:
                prompt = chunk.prompt_token_ids or prompt
                for c in chunk.choices:
                    ids.setdefault(str(c.index), []).extend(c.token_ids or [])
            out.append({"prompt": prompt, "choices": ids})
    return out


def browser_seeded(page: Any, srv: Any, folder: Path, route: browser.Adapter, requests: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """`requests` on the in-page engine (SEEDED_JS) loaded from `folder`."""
    return page.evaluate(
        SEEDED_JS,
        {
            "modelUrl": f"{srv.url}/models/{folder.name}/",
            "adapterOptions": browser.request_adapter_options(route),
            "requests": [{"kind": k, "body": b} for k, b in requests],
        },
    )


def _first_difference(web: dict[str, Any], nat: dict[str, Any]) -> str:
    """Where the browser's ids leave the native engine's: the field, the position, the two ids."""
    pairs = [("prompt", web["prompt"], nat["prompt"])]
    for k in sorted(set(web["choices"]) | set(nat["choices"])):
        pairs.append((f"choice {k}", web["choices"].get(k), nat["choices"].get(k)))
    for name, w, n in pairs:
        if w == n:
            continue
        if w is None or n is None:
            return f"{name}: browser {w!r}, native {n!r}"
        i = next((i for i, (a, b) in enumerate(zip(w, n)) if a != b), min(len(w), len(n)))
        a = w[i] if i < len(w) else "<end>"
        b = n[i] if i < len(n) else "<end>"
        return f"{name} position {i}: browser {a}, native {b} (lengths {len(w)}, {len(n)})"
    return "equal"


def assert_seeded_equal(requests: list[tuple[str, dict[str, Any]]], seeded: list[dict[str, Any]], native: list[dict[str, Any]]) -> None:
    assert len(seeded) == len(native) == len(requests)
    for (kind, body), web, nat in zip(requests, seeded, native):
        label = f"{kind} seed={body['seed']} stream={body.get('stream', False)}"
        assert web == nat, f"{label}: {_first_difference(web, nat)}"
        assert all(len(ids) > 1 for ids in nat["choices"].values()), label


@contextmanager
def quiet_page(playwright: Any, srv: Any, route: browser.Adapter, tmp_path: Path) -> Iterator[tuple[Any, list[str]]]:
    """A tab on a quiet page of the served origin (bench.html, driven), and the list its uncaught
    errors go to; the browser closes after."""
    ctx = browser.launch(playwright, tmp_path / "profile", route)
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{srv.url}/bench.html?driven=1")
        yield page, errors
    finally:
        ctx.close()


def test_integration_checks_in_chromium(
    stories_dir: Path, web_models_dir: Path, web_dist: Path, playwright: Any, webgpu_route: browser.Adapter, tmp_path: Path
) -> None:
    folder = build(stories_dir, "q0f32", web_models_dir)
    config = json.loads((folder / "aae-chat-config.json").read_text())
    native = native_seeded(stories_dir, SEEDED_REQUESTS)
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv, quiet_page(playwright, srv, webgpu_route, tmp_path) as (page, errors):
        page.add_script_tag(path=str(WEB / "scripts" / "integration-checks.mjs"), type="module")
        page.wait_for_function("window.aaeIntegrationChecks !== undefined")
        r = page.evaluate(
            RUN_JS,
            {
                "modelUrl": f"{srv.url}/models/{folder.name}/",
                "adapterOptions": browser.request_adapter_options(webgpu_route),
                "config": config,
            },
        )
        seeded = browser_seeded(page, srv, folder, webgpu_route, SEEDED_REQUESTS)
    report = "\n".join(r["lines"])
    print(report)
    assert r["failures"] == 0, report
    assert "stories260K reference checks on" in report
    assert sum(line.startswith("ok ") for line in r["lines"]) == 13, report
    assert errors == []
    assert_seeded_equal(SEEDED_REQUESTS, seeded, native)
    assert native[0]["choices"]["0"] != native[0]["choices"]["1"], "n = 2: each choice has its own seed"


# -- SmolLM2-135M-Instruct, f32 weights ------------------------------------------------------------

SMOL = "SmolLM2-135M-Instruct"
# 260 = " the", 284 = " and" in SmolLM2's tokenizer. Few tokens: f32 SmolLM2 decodes on a CPU
# WebGPU route.
SMOL_SAMPLING = {"temperature": 0.9, "top_p": 0.9, "presence_penalty": 0.3, "frequency_penalty": 0.4, "repetition_penalty": 1.1,
                 "logit_bias": {"260": -2.5, "284": 1.5}, "max_tokens": 16, "return_token_ids": True}
SMOL_SEEDED_REQUESTS = [
    ("chat", {"messages": [{"role": "user", "content": "Tell me about the sea."}], "seed": 1234, "n": 2, **SMOL_SAMPLING}),
    ("chat", {"messages": [{"role": "user", "content": "Name a fruit."}], "seed": 99, "stream": True, **SMOL_SAMPLING}),
    ("completion", {"prompt": "The capital of France is", "seed": 7, **SMOL_SAMPLING}),
    ("completion", {"prompt": "Once upon a time", "seed": -3, "stream": True, **SMOL_SAMPLING, "temperature": 1.0}),
]


def test_seeded_requests_match_native_on_smollm2_f32(
    web_models_dir: Path, web_dist: Path, playwright: Any, webgpu_route: browser.Adapter, tmp_path: Path
) -> None:
    """SEEDED_JS's comparison on a real chat model (ChatML template, 49k vocab, f32 weights)."""
    folder = build(SMOL, "q0f32", web_models_dir)
    native = native_seeded(SMOL, SMOL_SEEDED_REQUESTS, "q0f32")
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv, quiet_page(playwright, srv, webgpu_route, tmp_path) as (page, errors):
        seeded = browser_seeded(page, srv, folder, webgpu_route, SMOL_SEEDED_REQUESTS)
    assert errors == []
    assert len(native[0]["prompt"]) > 10  # the chat template was applied
    assert_seeded_equal(SMOL_SEEDED_REQUESTS, seeded, native)
    assert native[0]["choices"]["0"] != native[0]["choices"]["1"], "n = 2: each choice has its own seed"

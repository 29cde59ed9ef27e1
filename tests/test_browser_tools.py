"""Function calling in headless Chromium: the browser engine, given the same chat template, turns
the same seeded requests into the same token ids, tool calls, content and finish reasons as the
native engine (stories260K, q0f32; REQUESTS.md "Function calling")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from browser_support import (  # noqa: F401  (fixtures are used by name)
    SITE,
    build,
    playwright,
    web_dist,
    web_models_dir,
    webgpu_route,
)
from test_browser_integration import quiet_page
from test_tools import CASES, TINY_TEMPLATE, USER, WEATHER_ONLY
from sphere_aae.web import browser, start_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HISTORY = USER + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]
BASE = {"temperature": 1.0, "max_tokens": 160, "return_token_ids": True}
REQUESTS: list[dict[str, Any]] = [
    {"messages": USER, "tools": CASES["tools"], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "seed": 3, **BASE},
    {"messages": USER, "tools": CASES["tools"], "tool_choice": "required", "parallel_tool_calls": False, "seed": 8, "n": 2,
     "stream": True, **BASE},
    {"messages": HISTORY, "tools": WEATHER_ONLY, "seed": 4, **BASE, "max_tokens": 40},
]

# Per request: prompt ids, and per choice its ids, content, tool calls and finish reason (streams: accumulated).
TOOLS_JS = """async ({ modelUrl, adapterOptions, chatTemplate, requests }) => {
  const aae = await import('/web/dist/index.js');
  const engine = await aae.CreateEngine('m', {
    appConfig: { model_list: [{ model_id: 'm', model_url: modelUrl }] }, store: null, logger: () => {}, chatTemplate,
    ...(adapterOptions ? { requestAdapterOptions: adapterOptions } : {}),
  });
  const out = [];
  for (const body of requests) {
    const r = await engine.chat.completions.create(body);
    const choices = {};
    const get = (i) => (choices[i] ??= { ids: [], content: '', calls: [], finish: null });
    let prompt = body.stream ? null : r.prompt_token_ids;
    if (body.stream) {
      for await (const chunk of r) {
        if (chunk.prompt_token_ids) prompt = chunk.prompt_token_ids;
        for (const c of chunk.choices) {
          const o = get(c.index);
          o.ids.push(...(c.token_ids ?? []));
          o.content += c.delta.content ?? '';
          for (const t of c.delta.tool_calls ?? []) o.calls.push([t.function.name, t.function.arguments]);
          o.finish = c.finish_reason ?? o.finish;
        }
      }
    } else {
      for (const c of r.choices) {
        Object.assign(get(c.index), { ids: c.token_ids, content: c.message.content ?? '', finish: c.finish_reason,
          calls: (c.message.tool_calls ?? []).map((t) => [t.function.name, t.function.arguments]) });
      }
    }
    out.push({ prompt, choices });
  }
  await engine.unload();
  return out;
}"""


def native_tools(source: Path) -> list[dict[str, Any]]:
    """REQUESTS on the native engine, written as TOOLS_JS writes the browser's."""
    from sphere_aae.engine import SphereAaeEngine

    out = []
    with SphereAaeEngine(str(source), quantization="q0f32", chat_template=TINY_TEMPLATE) as engine:
        for body in REQUESTS:
            r = engine.chat.completions.create(**body)
            choices: dict[str, dict[str, Any]] = {}
            prompt = None

            def get(i: int) -> dict[str, Any]:
                return choices.setdefault(str(i), {"ids": [], "content": "", "calls": [], "finish": None})

            if body.get("stream"):
                for chunk in r:
                    prompt = chunk.prompt_token_ids or prompt
                    for c in chunk.choices:
                        o = get(c.index)
                        o["ids"] += c.token_ids or []
                        o["content"] += c.delta.content or ""
                        o["calls"] += [[t["function"]["name"], t["function"]["arguments"]] for t in c.delta.tool_calls or []]
                        o["finish"] = c.finish_reason or o["finish"]
            else:
                prompt = r.prompt_token_ids
                for c in r.choices:
                    get(c.index).update(ids=c.token_ids, content=c.message.content or "", finish=c.finish_reason,
                                        calls=[[t["function"]["name"], t["function"]["arguments"]] for t in c.message.tool_calls or []])
            out.append({"prompt": prompt, "choices": choices})
    return out


def test_tool_calls_match_native_in_chromium(
    stories_dir: Path, web_models_dir: Path, web_dist: Path, playwright: Any, webgpu_route: browser.Adapter, tmp_path: Path
) -> None:
    folder = build(stories_dir, "q0f32", web_models_dir)
    native = native_tools(stories_dir)
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv, quiet_page(playwright, srv, webgpu_route, tmp_path) as (page, errors):
        web = page.evaluate(TOOLS_JS, {"modelUrl": f"{srv.url}/models/{folder.name}/", "adapterOptions": browser.request_adapter_options(webgpu_route),
                                       "chatTemplate": TINY_TEMPLATE, "requests": REQUESTS})
    assert errors == []
    for i, (w, n) in enumerate(zip(web, native)):
        assert w == n, f"request {i}: browser {json.dumps(w)[:400]} / native {json.dumps(n)[:400]}"
    # The forced requests called functions; the history was rendered into the prompt.
    assert native[0]["choices"]["0"]["finish"] == "tool_calls" and native[0]["choices"]["0"]["calls"][0][0] == "get_weather"
    assert all(c["finish"] == "tool_calls" and c["calls"] for c in native[1]["choices"].values())
    assert len(native[2]["prompt"]) > len(native[0]["prompt"])

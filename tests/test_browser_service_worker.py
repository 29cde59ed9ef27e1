"""The engine in a Service Worker, in headless Chromium (stories260K, q0f32): the first page loads
the model in the worker; after a page reload the worker still holds it (nothing fetched, no
load); after the browser stops the worker (DevTools' ServiceWorker.stopAllWorkers), the page's
next request reaches a new instance, which loads the model again and answers the same."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from browser_support import (  # noqa: F401  (fixtures are used by name)
    SITE,
    build,
    model_paths,
    playwright,
    web_dist,
    web_models_dir,
    webgpu_route,
)
from sphere_aae.web import browser, start_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Connect (registering site/sw.js first), load or reuse the model, and run one greedy request;
# the engine stays on window.swEngine for the next call.
LOAD_JS = """async ({ modelUrl, adapterOptions }) => {
  await navigator.serviceWorker.register('/sw.js', { type: 'module' });
  const aae = await import('/web/dist/index.js');
  const phases = [];
  const t0 = performance.now();
  window.swEngine = await aae.CreateServiceWorkerEngine('m', {
    appConfig: { model_list: [{ model_id: 'm', model_url: modelUrl }] },
    initProgressCallback: (r) => phases.push(r.phase),
    ...(adapterOptions ? { requestAdapterOptions: adapterOptions } : {}),
  });
  const loadMs = performance.now() - t0;
  const r = await window.swEngine.completions.create({ prompt: 'Once upon a time', max_tokens: 12, temperature: 0, return_token_ids: true });
  return { load: window.swEngine.lastLoad, loadMs, phases, ids: r.choices[0].token_ids };
}"""

ASK_JS = """async () => {
  const r = await window.swEngine.completions.create({ prompt: 'Once upon a time', max_tokens: 12, temperature: 0, return_token_ids: true });
  return { load: window.swEngine.lastLoad, ids: r.choices[0].token_ids };
}"""


def test_service_worker_keeps_the_model_across_reloads_and_restarts(
    stories_dir: Path, web_models_dir: Path, web_dist: Path, playwright: Any, webgpu_route: browser.Adapter, tmp_path: Path
) -> None:
    from sphere_aae.engine import SphereAaeEngine

    folder = build(stories_dir, "q0f32", web_models_dir)
    with SphereAaeEngine(str(stories_dir), quantization="q0f32") as engine:
        native = engine.completions.create(prompt="Once upon a time", max_tokens=12, temperature=0, return_token_ids=True).choices[0].token_ids
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv:
        ctx = browser.launch(playwright, tmp_path / "profile", webgpu_route)
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            args = {"modelUrl": f"{srv.url}/models/{folder.name}/", "adapterOptions": browser.request_adapter_options(webgpu_route)}
            page.goto(f"{srv.url}/bench.html?driven=1")
            first = page.evaluate(LOAD_JS, args)
            assert first["load"] == {"reused": False, "loads": 1}
            assert first["ids"] == native, "the service worker's engine gives the native engine's greedy ids"
            assert "download" in first["phases"]

            # A page reload: the worker still holds the model; nothing under /models/ is fetched.
            page.reload()
            srv.access_log.clear()
            second = page.evaluate(LOAD_JS, args)
            assert second["load"] == {"reused": True, "loads": 1}
            assert model_paths(srv, folder.name) == []
            assert "download" not in second["phases"] and second["ids"] == native
            print(f"[service worker] first load {first['loadMs']:.0f} ms, after a page reload {second['loadMs']:.0f} ms")

            # The browser stops the worker: the next request connects to a new instance, which loads again.
            cdp = ctx.new_cdp_session(page)
            cdp.send("ServiceWorker.enable")
            cdp.send("ServiceWorker.stopAllWorkers")
            time.sleep(0.5)
            third = page.evaluate(ASK_JS)
            assert third["load"] == {"reused": False, "loads": 1}, "a new instance loaded the model"
            assert third["ids"] == native
            assert errors == []
        finally:
            ctx.close()

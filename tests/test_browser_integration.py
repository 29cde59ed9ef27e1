"""The engine's request-level checks (web/scripts/integration-checks.mjs) on stories260K in
headless Chromium: the reference continuation, KV-cache reuse and popN back to a shared prefix on
TVM's real paged cache (same, diverging and extended prompts give the fresh-cache text), chunked
prefill (prefill_chunk_size 3), streaming, interrupt, seeded sampling and the context-window
refusal. In-page engine, on the faster CPU WebGPU route available (`webgpu_route`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_integration_checks_in_chromium(
    stories_dir: Path, web_models_dir: Path, web_dist: Path, playwright: Any, webgpu_route: browser.Adapter, tmp_path: Path
) -> None:
    folder = build(stories_dir, "q0f32", web_models_dir)
    config = json.loads((folder / "aae-chat-config.json").read_text())
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv:
        ctx = browser.launch(playwright, tmp_path / "profile", webgpu_route)
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{srv.url}/bench.html?driven=1")  # any page of the origin; this one is quiet
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
        finally:
            ctx.close()
    report = "\n".join(r["lines"])
    print(report)
    assert r["failures"] == 0, report
    assert "stories260K reference checks on" in report
    assert sum(line.startswith("ok ") for line in r["lines"]) == 10, report
    assert errors == []

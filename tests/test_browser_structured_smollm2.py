"""Structured output on a real chat model in headless Chromium: 50 sampled SmolLM2-135M-Instruct
answers (temperature 1, 50 seeds: 10 requests of n = 5, decoded in batches) to the nested
schema of tests/test_serve.py all parse and validate, as the native server's do there.

The page runs the browser engine on the model's CPU library (Chromium without WebGPU): the
engine, its scheduler, sampler and XGrammar masks are the same on every route, and this is the
fastest route on these GPU-less machines. On lavapipe WebGPU the run took over 50 minutes and
Chromium's GPU process grew by ~4.5 MB/s (past 10 GB) while decoding. Even so it takes minutes:
it is marked `manual` and runs with `make test-manual`, not `make test`. `make test` holds the
browser to the native engine by identical grammar masks (structured_cases.json) and identical
seeded ids (test_browser_integration.py, test_wasm_cpu.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from browser_support import (  # noqa: F401  (fixtures are used by name)
    SITE,
    build,
    playwright,
    web_dist,
    web_models_dir,
)
from test_browser_integration import quiet_page
from test_serve import DESCRIBE, PERSON, PERSON_FORMAT
from sphere_aae.web import start_server

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.manual]

ANSWERS_JS = """async ({ modelUrl, bodies }) => {
  const aae = await import('/web/dist/index.js');
  const engine = await aae.CreateEngine('m', {
    appConfig: { model_list: [{ model_id: 'm', model_url: modelUrl }] }, store: null, logger: () => {}, maxBatchSize: 5,
  });
  const out = [];
  for (const body of bodies) {
    const r = await engine.chat.completions.create(body);
    out.push(...r.choices.map((c) => ({ text: c.message.content, finish: c.finish_reason, tokens: c.token_ids.length, device: engine.device })));
  }
  await engine.unload();
  return out;
}"""


def test_50_sampled_smollm2_answers_validate_in_chromium(web_models_dir: Path, web_dist: Path, playwright: Any, tmp_path: Path) -> None:
    folder = build("SmolLM2-135M-Instruct", "q4f32_1", web_models_dir)
    bodies = [{"messages": DESCRIBE, "temperature": 1.0, "seed": 5 * k, "n": 5, "max_tokens": 256, "response_format": PERSON_FORMAT,
               "return_token_ids": True} for k in range(10)]
    t0 = time.monotonic()
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv, quiet_page(playwright, srv, None, tmp_path) as (page, errors):
        page.set_default_timeout(0)
        answers = page.evaluate(ANSWERS_JS, {"modelUrl": f"{srv.url}/models/{folder.name}/", "bodies": bodies})
    seconds = time.monotonic() - t0
    tokens = sum(a["tokens"] for a in answers)
    print(f"[browser] {len(answers)} answers, {tokens} tokens in {seconds:.0f} s on the {answers[0]['device']} library")
    assert all(a["device"] == "wasm" for a in answers)
    assert errors == []
    assert len(answers) == 50 and all(a["finish"] == "stop" for a in answers), [a["finish"] for a in answers]
    texts = [a["text"] for a in answers]
    assert len(set(texts)) > 40, "seeds give different answers"
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)

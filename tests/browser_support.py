"""Shared set-up of the browser tests: a fresh web/dist, built model folders, the WebGPU route.

Everything a browser test needs is built here, on demand and cached, so the tests run the same on
a fresh clone (`make test`) as on a developer machine: nothing is skipped for lack of a prebuilt
model. Builds go to $SPHERE_AAE_HOME/web-dist (conftest.py points SPHERE_AAE_HOME into the clone)
and are reused while their inputs are unchanged (`build_web_model` keys weights and wasm).

Test modules import the fixtures they use from here (`from browser_support import ...`). pytest
then registers a copy of each fixture per importing module, so a "session" fixture here may run
once per module: the expensive parts (the route probe, the npm build) are memoised at module
level so those copies share one result. The Playwright driver is per module on purpose (see
`playwright`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sphere_aae.web import browser, start_server
from sphere_aae.web.build import build_web_model

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
DIST_INDEX = WEB / "dist" / "index.js"
SITE = REPO / "site"

def _dist_inputs() -> list[Path]:
    """What dist/index.js is built from (src/artifact_format.json and src/request_spec.json are
    generated copies: not inputs)."""
    copies = ("artifact_format.json", "request_spec.json")
    files = [f for f in (WEB / "src").rglob("*") if f.is_file() and f.name not in copies]
    files += [WEB / "scripts" / "build.mjs", WEB / "package.json", WEB / "package-lock.json", WEB / "tsconfig.json"]
    files += [REPO / "compiler" / "artifact_format.json", REPO / "compiler" / "request_spec.json"]
    return [f for f in files if f.is_file()]


def _dist_is_current() -> bool:
    if not DIST_INDEX.is_file():
        return False
    return DIST_INDEX.stat().st_mtime >= max(f.stat().st_mtime for f in _dist_inputs())


@pytest.fixture(scope="session")
def web_dist() -> Path:
    """web/dist, (re)built with npm when missing or older than its sources."""
    if not _dist_is_current():  # cheap when current, so the per-module copies need no memo
        npm = shutil.which("npm")
        assert npm, "npm is needed to build web/dist (make setup installs Node and the package's deps)"
        if not (WEB / "node_modules").is_dir():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
        subprocess.run([npm, "run", "build", "--silent"], cwd=WEB, check=True)
    assert DIST_INDEX.is_file()
    return DIST_INDEX.parent


_memo: dict[str, Any] = {}


@pytest.fixture(scope="module")
def playwright() -> Any:
    """A Playwright driver for one test module, stopped when the module is done.

    A running sync driver installs an asyncio loop in this thread: kept for the whole session it
    breaks every later asyncio.run() (the async engine tests) and any other sync driver (web
    bench). One driver per module, stopped after it, keeps the modules independent.
    """
    try:
        browser.chromium_path()
    except browser.BrowserUnavailableError as e:
        pytest.fail(str(e))
    driver = browser.sync_playwright().start()
    try:
        yield driver
    finally:
        driver.stop()


@pytest.fixture(scope="session")
def web_models_dir() -> Path:
    out = Path(os.environ["SPHERE_AAE_HOME"]) / "web-dist"
    out.mkdir(parents=True, exist_ok=True)
    return out


def build(model: str | Path, quantization: str, output: Path) -> Path:
    """build_web_model with its progress on stderr (pytest shows it when a build fails)."""
    print(f"[browser tests] building {model} {quantization} into {output}", file=sys.stderr, flush=True)
    return build_web_model(str(model), quantization=quantization, output=output, progress=False)


@pytest.fixture(scope="module")
def webgpu_route(playwright: Any, web_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> browser.Adapter:
    """The faster CPU WebGPU route that works here: lavapipe when it gives an adapter, else SwiftShader.

    The choice is printed, so a run that fell back (and is therefore slower) says why.
    """
    if "route" in _memo:
        return _memo["route"]
    with start_server(SITE, web_models_dir) as srv:
        r = browser.probe_adapter(playwright, srv.url + "/", "lavapipe", tmp_path_factory.mktemp("probe"))
    if r.ok:
        print(f"[browser tests] WebGPU route: lavapipe ({r.description})", file=sys.stderr)
        _memo["route"] = "lavapipe"
    else:
        print(f"[browser tests] lavapipe unavailable ({r.reason}); using SwiftShader", file=sys.stderr)
        _memo["route"] = "swiftshader"
    return _memo["route"]


def native_greedy(model: str, quantization: str, prompt_ids: list[int], n: int, banned: tuple[int, ...] = ()) -> list[int]:
    """prompt + n greedy tokens from the native engine (CPU): a plain argmax loop.

    `banned` ids never win (what the browser engine's ignore_eos does to EOS).
    """
    from sphere_aae.pipeline import prepare_model
    from sphere_aae.runtime.model_runtime import ModelRuntime

    prepared = prepare_model(model, quantization=quantization, progress=False)
    rt = ModelRuntime(prepared.model_dir, prepared.lib_path)
    try:
        seq = rt.add_sequence()
        logits = rt.prefill(seq, prompt_ids)
        out: list[int] = []
        while True:
            logits = np.array(logits, dtype=np.float32)
            logits[list(banned)] = -np.inf
            out.append(int(np.argmax(logits)))
            if len(out) == n:
                return [*prompt_ids, *out]
            logits = rt.decode([seq], [out[-1]])[0]
    finally:
        rt.close()


def cpu_threads(adapter: str) -> int:
    """The thread count in the engine's description of its CPU library ("CPU (WebAssembly, 2
    threads)"); fails on any other text."""
    import re

    m = re.fullmatch(r"CPU \(WebAssembly, (\d+) threads?\)", adapter)
    assert m, f"not a CPU library description: {adapter!r}"
    return int(m.group(1))


def site_url(srv: Any, model_id: str, adapter: browser.Adapter, *, autoload: bool = True) -> str:
    """The demo page for `model_id` on `adapter` (?adapter=compat asks for the compatibility adapter)."""
    q = f"?model={model_id}"
    if autoload:
        q += "&autoload=1"
    if browser.request_adapter_options(adapter):
        q += "&adapter=compat"
    return f"{srv.url}/{q}"


def wait_state(page: Any, states: tuple[str, ...], timeout_s: float) -> str:
    """Wait until the demo page's body[data-state] is one of `states`; returns it."""
    page.wait_for_function(
        "states => states.includes(document.body.dataset.state)", arg=list(states), timeout=timeout_s * 1000
    )
    return page.evaluate("document.body.dataset.state")


def load_in_site(page: Any, url: str, timeout_s: float = 600) -> None:
    """Open the demo page with autoload and wait for the model; fail with the page's message."""
    page.goto(url)
    state = wait_state(page, ("ready", "error"), timeout_s)
    assert state == "ready", page.inner_text("#status")


def model_paths(srv: Any, folder_name: str) -> list[str]:
    """Paths under /models/<folder>/ the server answered GETs for since the log was cleared."""
    return [p for p in srv.access_log.paths() if p.startswith(f"/models/{folder_name}/")]

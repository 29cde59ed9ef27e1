"""The browser engine's CPU fallback: `compile --device wasm` (LLVM wasm32 + SIMD128 kernels, TVM's
paged KV cache on the CPU, linked with the web runtime minus WebGPU) over the same shards as the
WebGPU library, run by the engine's own forward path in Node with no GPU at all.

Node runs the library through tvmjs on its CPU device: web/scripts/greedy-ids.mjs (TVMBackend +
ModelRuntime, plain argmax) for ids to compare with the native engine's, and
web/scripts/integration-node.mjs --device wasm for the request-level checks (KV reuse, popN,
chunked prefill, batch decode, ...) that the WebGPU route runs in Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from browser_support import WEB, build, cpu_threads, load_in_site, native_greedy, playwright, site_url, web_dist, web_models_dir  # noqa: F401  (fixtures)
from conftest import STORIES_REFERENCE_IDS, STORIES_REFERENCE_TEXT


def test_wasm_target_and_library_name() -> None:
    from sphere_aae.artifact import model_lib_name
    from sphere_aae.compile import DEVICES, make_target

    assert "wasm" in DEVICES
    target = make_target("wasm")
    assert target.kind.name == "llvm"
    assert str(target.attrs["mtriple"]).startswith("wasm32")
    assert "+simd128" in [str(a) for a in target.attrs["mattr"]]
    assert "mcpu" not in target.attrs  # nothing of the build machine's CPU
    assert model_lib_name("m-q4f32_1", "wasm") == "m-q4f32_1-wasm.wasm"
    assert model_lib_name("m-q4f32_1", "cpu") == "m-q4f32_1-cpu.so"


def test_export_imported_memory_adds_the_memory_export(tmp_path: Path) -> None:
    """A CPU library imports its (shared) memory; tvmjs reads it from the exports, and wasm-ld 14
    cannot export an imported memory, so the link adds the export to the binary."""
    from sphere_aae.wasm_runtime import export_imported_memory

    def section(sid: int, body: bytes) -> bytes:
        return bytes([sid, len(body)]) + body

    memory_import = b"\x01\x03env\x06memory\x02\x03\x01\x04"  # env.memory: shared, 1..4 pages
    module = (b"\0asm\x01\0\0\0" + section(1, b"\x01\x60\x00\x00") + section(2, memory_import)
              + section(3, b"\x01\x00") + section(7, b"\x01\x01f\x00\x00") + section(10, b"\x01\x02\x00\x0b"))
    path = tmp_path / "m.wasm"
    path.write_bytes(module)
    export_imported_memory(path)
    script = ("const m = new WebAssembly.Module(require('fs').readFileSync(process.argv[1]));"
              "const memory = new WebAssembly.Memory({initial: 1, maximum: 4, shared: true});"
              "const i = new WebAssembly.Instance(m, {env: {memory}});"
              "console.log(JSON.stringify([WebAssembly.Module.exports(m), i.exports.memory === memory]));")
    p = subprocess.run([shutil.which("node") or "node", "-e", script, str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [[{"name": "f", "kind": "function"}, {"name": "memory", "kind": "memory"}], True]


def _node(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node is needed"
    return subprocess.run([node, *args], cwd=WEB, capture_output=True, text=True, timeout=timeout)


def _greedy_ids(folder: Path, prompt: list[int], n: int, threads: int) -> dict[str, Any]:
    """web/scripts/greedy-ids.mjs on the folder's CPU library with `threads` threads."""
    p = _node("scripts/greedy-ids.mjs", "--device", "wasm", "--threads", str(threads), str(folder), ",".join(map(str, prompt)), str(n))
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_stories260k_wasm_cpu_ids_equal_native(stories_dir: Path, web_models_dir: Path, web_dist: Path) -> None:
    folder = build(stories_dir, "q0f32", web_models_dir)
    config = json.loads((folder / "aae-chat-config.json").read_text())
    assert config["model_lib"]["wasm"] == f"{config['model_id']}-wasm.wasm"
    lib = folder / config["model_lib"]["wasm"]
    assert lib.read_bytes()[:4] == b"\0asm"
    n = len(STORIES_REFERENCE_IDS) - 5
    native = native_greedy(str(stories_dir), "q0f32", STORIES_REFERENCE_IDS[:5], n)
    assert native == STORIES_REFERENCE_IDS, "the native engine drifted from the fixture's reference"

    # The library imports a shared memory: 2 threads run its parallel loops on a worker too;
    # 1 thread turns the import into a plain memory (what a page without isolation gets).
    for threads in (2, 1):
        result = _greedy_ids(folder, STORIES_REFERENCE_IDS[:5], n, threads)
        print(f"[wasm cpu] stories260K decode {result['decode_tok_s']:.0f} tok/s in Node, {threads} thread(s)")
        assert result["threads"] == threads
        assert result["ids"] == native

    # The whole engine (tokenizer, scheduler, KV reuse, popN, batch decode...) on the CPU library.
    p = _node("scripts/integration-node.mjs", "--device", "wasm", str(folder))
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    assert "all checks passed" in p.stdout and "reference checks on" in p.stdout, p.stdout[-4000:]


@pytest.mark.slow
def test_web_build_no_wasm_leaves_the_cpu_library_out(stories_dir: Path, web_models_dir: Path, tmp_path: Path) -> None:
    from sphere_aae.web.build import build_web_model

    folder = build(stories_dir, "q0f32", web_models_dir)
    out = tmp_path / "out"
    shutil.copytree(folder, out / folder.name)
    webgpu = out / folder.name / f"{folder.name}-webgpu.wasm"
    stamp = webgpu.stat().st_mtime_ns
    again = build_web_model(str(stories_dir), quantization="q0f32", output=out, progress=False, wasm=False)
    config = json.loads((again / "aae-chat-config.json").read_text())
    assert set(config["model_lib"]) == {"webgpu"} and set(config["model_lib_key"]) == {"webgpu"}
    assert not (again / f"{folder.name}-wasm.wasm").exists()
    assert webgpu.stat().st_mtime_ns == stamp, "the WebGPU library and the weights are reused"
    entry = json.loads((out / "models.json").read_text())[0]
    assert entry["model_lib"] == {"webgpu": webgpu.name}


DEVICE_JS = """async ({ modelUrl, prompt = 'Once upon a time', maxTokens = 40 }) => {
  const aae = await import('/web/dist/index.js');
  const engine = await aae.CreateEngine('m', { appConfig: { model_list: [{ model_id: 'm', model_url: modelUrl }] }, store: null, logger: () => {} });
  const r = await engine.completions.create({ prompt, max_tokens: maxTokens, temperature: 0, return_token_ids: true });
  const out = { gpu: typeof navigator.gpu, device: engine.device, adapter: engine.adapterInfo, ids: [...r.prompt_token_ids, ...r.choices[0].token_ids] };
  await engine.unload();
  return out;
}"""


@pytest.mark.slow
@pytest.mark.browser
def test_chromium_without_webgpu_answers_through_the_cpu_library(
    stories_dir: Path, web_models_dir: Path, web_dist: Path, playwright: Any, tmp_path: Path
) -> None:
    """Chromium with WebGPU left off (no --enable-unsafe-webgpu): the engine's default device
    choice loads the CPU library, and the request-level checks and the seeded requests give the
    native engine's ids, as on WebGPU (test_browser_integration.py)."""
    from sphere_aae.web import start_server
    from test_browser_integration import RUN_JS, SEEDED_REQUESTS, SITE, assert_seeded_equal, browser_seeded, native_seeded, quiet_page

    folder = build(stories_dir, "q0f32", web_models_dir)
    config = json.loads((folder / "aae-chat-config.json").read_text())
    native = native_seeded(stories_dir, SEEDED_REQUESTS)
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv, quiet_page(playwright, srv, None, tmp_path) as (page, errors):
        model_url = f"{srv.url}/models/{folder.name}/"
        chosen = page.evaluate(DEVICE_JS, {"modelUrl": model_url})
        page.add_script_tag(path=str(WEB / "scripts" / "integration-checks.mjs"), type="module")
        page.wait_for_function("window.aaeIntegrationChecks !== undefined")
        r = page.evaluate(RUN_JS, {"modelUrl": model_url, "adapterOptions": None, "config": config})
        seeded = browser_seeded(page, srv, folder, None, SEEDED_REQUESTS)
    assert chosen["device"] == "wasm", chosen
    # aae-web serve makes the page cross-origin isolated: the kernels run on every core.
    assert cpu_threads(chosen["adapter"]) == (os.cpu_count() or 1), chosen
    assert chosen["ids"] == STORIES_REFERENCE_IDS
    report = "\n".join(r["lines"])
    print(report)
    assert r["failures"] == 0, report
    assert "stories260K reference checks on" in report
    assert errors == []
    assert_seeded_equal(SEEDED_REQUESTS, seeded, native)


@pytest.mark.slow
@pytest.mark.browser
def test_chat_page_without_webgpu_answers_through_the_cpu_library(
    stories_dir: Path, web_models_dir: Path, web_dist: Path, playwright: Any, tmp_path: Path
) -> None:
    """The demo chat page (site/) in Chromium with WebGPU off: it says there is no WebGPU, loads
    the model's CPU library, says so once ready, and a greedy chat turn gives the native engine's ids."""
    from sphere_aae.web import browser, start_server
    from test_browser_models import STORY_PROMPT, STORY_TOKENS, _page, _send_chat

    folder = build(stories_dir, "q0f32", web_models_dir)
    model_id = json.loads((folder / "aae-chat-config.json").read_text())["model_id"]
    native = native_greedy(str(stories_dir), "q0f32", STORIES_REFERENCE_IDS[:5], STORY_TOKENS)
    assert native == STORIES_REFERENCE_IDS, "the native engine drifted from the fixture's reference"
    with start_server(WEB.parent / "site", web_models_dir, web_dist_dir=web_dist) as srv:
        ctx = browser.launch(playwright, tmp_path / "profile", None)  # no --enable-unsafe-webgpu
        try:
            page, errors = _page(ctx)
            page.goto(f"{srv.url}/")
            has_adapter = page.evaluate("navigator.gpu ? navigator.gpu.requestAdapter().then(a => !!a) : false")
            assert not has_adapter, "this Chromium offers WebGPU without --enable-unsafe-webgpu: the test needs it off"
            load_in_site(page, site_url(srv, model_id, None))  # type: ignore[arg-type]  (None: no adapter options)
            where = page.evaluate("({ device: window.aae.device, adapter: window.aae.adapter, text: document.querySelector('#progress-text').textContent })")
            _send_chat(page, STORY_PROMPT, max_tokens=STORY_TOKENS, timeout_s=300)
            answer = page.evaluate("window.aae.lastAnswer")
            bubble = page.eval_on_selector(".msg.assistant", "el => el.firstChild.textContent")
            assert errors == []
        finally:
            ctx.close()
    assert where["device"] == "wasm" and cpu_threads(where["adapter"]) == (os.cpu_count() or 1), where
    assert "running on the CPU" in where["text"], where
    assert answer["promptIds"] + answer["ids"] == native
    assert answer["finish"] == "length"
    assert STORY_PROMPT + bubble == STORIES_REFERENCE_TEXT


@pytest.mark.slow
def test_smollm2_q4f32_1_wasm_cpu_ids_equal_native(web_dist: Path, tmp_path: Path) -> None:
    """A real quantized model (4-bit weights, 30 layers, 49k vocab) on the CPU library: the
    native engine's ids, although the native one runs the x86 `rows16` kernels and this one the
    stored layout."""
    from sphere_aae.artifact import model_lib_name
    from sphere_aae.compile import compile_model
    from sphere_aae.pipeline import ensure_model_folder

    src = ensure_model_folder("SmolLM2-135M-Instruct", "q4f32_1", "cpu", progress=False)
    folder = tmp_path / src.name
    shutil.copytree(src, folder)
    cfg_path = folder / "aae-chat-config.json"
    config = json.loads(cfg_path.read_text())
    lib = model_lib_name(config["model_id"], "wasm")
    compile_model(folder, "wasm", folder / lib, progress=False)
    config["model_lib"] = {"wasm": lib}
    cfg_path.write_text(json.dumps(config))

    prompt = [504, 3575, 282, 4649, 314]  # "The capital of France is"
    n = 16
    native = native_greedy("SmolLM2-135M-Instruct", "q4f32_1", prompt, n)
    assert native[5:7] == [7042, 30], "native: ' Paris.'"
    for threads in (2, 1):
        result = _greedy_ids(folder, prompt, n, threads)
        print(f"[wasm cpu] SmolLM2 q4f32_1 prefill {result['prefill_s']:.2f} s, decode {result['decode_tok_s']:.1f} tok/s in Node, {threads} thread(s)")
        assert result["threads"] == threads
        assert result["ids"] == native


@pytest.mark.slow
@pytest.mark.browser
def test_chromium_without_webgpu_runs_smollm2_q4f32_1_on_the_cpu_library(
    web_models_dir: Path, web_dist: Path, playwright: Any, tmp_path: Path
) -> None:
    """The default SmolLM2 web build in Chromium with WebGPU off: the engine picks the CPU
    library, and 16 greedy tokens are the native engine's."""
    from sphere_aae.engine import SphereAaeEngine
    from sphere_aae.web import start_server
    from test_browser_integration import SITE, quiet_page

    folder = build("SmolLM2-135M-Instruct", "q4f32_1", web_models_dir)
    prompt = "The capital of France is"
    with SphereAaeEngine("SmolLM2-135M-Instruct", quantization="q4f32_1") as engine:
        r = engine.completions.create(prompt=prompt, max_tokens=16, temperature=0, return_token_ids=True)
        native = [*r.prompt_token_ids, *r.choices[0].token_ids]
    with start_server(SITE, web_models_dir, web_dist_dir=web_dist) as srv, quiet_page(playwright, srv, None, tmp_path) as (page, errors):
        chosen = page.evaluate(DEVICE_JS, {"modelUrl": f"{srv.url}/models/{folder.name}/", "prompt": prompt, "maxTokens": 16})
    assert chosen["device"] == "wasm" and errors == []
    assert chosen["ids"] == native

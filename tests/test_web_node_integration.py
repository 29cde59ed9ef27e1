"""The engine in Node on Dawn's WebGPU (npm `webgpu`, a devDependency) over SwiftShader.

web/scripts/integration-node.mjs --quick loads the built stories260K folder through the package's
dist/index.js, outside any browser (EngineConfig.gpu, fetch), and checks the reference
continuation. The full request-level check set (KV reuse and popN on TVM's real cache, chunked
prefill, streaming, interrupt, seeds) runs in Chromium, much faster there: test_browser_integration.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from browser_support import WEB, build, web_dist, web_models_dir  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow]

SWIFTSHADER_ICD = Path("/usr/lib/chromium/vk_swiftshader_icd.json")


def test_integration_checks_on_stories260k(stories_dir: Path, web_models_dir: Path, web_dist: Path) -> None:
    assert (WEB / "node_modules" / "webgpu").is_dir(), "npm `webgpu` is missing: run `npm ci` in web/ (make setup)"
    assert SWIFTSHADER_ICD.is_file(), f"{SWIFTSHADER_ICD} is missing (Debian's chromium package ships it)"
    folder = build(stories_dir, "q0f32", web_models_dir)
    env = {**os.environ, "VK_ICD_FILENAMES": str(SWIFTSHADER_ICD)}
    node = shutil.which("node")
    assert node, "node is needed"
    p = subprocess.run(
        [node, "scripts/integration-node.mjs", "--quick", str(folder)], cwd=WEB, env=env, capture_output=True, text=True, timeout=900
    )
    report = p.stdout + p.stderr
    assert p.returncode == 0, report[-6000:]
    assert "all checks passed" in p.stdout, report[-6000:]
    assert "reference checks on" in p.stdout  # the stories260K text was compared, not only run

"""Headless Chromium with WebGPU on a machine without a GPU: the two CPU routes, one place.

Used by `aae-web bench` and by the browser tests. Facts this relies on (see the project's
toolchain notes): Playwright for Python drives the system Chromium through `executable_path`
(never `playwright install`, which downloads browsers); WebGPU then runs on

- ``swiftshader``: Chromium's built-in software Vulkan, behind ``--enable-unsafe-webgpu``. A
  core-feature WebGPU adapter (1 GiB bindings, subgroups), and the slowest route.
- ``lavapipe``: Dawn's OpenGL ES backend on ANGLE on Mesa's lavapipe (``--use-angle=vulkan
  --use-webgpu-adapter=opengles``; needs the ``mesa-vulkan-drivers`` package). Only a
  *compatibility-mode* adapter (128 MiB bindings), which the page must ask for with
  ``requestAdapter({featureLevel: "compatibility"})``; several times faster on real models.

``--enable-webgpu-developer-features`` makes Chromium fill in ``GPUAdapterInfo.description``, so
a benchmark can say which adapter it measured.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Adapter = Literal["swiftshader", "lavapipe"]
ADAPTERS: tuple[Adapter, ...] = ("swiftshader", "lavapipe")

# Quiet, reproducible headless runs: no network side traffic, no first-run UI, no updates.
BASE_FLAGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

_ADAPTER_FLAGS: dict[str, tuple[str, ...]] = {
    "swiftshader": ("--enable-unsafe-webgpu", "--enable-webgpu-developer-features"),
    "lavapipe": (
        "--enable-unsafe-webgpu",
        "--enable-webgpu-developer-features",
        "--use-angle=vulkan",
        "--use-webgpu-adapter=opengles",
    ),
}


class BrowserUnavailableError(RuntimeError):
    """Chromium or Playwright is missing: say how to get them (never `playwright install`)."""


def chromium_path() -> Path:
    """The Chromium to drive: $AAE_CHROMIUM, else /usr/bin/chromium, else `chromium` on PATH."""
    env = os.environ.get("AAE_CHROMIUM")
    candidates = [Path(env)] if env else []
    candidates.append(Path("/usr/bin/chromium"))
    found = shutil.which("chromium")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise BrowserUnavailableError(
        "Chromium was not found (looked at $AAE_CHROMIUM, /usr/bin/chromium, PATH). "
        "Install it with `apt-get install chromium` (`make setup` does)."
    )


def chromium_args(adapter: Adapter | None) -> list[str]:
    """Command-line flags for `adapter` (None: WebGPU left at Chromium's default, i.e. off here)."""
    if adapter is not None and adapter not in _ADAPTER_FLAGS:
        raise ValueError(f"unknown adapter {adapter!r}; choose one of {', '.join(ADAPTERS)}")
    return [*BASE_FLAGS, *(_ADAPTER_FLAGS[adapter] if adapter else ())]


def request_adapter_options(adapter: Adapter) -> dict[str, Any] | None:
    """What the page passes to `navigator.gpu.requestAdapter` (the engine's requestAdapterOptions)."""
    return {"featureLevel": "compatibility"} if adapter == "lavapipe" else None


def sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright as _sync_playwright
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BrowserUnavailableError(
            "Playwright for Python is not installed: `pip install playwright` (it drives the system "
            "Chromium; do not run `playwright install`)."
        ) from e
    return _sync_playwright()


def launch(playwright: Any, user_data_dir: Path, adapter: Adapter | None, **kwargs: Any) -> Any:
    """A headless persistent context on `user_data_dir`: its Cache API / IndexedDB survive a relaunch."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=str(chromium_path()),
        headless=True,
        args=chromium_args(adapter),
        **kwargs,
    )


# A page script: whether requestAdapter gives an adapter on this route, and which one.
PROBE_JS = """async (options) => {
  if (!navigator.gpu) return { ok: false, reason: "navigator.gpu is missing" };
  const adapter = await navigator.gpu.requestAdapter(options ?? undefined);
  if (!adapter) return { ok: false, reason: "requestAdapter returned null" };
  const i = adapter.info || {};
  return {
    ok: true,
    description: [i.vendor, i.architecture, i.description].filter(Boolean).join(" "),
    core: adapter.features.has("core-features-and-limits"),
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
  };
}"""


@dataclass(frozen=True)
class ProbeResult:
    adapter: Adapter
    ok: bool
    description: str = ""
    reason: str = ""


def probe_adapter(playwright: Any, url: str, adapter: Adapter, user_data_dir: Path) -> ProbeResult:
    """Open `url` (any page of a secure origin, e.g. http://127.0.0.1) and ask for a WebGPU adapter."""
    ctx = launch(playwright, user_data_dir, adapter)
    try:
        page = ctx.new_page()
        page.goto(url)
        r = page.evaluate(PROBE_JS, request_adapter_options(adapter))
    except Exception as e:  # a browser that fails to start on this route is a failed probe
        return ProbeResult(adapter, False, reason=f"{type(e).__name__}: {e}")
    finally:
        ctx.close()
    return ProbeResult(adapter, bool(r.get("ok")), r.get("description", ""), r.get("reason", ""))

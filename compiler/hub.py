"""`HF://org/name` model sources: download from the Hugging Face Hub into its cache.

    resolve_hf("HF://HuggingFaceTB/SmolLM2-135M-Instruct")   # -> local snapshot folder
    resolve_hf("HF://org/repo@v1.0")                           # a branch, tag or commit
    resolve_hf("HF://org/repo/model-Q4_1.gguf")                # one file of a repo

`sphere_aae.pipeline.resolve_model_path` calls `resolve_hf` for every HF:// MODEL argument.

Downloads go through `huggingface_hub`, so `HF_ENDPOINT` (a mirror), `HF_HOME` / `HF_HUB_CACHE`
(where the cache lives), `HF_TOKEN` and `HF_HUB_OFFLINE` work as everywhere else. A source that is
already in the cache is used without any network call (not even a "is there a newer commit?"
check): model folders are large, a build should not change under the user between runs, and it
lets a second run work offline. Pass `refresh=True` to check the Hub for a newer commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

HF_PREFIX = "HF://"

# Weight formats other frameworks use; we read safetensors / PyTorch bins / GGUF, so these
# would only cost download time.
IGNORE_PATTERNS = ["*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.tflite", "*.ot", "onnx/*", "flax_model*", "tf_model*", "coreml/*"]

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class HubError(RuntimeError):
    """An HF:// source that cannot be resolved (bad spec, unknown repo, offline without cache)."""


@dataclass(frozen=True)
class HubSpec:
    repo_id: str
    revision: str | None  # None: the default branch
    filename: str | None  # a single file inside the repo (e.g. a .gguf), or the whole repo


def is_hub_source(model: str) -> bool:
    return model[: len(HF_PREFIX)].upper() == HF_PREFIX


def parse_hub_spec(model: str) -> HubSpec:
    """`HF://org/name[@revision][/path/in/repo]` -> HubSpec."""
    if not is_hub_source(model):
        raise HubError(f"not an HF:// source: {model!r}")
    rest = model[len(HF_PREFIX) :].strip("/")
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise HubError(f"bad Hugging Face source {model!r}: expected HF://<org>/<name>[@revision][/<file>]")
    name, _, revision = parts[1].partition("@")
    repo_id = f"{parts[0]}/{name}"
    if not _REPO_RE.match(repo_id):
        raise HubError(f"bad Hugging Face repo id {repo_id!r} in {model!r}")
    filename = "/".join(parts[2:]) or None
    return HubSpec(repo_id=repo_id, revision=revision or None, filename=filename)


def download(spec: HubSpec, *, refresh: bool = False) -> Path:
    """The local path of `spec` (snapshot folder or single file), downloading only if not cached."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    def fetch(local_only: bool) -> str:
        if spec.filename is not None:
            return hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision, local_files_only=local_only)
        return snapshot_download(spec.repo_id, revision=spec.revision, ignore_patterns=IGNORE_PATTERNS, local_files_only=local_only)

    label = f"{spec.repo_id}{'@' + spec.revision if spec.revision else ''}{'/' + spec.filename if spec.filename else ''}"
    if not refresh:
        try:
            return Path(fetch(local_only=True))
        except LocalEntryNotFoundError:
            pass  # not (completely) cached yet: download below
    try:
        return Path(fetch(local_only=False))
    except RepositoryNotFoundError as exc:
        raise HubError(f"Hugging Face repo {spec.repo_id!r} not found (or it is private/gated and no token is set)") from exc
    except LocalEntryNotFoundError as exc:
        raise HubError(f"cannot download {label}: the Hub is unreachable (offline?) and it is not in the local cache") from exc
    except (HfHubHTTPError, EntryNotFoundError) as exc:
        raise HubError(f"cannot download {label}: {exc}") from exc


def resolve_hf(model: str, *, refresh: bool = False) -> Path:
    """`HF://...` -> the local path of the downloaded snapshot folder (or file)."""
    return download(parse_hub_spec(model), refresh=refresh)

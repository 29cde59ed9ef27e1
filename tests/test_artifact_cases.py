"""The native artifact reader against tests/fixtures/artifact_cases.json: each case is a small valid
chat config or tensor manifest, a mutation and the error it must give (or "ok").
web/test/artifact_cases.test.ts holds web/src/artifact.ts to the same file, so a malformed model
folder fails the same way, with the same message (artifact_format.json "messages"), natively and
in the browser."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import STORIES

from sphere_aae import artifact

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "artifact_cases.json").read_text(encoding="utf-8"))
READERS = {"chat_config": (artifact.CHAT_CONFIG, artifact.read_chat_config), "manifest": (artifact.MANIFEST, artifact.read_manifest)}


def mutated(base: Any, mutations: list[dict[str, Any]]) -> Any:
    """base after the case's edits: {"set": path, "to": value} or {"delete": path}; path [] is the whole document."""
    doc = copy.deepcopy(base)
    for edit in mutations:
        path = edit["set"] if "set" in edit else edit["delete"]
        if not path:
            doc = copy.deepcopy(edit["to"])
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if "set" in edit:
            parent[path[-1]] = copy.deepcopy(edit["to"])
        else:
            del parent[path[-1]]
    return doc


def run_case(case: dict[str, Any], folder: Path) -> str:
    """The reader's error message for the case's file in `folder`, or "ok"."""
    name, read = READERS[case["file"]]
    path = folder / name
    if "text" in case:
        path.write_text(case["text"], encoding="utf-8")
    elif not case.get("absent"):
        path.write_text(json.dumps(mutated(FIXTURE["base"][case["file"]], case["mutate"]), ensure_ascii=False), encoding="utf-8")
    try:
        read(folder)
    except artifact.ArtifactError as e:
        message = str(e)
        # Contract messages are "<file>: <text>", as in the browser; the file-level ones "<file> is ...".
        assert message.startswith(f"{path} " if "text" in case or case.get("absent") else f"{path}: "), message
        return message
    return "ok"


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: f"{c['file']}: {c['name']}")
def test_artifact_case(case: dict[str, Any], tmp_path: Path) -> None:
    got = run_case(case, tmp_path)
    assert (got == "ok") if case["error"] == "ok" else (case["error"] in got), got


def test_every_contract_message_has_a_case(tmp_path: Path) -> None:
    got = []
    for i, case in enumerate(FIXTURE["cases"]):
        (folder := tmp_path / str(i)).mkdir()
        got.append(run_case(case, folder))
    for key, template in artifact.MESSAGES.items():
        pattern = re.compile(".+".join(re.escape(part) for part in re.split(r"\{\w+\}", template)))
        assert any(pattern.search(m) for m in got), f"no case of artifact_cases.json gives messages.{key}"


def test_a_folder_the_converter_writes_validates_unchanged(tmp_path: Path) -> None:
    from sphere_aae.pipeline import build_model_folder

    folder = tmp_path / "stories-q0f32"
    build_model_folder(STORIES, "q0f32", folder, shard_bytes=100_000, progress=False)
    for name, read in READERS.values():
        assert read(folder) == json.loads((folder / name).read_text(encoding="utf-8"))

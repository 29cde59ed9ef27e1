"""Named conversation templates (`gen_config --conv-template NAME`), kept in conv_templates.json.

Each one is a Hugging Face chat template (jinja2, the same variables the engines pass), so a
named template is written into aae-chat-config.json's `chat_template` and runs unchanged in the
native and the browser engine; nothing at run time knows it came from a name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).with_name("conv_templates.json")


@dataclass(frozen=True)
class ConvTemplate:
    name: str
    template: str
    description: str
    # Token texts that end a turn; gen_config adds the ones the tokenizer knows to eos_token_ids.
    stop_tokens: tuple[str, ...] = ()


@lru_cache(maxsize=1)
def _all() -> dict[str, ConvTemplate]:
    entries = json.loads(DATA_FILE.read_text(encoding="utf-8"))["templates"]
    return {
        name: ConvTemplate(name, e["template"], e.get("description", ""), tuple(e.get("stop_tokens", ())))
        for name, e in entries.items()
    }


def names() -> list[str]:
    """The known template names, in the data file's order."""
    return list(_all())


def get(name: str) -> ConvTemplate:
    """The template called `name`; ValueError naming the known ones otherwise."""
    try:
        return _all()[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; known: {', '.join(names())}") from None

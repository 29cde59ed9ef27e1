"""Chat templates: `ChatTemplate` renders a Hugging Face chat template (jinja2, sandboxed) as
`transformers` does. Twin of web/src/template.ts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

from .protocol import RequestError
from .tools import call_format


class ChatTemplate:
    """A Hugging Face chat template (jinja2, sandboxed) rendered the way `transformers` does:
    trim_blocks/lstrip_blocks, `raise_exception`, `strftime_now`, a `tojson` that keeps
    non-ASCII text, and the tokenizer's special tokens as variables."""

    # Base models have no template; their "chat" is the messages' text, one per line, so a story
    # model continues the user's text.
    FALLBACK = "{% for message in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}{{ message['content'] }}{% endfor %}"

    def __init__(self, source: str | None, special_tokens: Mapping[str, str]) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or self.FALLBACK
        self.is_fallback = source is None
        # The tool-call format the template renders, or why it cannot take tools (tools.call_format).
        self.call_format, self.no_tools_reason = call_format(source)
        self._template = env.from_string(self.source)
        self._special = dict(special_tokens)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The prompt text; `tools` (OpenAI's tool objects) are the template's `tools` variable."""
        from jinja2 import TemplateError

        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, tools=tools, documents=None, **self._special
            )
        except TemplateError as exc:
            # raise_exception() in a template is how templates reject a conversation (e.g.
            # roles not alternating); that is the client's error, so a 400.
            raise RequestError(f"The model's chat template rejected the messages: {exc}", param="messages") from exc


def _raise_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    # A plain str, as transformers' filter returns: a markupsafe Markup would HTML-escape the
    # strings it is concatenated with ('{"name": ' + args | tojson).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

"""Function calling: `tools`, `tool_choice` and `parallel_tool_calls` checked, the call grammar
built as an XGrammar structural tag, and the model's text parsed back into OpenAI `tool_calls`.
Twin of web/src/tools.ts; the rules are request_spec.json "tool_calling" (REQUESTS.md,
"Function calling").

Tools are rendered by the model's own chat template (its `tools` variable), and the call format
(Hermes' `<tool_call>` JSON, Llama 3.1's bare JSON) is read off the same template, so a model
is asked for calls in the form it was trained on. Every call the engine parses was generated
under the call grammar (tool_choice auto included: the grammar lets text run free until the
model starts a call), so parsing is a walk over fixed begin and end texts and one JSON value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .request_spec import SPEC, show, type_name

RULES: Mapping[str, Any] = SPEC["tool_calling"]
NAME_PATTERN: str = SPEC["structured_output"]["name_pattern"]


def _spec_error(name: str, param: str | None, **values: Any) -> Exception:
    from .protocol import spec_error  # protocol imports this module

    return spec_error(name, param, **values)


@dataclass(frozen=True)
class Function:
    name: str
    parameters: Any  # a JSON Schema (checked)
    description: str | None = None


@dataclass(frozen=True)
class ToolPlan:
    """What a request asks of the tools: `choice` is none, auto, required or a function's name."""

    functions: tuple[Function, ...]
    choice: str
    parallel: bool = True

    @property
    def active(self) -> bool:
        return self.choice != "none" and bool(self.functions)

    def for_template(self) -> list[dict[str, Any]] | None:
        """The `tools` a chat template renders (OpenAI's shape), or None when calls are off."""
        if not self.active:
            return None
        out = []
        for f in self.functions:
            fn: dict[str, Any] = {"name": f.name}
            if f.description is not None:
                fn["description"] = f.description
            fn["parameters"] = f.parameters
            out.append({"type": "function", "function": fn})
        return out


# --------------------------------------------------------------------------------------------
# Checking the request fields


def _fields(value: Any, allowed: Sequence[str], param: str) -> None:
    if not isinstance(value, Mapping):
        raise _spec_error("bad_type", param, expected=SPEC["expected"]["object"], got=type_name(value))
    extra = sorted(str(k) for k in value if k not in allowed)
    if extra:
        raise _spec_error("object_fields", f"{param}.{extra[0]}", names=", ".join(extra))


def _function_name(value: Any, param: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise _spec_error("function_name", param, value=show(value))
    if value in RULES["choices"]:  # a named tool_choice must not read as one of the choices
        raise _spec_error("function_name_reserved", param, value=show(value))
    return value


def js_values(value: Any) -> Any:
    """JSON data as JavaScript holds it: an integral float is an integer (JSON.parse("2.0") is 2),
    so templates write the same `tojson` text in both engines."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [js_values(v) for v in value]
    if isinstance(value, Mapping):
        return {k: js_values(v) for k, v in value.items()}
    return value


def check_tools(value: Any) -> tuple[Function, ...]:
    """The tools field: function tools with unique names and checked parameter schemas."""
    from .structured import check_schema

    if not isinstance(value, (list, tuple)):
        raise _spec_error("bad_type", "tools", expected=SPEC["expected"]["array"], got=type_name(value))
    functions: list[Function] = []
    for i, tool in enumerate(value):
        at = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise _spec_error("bad_type", at, expected=SPEC["expected"]["tool"], got=type_name(tool))
        _fields(tool, RULES["tool_fields"], at)
        if tool.get("type") != "function":
            raise _spec_error("tool_type", f"{at}.type", value=show(tool.get("type")))
        fn = tool.get("function")
        _fields(fn, RULES["function_fields"], f"{at}.function")
        name = _function_name(fn.get("name"), f"{at}.function.name")
        if any(f.name == name for f in functions):
            raise _spec_error("function_name_twice", f"{at}.function.name", value=show(name))
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise _spec_error("bad_type", f"{at}.function.description", expected=SPEC["expected"]["string"], got=type_name(description))
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _spec_error("bad_type", f"{at}.function.strict", expected=SPEC["expected"]["boolean"], got=type_name(strict))
        parameters = fn.get("parameters")
        if parameters is None:
            parameters = RULES["default_parameters"]
        check_schema(parameters, f"{at}.function.parameters")
        functions.append(Function(name, js_values(parameters), description))
    return tuple(functions)


def check_tool_choice(value: Any) -> str:
    """none, auto, required, or the name of the function to call."""
    if isinstance(value, str):
        if value in RULES["choices"]:
            return value
        raise _spec_error("tool_choice", "tool_choice", value=show(value))
    if not isinstance(value, Mapping) or value.get("type") != "function" or not isinstance(value.get("function"), Mapping):
        raise _spec_error("tool_choice", "tool_choice", value=show(value))
    _fields(value, ["type", "function"], "tool_choice")
    _fields(value["function"], ["name"], "tool_choice.function")
    return _function_name(value["function"].get("name"), "tool_choice.function.name")


def tool_plan(values: Mapping[str, Any]) -> ToolPlan | None:
    """The request's checked tools, tool_choice and parallel_tool_calls as one plan (None: no tools).
    The cross-field checks are the spec's rules, run before this."""
    functions = values.get("tools") or ()
    choice = values.get("tool_choice", "auto" if functions else "none")
    if not functions:
        return None
    if choice not in RULES["choices"] and not any(f.name == choice for f in functions):
        raise _spec_error("tool_choice_unknown", "tool_choice.function.name", value=show(choice))
    return ToolPlan(functions, choice, values.get("parallel_tool_calls", True))


def check_message_tool_calls(value: Any, param: str) -> list[dict[str, Any]]:
    """An assistant message's tool_calls, as the template gets them: each call's arguments
    parsed from their JSON text (templates write them out with `tojson`)."""
    if not isinstance(value, (list, tuple)):
        raise _spec_error("bad_type", param, expected=SPEC["expected"]["array"], got=type_name(value))
    calls = []
    for i, call in enumerate(value):
        at = f"{param}[{i}]"
        _fields(call, RULES["tool_call_fields"], at)
        call_id = call.get("id")
        if not isinstance(call_id, str):
            raise _spec_error("bad_type", f"{at}.id", expected=SPEC["expected"]["string"], got=type_name(call_id))
        if call.get("type") != "function":
            raise _spec_error("tool_type", f"{at}.type", value=show(call.get("type")))
        fn = call.get("function")
        _fields(fn, RULES["tool_call_function_fields"], f"{at}.function")
        name = fn.get("name")
        if not isinstance(name, str):
            raise _spec_error("bad_type", f"{at}.function.name", expected=SPEC["expected"]["string"], got=type_name(name))
        arguments = fn.get("arguments")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else None
        except ValueError:
            parsed = None
        if not isinstance(arguments, str) or (parsed is None and arguments.strip() != "null"):
            raise _spec_error("tool_arguments", f"{at}.function.arguments", value=show(arguments))
        calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": js_values(parsed)}})
    return calls


# --------------------------------------------------------------------------------------------
# The template's call format


@dataclass(frozen=True)
class CallFormat:
    name: str
    open: str
    close: str
    separator: str
    arguments_key: str
    parallel: bool

    @property
    def trigger(self) -> str:
        return self.open + '{"name": '

    def begin(self, function: str) -> str:
        return f'{self.trigger}{json.dumps(function)}, "{self.arguments_key}": '

    @property
    def end(self) -> str:
        return "}" + self.close


def call_format(template_source: str | None) -> tuple[CallFormat | None, str]:
    """The call format a chat template renders tools in; (None, why) when it renders none."""
    if not template_source or not re.search(RULES["template_uses_tools"], template_source):
        return None, RULES["why"]["no_tools"]
    for name in RULES["detect_order"]:
        if RULES["formats"][name]["detect"] in template_source:
            return named_call_format(name), ""
    return None, RULES["why"]["no_format"]


def named_call_format(name: str) -> CallFormat:
    f = RULES["formats"][name]
    return CallFormat(name, f["open"], f["close"], f["separator"], f["arguments_key"], f["parallel"])


def structural_tag(plan: ToolPlan, fmt: CallFormat, schema_grammar: Callable[[Any], str]) -> dict[str, Any]:
    """The XGrammar structural tag of a plan's calls; `schema_grammar` turns a parameters schema
    into XGrammar's EBNF with structured_output's JSON options (same text on both sides)."""
    named = plan.choice not in RULES["choices"]
    functions = [f for f in plan.functions if not named or f.name == plan.choice]
    tags = [{"type": "tag", "begin": fmt.begin(f.name), "content": {"type": "grammar", "grammar": schema_grammar(f.parameters)},
             "end": fmt.end} for f in functions]
    one = named or not (plan.parallel and fmt.parallel)
    if plan.choice == "auto":
        body = {"type": "triggered_tags", "triggers": [fmt.trigger], "tags": tags, "at_least_one": False, "stop_after_first": one}
    else:
        body = {"type": "tags_with_separator", "tags": tags, "separator": fmt.separator, "at_least_one": True, "stop_after_first": one}
    return {"type": "structural_tag", "format": body}


# --------------------------------------------------------------------------------------------
# Parsing calls out of the generated text


def json_value_end(text: str, start: int) -> int:
    """Where the JSON value starting at `start` ends (exclusive); -1 if the text stops first.
    The value was generated under a JSON grammar, so only its extent is found here."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if escaped:
            escaped = False
        elif in_string:
            if c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                if depth == 0:
                    return i + 1
        elif depth == 0 and i > start and c in ",}] \n\t":
            return i  # the end of a number, true, false or null
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


@dataclass
class ToolCall:
    index: int
    id: str
    name: str
    arguments: str

    def to_dict(self, with_index: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index} if with_index else {}
        d.update({"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
        return d


@dataclass
class ToolCallParser:
    """One choice's text split into content and calls as it streams (`push`, then `finish`).
    Each returns (content to emit, calls completed since the last call)."""

    fmt: CallFormat
    names: Sequence[str]
    id_prefix: str
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    _pos: int = 0  # text before this is emitted or dropped
    _segment: str = ""  # content of the current segment held back (only whitespace so far)
    _segment_open: bool = False  # the current segment has shown non-whitespace and streams

    def push(self, delta: str) -> tuple[str, list[ToolCall]]:
        self.text += delta
        return self._advance(final=False)

    def finish(self) -> tuple[str, list[ToolCall]]:
        return self._advance(final=True)

    def _advance(self, final: bool) -> tuple[str, list[ToolCall]]:
        content: list[str] = []
        new_calls: list[ToolCall] = []
        while True:
            at = self.text.find(self.fmt.trigger, self._pos)
            if at < 0:
                # No call starts here: what cannot begin one is content.
                keep = 0 if final else _held(self.text[self._pos:], self.fmt.trigger)
                content.append(self._content(self.text[self._pos: len(self.text) - keep], final))
                self._pos = len(self.text) - keep
                break
            content.append(self._content(self.text[self._pos: at], True))
            self._pos = at
            call = self._call(at)
            if call is None:  # not complete yet, or malformed
                if final:
                    content.append(self._content(self.text[at:], True))
                    self._pos = len(self.text)
                break
            name, arguments, end = call
            new_calls.append(ToolCall(len(self.calls), f"{self.id_prefix}_{len(self.calls)}", name, arguments))
            self.calls.append(new_calls[-1])
            self._pos = end
        return "".join(content), new_calls

    def _content(self, piece: str, segment_ends: bool) -> str:
        """Content text of the current segment: held while only whitespace, dropped if the
        segment ends so; otherwise emitted with what was held."""
        out = ""
        if self._segment_open:
            out = piece
        elif piece.strip():
            out, self._segment_open = self._segment + piece, True
            self._segment = ""
        else:
            self._segment += piece
        if segment_ends:
            self._segment, self._segment_open = "", False
        return out

    def _call(self, at: int) -> tuple[str, str, int] | None:
        """(name, arguments text, end) of the call starting at `at`; None if incomplete or not a call."""
        rest = self.text[at:]
        for name in self.names:
            begin = self.fmt.begin(name)
            if rest.startswith(begin):
                value_at = at + len(begin)
                value_end = json_value_end(self.text, value_at)
                if value_end < 0 or not self.text.startswith(self.fmt.end, value_end):
                    return None
                return name, self.text[value_at:value_end], value_end + len(self.fmt.end)
        return None


def _held(text: str, trigger: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `trigger`."""
    for n in range(min(len(trigger) - 1, len(text)), 0, -1):
        if trigger.startswith(text[-n:]):
            return n
    return 0

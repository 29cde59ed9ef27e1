"""OpenAI-compatible request validation and response objects.

The HTTP server and the Python API (`SphereAaeEngine`) share one validation path: a request is a
plain JSON-like dict, `parse_chat_request` / `parse_completion_request` check every field and turn it
into a typed request, and anything wrong raises `RequestError`, which renders as OpenAI's error
object (`{"error": {"message", "type", "param", "code"}}`). Messages name the field and say what
was expected, because a client author reads them, not a parser.

Response objects are small dataclasses with attribute access (`resp.choices[0].message.content`,
`chunk.choices[0].delta.content`) and `model_dump()` / `model_dump_json()` like the `openai`
package's types, so code written against the OpenAI client reads the same against the engine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .request_spec import FIELDS, SPEC, endpoint_fields, error_text, field_default, field_type, range_rule, show, type_name
from .sampling import SamplingParams
from .structured import ResponseFormat, check_response_format
from .tools import ToolPlan, check_message_tool_calls, check_tool_choice, check_tools, tool_plan

# --------------------------------------------------------------------------------------------
# Errors


class RequestError(ValueError):
    """A request the engine will not run; `to_dict()` is the OpenAI error body."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        status_code: int = 400,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.status_code = status_code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------------------------
# Field checks, driven by request_spec.json (REQUESTS.md). Each takes the field's dotted name for
# messages; `bool` is excluded from the numeric checks because in Python `True` is an int, and
# JSON `true` is not a number. web/src/protocol.ts runs the same checks with the same texts.


def spec_error(name: str, param: str | None = None, **values: Any) -> RequestError:
    """The spec's error `name` (request_spec.json "errors"), its placeholders filled."""
    message, code = error_text(name, {"param": param, **values})
    return RequestError(message, param=param, code=code)


def _type_name(value: Any) -> str:
    return type_name(value)


def _bad_type(name: str, value: Any, expected: str) -> RequestError:
    """`expected` is the text ("an array of token ids") or a key of the spec's "expected"."""
    return spec_error("bad_type", name, expected=SPEC["expected"].get(expected, expected), got=type_name(value))


def _number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad_type(name, value, "number")
    if not math.isfinite(value):
        raise spec_error("not_finite", name)
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        raise spec_error("out_of_range", name, value=value, rule=range_rule("number", lo, hi, lo_open))
    return float(value)


def _integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    # JSON has one number type; accept 3.0 for 3 like OpenAI does, reject 3.5.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad_type(name, value, "integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise spec_error("out_of_range", name, value=value, rule=range_rule("integer", lo, hi, False))
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad_type(name, value, "boolean")
    return value


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad_type(name, value, "string")
    return value


def _is_empty(value: Any) -> bool:
    """What a refused feature may still be sent as: nothing (null, false, "", [], {})."""
    return value is None or value is False or (isinstance(value, (str, list, tuple, Mapping)) and len(value) == 0)


def _js_key_order(keys: Sequence[str]) -> list[str]:
    """Object keys in the order JavaScript iterates them: array-index keys ascending, then the
    rest as given (so both engines report the same bad key first)."""
    index = [k for k in keys if k.isascii() and k.isdigit() and str(int(k)) == k and int(k) < 2**32 - 1]
    return sorted(index, key=int) + [k for k in keys if k not in index]


MAX_STOP_STRINGS: int = SPEC["limits"]["max_stop_strings"]
MAX_N: int = FIELDS["n"]["max"]


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _bad_type("stop", value, "stop")
    if len(items) > MAX_STOP_STRINGS:
        raise spec_error("stop_too_many", "stop", max=MAX_STOP_STRINGS, count=len(items))
    out = []
    for i, s in enumerate(items):
        _string(f"stop[{i}]", s)
        if not s:
            raise spec_error("stop_empty", f"stop[{i}]")
        out.append(s)
    return out


def _logit_bias(value: Any) -> dict[int, float]:
    if not isinstance(value, Mapping):
        raise _bad_type("logit_bias", value, "logit_bias")
    spec = FIELDS["logit_bias"]
    texts = {str(k): v for k, v in value.items()}  # the Python API may use int keys
    out: dict[int, float] = {}
    for key in _js_key_order(list(texts)):
        if not (key.isascii() and key.isdigit()):
            raise spec_error("logit_bias_key", "logit_bias", key=show(key))
        out[int(key)] = _number(f"logit_bias.{key}", texts[key], spec["min"], spec["max"])
    return out


def _stream_options(value: Any) -> bool:
    """include_usage of a stream_options object."""
    if not isinstance(value, Mapping):
        raise _bad_type("stream_options", value, "object")
    extra = sorted(set(value) - set(SPEC["stream_options_fields"]))
    if extra:
        raise spec_error("stream_options_field", f"stream_options.{extra[0]}", names=", ".join(extra))
    usage = value.get("include_usage")
    return False if usage is None else _boolean("stream_options.include_usage", usage)


# --------------------------------------------------------------------------------------------
# Requests


@dataclass
class ChatMessage:
    role: str
    content: str
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # assistant: the calls it made (arguments parsed)
    tool_call_id: str | None = None  # tool: the call this answers

    def to_template_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


def _message_content(name: str, content: Any, role: str) -> str:
    """Text of a message; a list of content parts is joined (text-only models take text parts)."""
    if content is None:
        if role == "assistant":
            return ""
        raise spec_error("needs_content", name, role=role)
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise _bad_type(name, content, "content")
    texts = []
    for i, part in enumerate(content):
        pname = f"{name}[{i}]"
        if not isinstance(part, Mapping):
            raise _bad_type(pname, part, "object")
        if part.get("type") != "text":
            raise spec_error("content_part", f"{pname}.type", value=show(part.get("type")))
        texts.append(_string(f"{pname}.text", part.get("text")))
    return "".join(texts)


def _message(name: str, msg: Any) -> ChatMessage:
    if not isinstance(msg, Mapping):
        raise _bad_type(name, msg, "object")
    unknown = sorted(set(msg) - set(SPEC["message_fields"]))
    if unknown:
        raise spec_error("message_fields", f"{name}.{unknown[0]}", names=", ".join(map(show, unknown)))
    if "role" not in msg:
        raise spec_error("missing", f"{name}.role")
    role = msg["role"]
    if role not in SPEC["roles"]:
        raise spec_error("role", f"{name}.role", value=show(role), roles=", ".join(map(show, SPEC["roles"])))
    tool_calls = None
    if msg.get("tool_calls") is not None:
        if role != "assistant":
            raise spec_error("tool_calls_role", f"{name}.tool_calls")
        tool_calls = check_message_tool_calls(msg["tool_calls"], f"{name}.tool_calls") or None
    tool_call_id = msg.get("tool_call_id")
    if role == "tool" and tool_call_id is None:
        raise spec_error("missing", f"{name}.tool_call_id")
    if tool_call_id is not None:
        _string(f"{name}.tool_call_id", tool_call_id)
    content = _message_content(f"{name}.content", msg.get("content"), role)
    msg_name = msg.get("name")
    if msg_name is not None:
        _string(f"{name}.name", msg_name)
    return ChatMessage(role=role, content=content, name=msg_name, tool_calls=tool_calls, tool_call_id=tool_call_id)


def _messages(value: Any) -> list[ChatMessage]:
    if not isinstance(value, (list, tuple)):
        raise _bad_type("messages", value, "messages")
    if not value:
        raise spec_error("messages_empty", "messages")
    return [_message(f"messages[{i}]", msg) for i, msg in enumerate(value)]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _prompts(value: Any) -> list[str | list[int]]:
    """OpenAI accepts a string, an array of strings, an array of token ids, or an array of those."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise spec_error("prompt", "prompt")
    if all(_is_number(x) for x in value):
        return [[_integer(f"prompt[{i}]", x, 0) for i, x in enumerate(value)]]
    out: list[str | list[int]] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (list, tuple)) and item:
            out.append([_integer(f"prompt[{i}][{j}]", x, 0) for j, x in enumerate(item)])
        else:
            raise spec_error("prompt_item", f"prompt[{i}]", got=type_name(item))
    return out


@dataclass
class ChatCompletionRequest:
    messages: list[ChatMessage]
    sampling: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    return_token_ids: bool = False
    response_format: ResponseFormat | None = None  # None or text: unconstrained
    tools: ToolPlan | None = None  # None: no tools given


@dataclass
class CompletionRequest:
    prompts: list[str | list[int]]  # each prompt is text or token ids
    sampling: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None  # completions API: number of top alternatives per token
    model: str | None = None
    return_token_ids: bool = False


def _check_fields(body: Any, allowed: Any, required: str) -> None:
    """The body is an object, names only fields of `allowed` (names, or an endpoint of the
    spec), and gives `required`. Unknown names are an error rather than silently ignored, so a
    typo ("temprature") does not quietly run with defaults."""
    if not isinstance(body, Mapping):
        raise spec_error("not_object", got=type_name(body))
    names = {name for name, _ in endpoint_fields(allowed)} if isinstance(allowed, str) else set(allowed)
    unknown = sorted(str(k) for k in body if k not in names)
    if unknown:
        raise spec_error("unknown_field", unknown[0], names=", ".join(unknown))
    if body.get(required) is None:
        raise spec_error("missing", required)


# The structured kinds of request_spec.json's field types, by name.
_KINDS: dict[str, Callable[[str, Any, Mapping[str, Any]], Any]] = {
    "messages": lambda name, v, f: _messages(v),
    "prompt": lambda name, v, f: _prompts(v),
    "stream_options": lambda name, v, f: _stream_options(v),
    "stop": lambda name, v, f: _stop(v),
    "logit_bias": lambda name, v, f: _logit_bias(v),
    "response_format": lambda name, v, f: check_response_format(v),
    "tools": lambda name, v, f: check_tools(v),
    "tool_choice": lambda name, v, f: check_tool_choice(v),
    "number": lambda name, v, f: _number(name, v, f.get("min"), f.get("max"), lo_open=f.get("min_exclusive", False)),
    "integer": lambda name, v, f: _integer(name, v, f.get("min"), f.get("max")),
    "boolean": lambda name, v, f: _boolean(name, v),
    "string": lambda name, v, f: _string(name, v),
    "any": lambda name, v, f: v,
}


def _check_field(kind: str, name: str, value: Any, spec: Mapping[str, Any]) -> Any:
    t = field_type(spec, kind)
    if t == "refused_unless_empty":
        if not _is_empty(value):
            raise spec_error("refused", name, what=SPEC["refused"][name])
        return None
    return _KINDS[t](name, value, spec)


def _rule(rule: str, kind: str, values: Mapping[str, Any]) -> None:
    """One of request_spec.json's cross-field rules."""
    given = values.__contains__
    if rule == "stream_options_need_stream" and given("stream_options") and not values.get("stream"):
        raise spec_error("stream_options_without_stream", "stream_options")
    if rule == "max_tokens_once" and given("max_tokens") and given("max_completion_tokens"):
        raise spec_error("max_tokens_twice", "max_completion_tokens")
    if rule == "top_logprobs_need_logprobs" and given("top_logprobs") and kind == "chat" and not values.get("logprobs"):
        raise spec_error("top_logprobs_without_logprobs", "top_logprobs")
    if rule == "echo_without_logprobs" and kind == "completion" and given("logprobs") and values.get("echo"):
        raise spec_error("echo_with_logprobs", "logprobs")
    if rule == "response_format_without_ignore_eos" and values.get("ignore_eos") and given("response_format") and values["response_format"].constrained:
        raise spec_error("response_format_ignore_eos", "ignore_eos")
    if rule == "tool_choice_needs_tools" and values.get("tool_choice", "none") != "none" and not values.get("tools"):
        choice = values["tool_choice"]
        raise spec_error("tool_choice_without_tools", "tool_choice",
                         value=show(choice if choice in SPEC["tool_calling"]["choices"] else {"type": "function", "function": {"name": choice}}))
    if (rule == "tools_without_response_format" and values.get("tools") and values.get("tool_choice") != "none"
            and given("response_format") and values["response_format"].constrained):
        raise spec_error("tools_with_response_format", "response_format")
    if rule == "tools_without_ignore_eos" and values.get("ignore_eos") and values.get("tools") and values.get("tool_choice") != "none":
        raise spec_error("tools_ignore_eos", "ignore_eos")
    if rule == "best_of_is_n" and given("best_of") and values["best_of"] != values.get("n", FIELDS["n"]["default"]):
        raise spec_error("best_of", "best_of")


def check_request(kind: str, body: Any) -> dict[str, Any]:
    """Every given field of a `kind` ("chat" / "completion") body, checked in the spec's order,
    then the spec's cross-field rules: {field: checked value}. Raises RequestError."""
    _check_fields(body, kind, SPEC["endpoints"][kind]["required"])
    values: dict[str, Any] = {}
    for name, spec in endpoint_fields(kind):
        if body.get(name) is not None:
            values[name] = _check_field(kind, name, body[name], spec)
    for rule in SPEC["rules"]:
        _rule(rule, kind, values)
    return values


def _sampling(kind: str, v: Mapping[str, Any]) -> SamplingParams:
    max_tokens = v.get("max_tokens", v.get("max_completion_tokens", field_default("max_tokens", kind)))
    logprobs = v.get("logprobs")
    return SamplingParams(
        temperature=v.get("temperature"),
        top_p=v.get("top_p"),
        max_tokens=max_tokens,
        seed=v.get("seed"),
        stop=v.get("stop", []),
        frequency_penalty=v.get("frequency_penalty"),
        presence_penalty=v.get("presence_penalty"),
        repetition_penalty=v.get("repetition_penalty"),
        logit_bias=v.get("logit_bias", {}),
        # chat: logprobs is a switch and top_logprobs a count; completions: logprobs is the count
        logprobs=bool(logprobs) if kind == "chat" else logprobs is not None,
        top_logprobs=v.get("top_logprobs", 0) if kind == "chat" else (logprobs or 0),
        ignore_eos=v.get("ignore_eos", False),
    )


def parse_chat_request(body: Any) -> ChatCompletionRequest:
    """Validate an OpenAI `/v1/chat/completions` body; raises RequestError naming the bad field."""
    v = check_request("chat", body)
    return ChatCompletionRequest(
        messages=v["messages"], sampling=_sampling("chat", v), n=v.get("n", 1), stream=v.get("stream", False),
        include_usage=v.get("stream_options", False), model=v.get("model"), return_token_ids=v.get("return_token_ids", False),
        response_format=v.get("response_format"), tools=tool_plan(v),
    )


def parse_completion_request(body: Any) -> CompletionRequest:
    """Validate an OpenAI `/v1/completions` body (legacy API; max_tokens defaults to 16 as there)."""
    v = check_request("completion", body)
    return CompletionRequest(
        prompts=v["prompt"], sampling=_sampling("completion", v), n=v.get("n", 1), stream=v.get("stream", False),
        include_usage=v.get("stream_options", False), echo=v.get("echo", False), logprobs=v.get("logprobs"),
        model=v.get("model"), return_token_ids=v.get("return_token_ids", False),
    )


# --------------------------------------------------------------------------------------------
# Responses: dataclasses shaped like the OpenAI objects.


class _Model:
    """Mixin giving dataclasses the `model_dump` / `model_dump_json` API of openai's types."""

    # Fields dropped from the JSON when None (OpenAI omits them rather than sending null).
    _omit_none: tuple[str, ...] = ()

    def model_dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self._omit_none:
                continue
            out[f.name] = _dump(value)
        # Objects that may carry usage (chunks, completions) say whether `usage` is part of
        # their JSON: a stream shows it (null until the last chunk) only when asked to.
        if not out.pop("include_usage_field", True) and out.get("usage") is None:
            out.pop("usage", None)
        return out

    def model_dump_json(self) -> str:
        return json.dumps(self.model_dump(), ensure_ascii=False, separators=(",", ":"))

    to_dict = model_dump


def _dump(value: Any) -> Any:
    if isinstance(value, _Model):
        return value.model_dump()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass
class CompletionUsage(_Model):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Extensions: throughput of this request's prefill and decode phases (tokens per second).
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None


@dataclass
class TopLogprob(_Model):
    token: str
    logprob: float
    bytes: list[int] | None


@dataclass
class ChatCompletionTokenLogprob(_Model):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


@dataclass
class ChoiceLogprobs(_Model):
    content: list[ChatCompletionTokenLogprob] | None
    refusal: None = None


@dataclass
class ChatCompletionMessage(_Model):
    role: str
    content: str | None
    refusal: None = None
    tool_calls: list[dict[str, Any]] | None = None
    _omit_none = ("tool_calls",)


@dataclass
class ChatCompletionChoice(_Model):
    index: int
    message: ChatCompletionMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = None  # return_token_ids (extension, as in vLLM)
    _omit_none = ("token_ids",)


@dataclass
class ChatCompletion(_Model):
    id: str
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage | None
    object: str = "chat.completion"
    system_fingerprint: str | None = None
    prompt_token_ids: list[int] | None = None  # return_token_ids
    _omit_none = ("prompt_token_ids",)


@dataclass
class ChoiceDelta(_Model):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    _omit_none = ("role", "content", "tool_calls")


@dataclass
class ChatCompletionChunkChoice(_Model):
    index: int
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = None  # return_token_ids: this chunk's ids
    _omit_none = ("token_ids",)


@dataclass
class ChatCompletionChunk(_Model):
    id: str
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    object: str = "chat.completion.chunk"
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    # `usage` appears (as null until the last chunk) only when the client asked for it.
    include_usage_field: bool = field(default=False, repr=False)
    prompt_token_ids: list[int] | None = None  # return_token_ids: on the first chunk
    _omit_none = ("prompt_token_ids",)


@dataclass
class CompletionLogprobs(_Model):
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)


@dataclass
class CompletionChoice(_Model):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None
    token_ids: list[int] | None = None  # return_token_ids
    _omit_none = ("token_ids",)


@dataclass
class Completion(_Model):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None
    object: str = "text_completion"
    system_fingerprint: str | None = None
    include_usage_field: bool = field(default=True, repr=False)  # streamed chunks: as asked
    # return_token_ids: the prompt's ids (a list per prompt when several); streams: first chunk
    prompt_token_ids: list[int] | list[list[int]] | None = None
    _omit_none = ("prompt_token_ids",)


__all__: Sequence[str] = [
    "RequestError",
    "ChatMessage",
    "ChatCompletionRequest",
    "CompletionRequest",
    "parse_chat_request",
    "parse_completion_request",
    "CompletionUsage",
    "TopLogprob",
    "ChatCompletionTokenLogprob",
    "ChoiceLogprobs",
    "ChatCompletionMessage",
    "ChatCompletionChoice",
    "ChatCompletion",
    "ChoiceDelta",
    "ChatCompletionChunkChoice",
    "ChatCompletionChunk",
    "CompletionLogprobs",
    "CompletionChoice",
    "Completion",
]

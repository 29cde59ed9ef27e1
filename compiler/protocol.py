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
from typing import Any, Mapping, Sequence

from .sampling import SamplingParams

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
# Field checks. Each takes the field's dotted name for messages; `bool` is excluded from the
# numeric checks because in Python `True` is an int, and JSON `true` is not a number.


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _bad_type(name: str, value: Any, expected: str) -> RequestError:
    return RequestError(
        f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)}.",
        param=name,
        code="invalid_type",
    )


def _out_of_range(name: str, value: Any, rule: str) -> RequestError:
    return RequestError(f"Invalid value for '{name}': {value!r} is out of range; it must be {rule}.", param=name, code="invalid_value")


def _number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad_type(name, value, "a number")
    if not math.isfinite(value):
        raise RequestError(f"Invalid value for '{name}': it must be a finite number.", param=name, code="invalid_value")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and value > hi
    if below or above:
        left = "(" if lo_open else "["
        raise _out_of_range(name, value, f"in {left}{lo}, {hi}]" if hi is not None else f"{'>' if lo_open else '>='} {lo}")
    return float(value)


def _integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    # JSON has one number type; accept 3.0 for 3 like OpenAI does, reject 3.5.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad_type(name, value, "an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rule = f"between {lo} and {hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise _out_of_range(name, value, rule)
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad_type(name, value, "a boolean")
    return value


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad_type(name, value, "a string")
    return value


MAX_STOP_STRINGS = 16
MAX_N = 128


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _bad_type("stop", value, "a string or an array of strings")
    if len(items) > MAX_STOP_STRINGS:
        raise RequestError(f"Invalid 'stop': at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(items)}.", param="stop")
    out = []
    for i, s in enumerate(items):
        _string(f"stop[{i}]", s)
        if not s:
            raise RequestError(f"Invalid 'stop[{i}]': stop strings must not be empty.", param="stop")
        out.append(s)
    return out


def _logit_bias(value: Any) -> dict[int, float]:
    if not isinstance(value, Mapping):
        raise _bad_type("logit_bias", value, "an object mapping token ids to biases")
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise RequestError(f"Invalid key in 'logit_bias': {key!r} is not a token id (an integer).", param="logit_bias") from None
        if token < 0:
            raise RequestError(f"Invalid key in 'logit_bias': token id {token} is negative.", param="logit_bias")
        out[token] = _number(f"logit_bias.{key}", bias, -100, 100)
    return out


# --------------------------------------------------------------------------------------------
# Requests

_ROLES = ("system", "developer", "user", "assistant", "tool")
_MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}


@dataclass
class ChatMessage:
    role: str
    content: str
    name: str | None = None

    def to_template_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            d["name"] = self.name
        return d


def _message_content(name: str, content: Any, role: str) -> str:
    """Text of a message; a list of content parts is joined (text-only models take text parts)."""
    if content is None:
        if role == "assistant":
            return ""
        raise RequestError(f"Invalid '{name}': a {role} message needs content.", param=name)
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise _bad_type(name, content, "a string or an array of content parts")
    texts = []
    for i, part in enumerate(content):
        pname = f"{name}[{i}]"
        if not isinstance(part, Mapping):
            raise _bad_type(pname, part, "an object")
        kind = part.get("type")
        if kind != "text":
            raise RequestError(
                f"Invalid '{pname}.type': only 'text' content parts are supported by this model, got {kind!r}.",
                param=f"{pname}.type",
            )
        texts.append(_string(f"{pname}.text", part.get("text")))
    return "".join(texts)


def _messages(value: Any) -> list[ChatMessage]:
    if not isinstance(value, (list, tuple)):
        raise _bad_type("messages", value, "an array of messages")
    if not value:
        raise RequestError("Invalid 'messages': empty array. Expected an array with at least one message.", param="messages", code="empty_array")
    out = []
    for i, msg in enumerate(value):
        name = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise _bad_type(name, msg, "an object")
        unknown = sorted(set(msg) - _MESSAGE_KEYS)
        if unknown:
            raise RequestError(f"Invalid '{name}': unrecognized field(s) {', '.join(map(repr, unknown))}.", param=f"{name}.{unknown[0]}")
        if "role" not in msg:
            raise RequestError(f"Missing required parameter: '{name}.role'.", param=f"{name}.role", code="missing_required_parameter")
        role = msg["role"]
        if role not in _ROLES:
            raise RequestError(
                f"Invalid value for '{name}.role': {role!r}. Supported values are: {', '.join(map(repr, _ROLES))}.",
                param=f"{name}.role",
                code="invalid_value",
            )
        if msg.get("tool_calls"):
            raise RequestError(f"Invalid '{name}.tool_calls': tool calls are not supported by this server.", param=f"{name}.tool_calls")
        content = _message_content(f"{name}.content", msg.get("content"), role)
        msg_name = msg.get("name")
        if msg_name is not None:
            _string(f"{name}.name", msg_name)
        out.append(ChatMessage(role=role, content=content, name=msg_name))
    return out


@dataclass
class ChatCompletionRequest:
    messages: list[ChatMessage]
    sampling: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    model: str | None = None


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


# Fields both APIs accept; the per-API tables add the rest. Unknown names are an error rather than
# silently ignored, so a typo ("temprature") does not quietly run with defaults.
_COMMON_FIELDS = {
    "model", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens", "stop", "seed",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias", "user", "ignore_eos",
}
_CHAT_FIELDS = _COMMON_FIELDS | {
    "messages", "logprobs", "top_logprobs", "max_completion_tokens", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "metadata", "store", "service_tier",
}
_COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt", "echo", "logprobs", "best_of", "suffix"}


def _check_fields(body: Any, allowed: set[str], required: str) -> None:
    if not isinstance(body, Mapping):
        raise RequestError(f"The request body must be a JSON object, got {_type_name(body)}.")
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise RequestError(
            f"Unrecognized request argument supplied: {', '.join(map(str, unknown))}.",
            param=str(unknown[0]),
            code="unknown_parameter",
        )
    if body.get(required) is None:
        raise RequestError(f"Missing required parameter: '{required}'.", param=required, code="missing_required_parameter")


def _common(body: Mapping[str, Any], *, default_max_tokens: int | None) -> tuple[SamplingParams, int, bool, bool, str | None]:
    """Validate what chat and completions share; returns (sampling, n, stream, include_usage, model)."""

    def opt(name: str, check, *args, **kwargs):
        value = body.get(name)
        return None if value is None else check(name, value, *args, **kwargs)

    model = opt("model", _string)
    stream = opt("stream", _boolean) or False
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise RequestError("Invalid 'stream_options': only allowed when 'stream' is true.", param="stream_options")
        if not isinstance(options, Mapping):
            raise _bad_type("stream_options", options, "an object")
        extra = sorted(set(options) - {"include_usage", "continuous_usage_stats"})
        if extra:
            raise RequestError(f"Invalid 'stream_options': unrecognized field(s) {', '.join(extra)}.", param=f"stream_options.{extra[0]}")
        if options.get("include_usage") is not None:
            include_usage = _boolean("stream_options.include_usage", options["include_usage"])
    n = opt("n", _integer, 1, MAX_N) or 1
    opt("user", _string)
    sampling = SamplingParams(
        temperature=opt("temperature", _number, 0, 2),
        top_p=opt("top_p", _number, 0, 1, lo_open=True),
        max_tokens=opt("max_tokens", _integer, 1) or default_max_tokens,
        seed=opt("seed", _integer),
        stop=_stop(body.get("stop")),
        frequency_penalty=opt("frequency_penalty", _number, -2, 2),
        presence_penalty=opt("presence_penalty", _number, -2, 2),
        repetition_penalty=opt("repetition_penalty", _number, 0, None, lo_open=True),
        logit_bias=_logit_bias(body["logit_bias"]) if body.get("logit_bias") is not None else {},
        ignore_eos=opt("ignore_eos", _boolean) or False,
    )
    return sampling, n, stream, include_usage, model


def parse_chat_request(body: Any) -> ChatCompletionRequest:
    """Validate an OpenAI `/v1/chat/completions` body; raises RequestError naming the bad field."""
    _check_fields(body, _CHAT_FIELDS, "messages")
    sampling, n, stream, include_usage, model = _common(body, default_max_tokens=None)
    # max_completion_tokens is the newer name of max_tokens; giving both is ambiguous.
    if body.get("max_completion_tokens") is not None:
        if body.get("max_tokens") is not None:
            raise RequestError("Give only one of 'max_tokens' and 'max_completion_tokens'.", param="max_completion_tokens")
        sampling.max_tokens = _integer("max_completion_tokens", body["max_completion_tokens"], 1)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        sampling.logprobs = _boolean("logprobs", logprobs)
    if body.get("top_logprobs") is not None:
        sampling.top_logprobs = _integer("top_logprobs", body["top_logprobs"], 0, 20)
        if not sampling.logprobs:
            raise RequestError("Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.", param="top_logprobs")
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, Mapping):
            raise _bad_type("response_format", fmt, "an object")
        if fmt.get("type") != "text":
            raise RequestError(
                f"Invalid 'response_format.type': {fmt.get('type')!r} is not supported; only 'text' is.",
                param="response_format.type",
            )
    if body.get("tools"):
        raise RequestError("Invalid 'tools': function calling is not supported by this server.", param="tools")
    tool_choice = body.get("tool_choice")
    if tool_choice not in (None, "none", "auto"):
        raise RequestError("Invalid 'tool_choice': function calling is not supported by this server.", param="tool_choice")
    messages = _messages(body["messages"])
    return ChatCompletionRequest(messages=messages, sampling=sampling, n=n, stream=stream, include_usage=include_usage, model=model)


def _prompts(value: Any) -> list[str | list[int]]:
    """OpenAI accepts a string, an array of strings, an array of token ids, or an array of those."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise RequestError("Invalid 'prompt': expected a non-empty string, array of strings, array of token ids or array of token-id arrays.", param="prompt")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return [[_integer(f"prompt[{i}]", x, 0) for i, x in enumerate(value)]]
    out: list[str | list[int]] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (list, tuple)) and item:
            out.append([_integer(f"prompt[{i}][{j}]", x, 0) for j, x in enumerate(item)])
        else:
            raise RequestError(f"Invalid 'prompt[{i}]': expected a string or a non-empty array of token ids, got {_type_name(item)}.", param="prompt")
    return out


def parse_completion_request(body: Any) -> CompletionRequest:
    """Validate an OpenAI `/v1/completions` body (legacy API; max_tokens defaults to 16 as there)."""
    _check_fields(body, _COMPLETION_FIELDS, "prompt")
    sampling, n, stream, include_usage, model = _common(body, default_max_tokens=16)
    prompts = _prompts(body["prompt"])
    echo = body.get("echo")
    echo = _boolean("echo", echo) if echo is not None else False
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = _integer("logprobs", logprobs, 0, 5)
        sampling.logprobs = True
        sampling.top_logprobs = logprobs
        if echo:
            raise RequestError("Invalid 'logprobs': 'echo' together with 'logprobs' (prompt logprobs) is not supported.", param="logprobs")
    best_of = body.get("best_of")
    if best_of is not None and _integer("best_of", best_of, 1) != n:
        raise RequestError("Invalid 'best_of': only best_of equal to n is supported.", param="best_of")
    if body.get("suffix"):
        raise RequestError("Invalid 'suffix': insertion (suffix) is not supported by this model.", param="suffix")
    return CompletionRequest(
        prompts=prompts, sampling=sampling, n=n, stream=stream, include_usage=include_usage, echo=echo, logprobs=logprobs, model=model
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


@dataclass
class ChatCompletionChoice(_Model):
    index: int
    message: ChatCompletionMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


@dataclass
class ChatCompletion(_Model):
    id: str
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage | None
    object: str = "chat.completion"
    system_fingerprint: str | None = None


@dataclass
class ChoiceDelta(_Model):
    role: str | None = None
    content: str | None = None
    _omit_none = ("role", "content")


@dataclass
class ChatCompletionChunkChoice(_Model):
    index: int
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


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

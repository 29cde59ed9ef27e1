"""OpenAI request validation and response shapes (pure logic, no model)."""

from __future__ import annotations

import pytest

from sphere_aae.protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChoiceDelta,
    Completion,
    CompletionChoice,
    CompletionUsage,
    RequestError,
    parse_chat_request,
    parse_completion_request,
)

USER = [{"role": "user", "content": "hi"}]


def chat_error(**body) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_chat_request(body)
    return info.value


def completion_error(**body) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_completion_request(body)
    return info.value


def test_minimal_chat_request_leaves_defaults_to_the_model():
    req = parse_chat_request({"messages": USER, "model": "x"})
    assert req.n == 1 and not req.stream and not req.include_usage
    s = req.sampling
    assert s.temperature is None and s.top_p is None and s.max_tokens is None and s.stop == []
    assert req.messages[0].role == "user" and req.messages[0].content == "hi"


def test_full_chat_request_is_parsed():
    req = parse_chat_request(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
            ],
            "temperature": 0, "top_p": 1, "n": 3, "max_tokens": 7, "stop": "END", "seed": 5,
            "frequency_penalty": 0.5, "presence_penalty": -0.5, "logit_bias": {"17": -100},
            "logprobs": True, "top_logprobs": 3, "stream": True, "stream_options": {"include_usage": True},
            "repetition_penalty": 1.1, "ignore_eos": True,
        }
    )
    assert [m.content for m in req.messages] == ["be brief", "ab", ""]
    s = req.sampling
    assert (s.temperature, s.top_p, s.max_tokens, s.stop, s.seed) == (0.0, 1.0, 7, ["END"], 5)
    assert s.logit_bias == {17: -100.0} and s.logprobs and s.top_logprobs == 3
    assert s.repetition_penalty == 1.1 and s.ignore_eos
    assert req.n == 3 and req.stream and req.include_usage


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("temperature", 2.5, ["temperature", "[0, 2]"]),
        ("temperature", -0.1, ["temperature", "[0, 2]"]),
        ("temperature", "hot", ["temperature", "number", "string"]),
        ("temperature", True, ["temperature", "number", "boolean"]),
        ("top_p", 0, ["top_p", "(0, 1]"]),
        ("top_p", 1.01, ["top_p", "(0, 1]"]),
        ("n", 0, ["'n'", "between 1 and 128"]),
        ("n", 1.5, ["'n'", "integer"]),
        ("max_tokens", 0, ["max_tokens", ">= 1"]),
        ("max_tokens", "5", ["max_tokens", "integer", "string"]),
        ("frequency_penalty", 3, ["frequency_penalty", "[-2, 2]"]),
        ("presence_penalty", -2.5, ["presence_penalty", "[-2, 2]"]),
        ("repetition_penalty", 0, ["repetition_penalty"]),
        ("seed", "x", ["seed", "integer"]),
        ("stream", "yes", ["stream", "boolean"]),
        ("top_logprobs", 21, ["top_logprobs", "between 0 and 20"]),
    ],
)
def test_bad_chat_fields_name_the_field(field, value, words):
    err = chat_error(messages=USER, logprobs=True, **{field: value})
    assert err.param == field
    for word in words:
        assert word in err.message
    body = err.to_dict()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and err.status_code == 400


def test_unknown_field_is_rejected_not_ignored():
    err = chat_error(messages=USER, temprature=0.5)
    assert err.code == "unknown_parameter" and err.param == "temprature" and "temprature" in err.message


def test_body_must_be_an_object():
    with pytest.raises(RequestError, match="JSON object"):
        parse_chat_request([1, 2])


@pytest.mark.parametrize(
    "messages, param, words",
    [
        (None, "messages", ["Missing required parameter"]),
        ([], "messages", ["empty array"]),
        ("hello", "messages", ["array"]),
        ([{"content": "x"}], "messages[0].role", ["Missing", "role"]),
        ([{"role": "wizard", "content": "x"}], "messages[0].role", ['"wizard"', '"user"']),
        ([{"role": "user", "content": 5}], "messages[0].content", ["content", "integer"]),
        ([{"role": "user"}], "messages[0].content", ["needs content"]),
        ([{"role": "user", "content": "x", "colour": 1}], "messages[0].colour", ["colour"]),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0].type", ["image_url", "text"]),
        (["just text"], "messages[0]", ["object", "string"]),
    ],
)
def test_bad_messages(messages, param, words):
    body = {"messages": messages} if messages is not None else {}
    err = chat_error(**body)
    assert err.param == param
    for word in words:
        assert word in err.message


def test_logprob_rules():
    err = chat_error(messages=USER, top_logprobs=2)
    assert err.param == "top_logprobs" and "'logprobs' must be set to true" in err.message
    assert parse_chat_request({"messages": USER, "logprobs": True}).sampling.top_logprobs == 0
    err = completion_error(prompt="x", logprobs=6)
    assert err.param == "logprobs" and "between 0 and 5" in err.message
    err = completion_error(prompt="x", logprobs=1, echo=True)
    assert err.param == "logprobs" and "echo" in err.message
    req = parse_completion_request({"prompt": "x", "logprobs": 2})
    assert req.sampling.logprobs and req.sampling.top_logprobs == 2


def test_stream_options_need_stream():
    err = chat_error(messages=USER, stream_options={"include_usage": True})
    assert err.param == "stream_options"
    err = chat_error(messages=USER, stream=True, stream_options={"include_usage": "yes"})
    assert err.param == "stream_options.include_usage"


def test_stop_strings():
    assert parse_chat_request({"messages": USER, "stop": ["a", "bc"]}).sampling.stop == ["a", "bc"]
    assert chat_error(messages=USER, stop=[""]).param == "stop[0]"
    assert chat_error(messages=USER, stop=[1]).param == "stop[0]"
    assert chat_error(messages=USER, stop=["x"] * 17).param == "stop"


def test_logit_bias_checks():
    assert chat_error(messages=USER, logit_bias={"abc": 1}).param == "logit_bias"
    assert chat_error(messages=USER, logit_bias={"5": 101}).param == "logit_bias.5"
    assert chat_error(messages=USER, logit_bias=[1]).param == "logit_bias"


def test_max_completion_tokens_is_max_tokens():
    assert parse_chat_request({"messages": USER, "max_completion_tokens": 9}).sampling.max_tokens == 9
    assert chat_error(messages=USER, max_tokens=3, max_completion_tokens=9).param == "max_completion_tokens"


def test_unsupported_features_say_so():
    assert chat_error(messages=USER, tools=[{"type": "function"}]).param == "tools[0].function"
    assert "not supported" in chat_error(messages=USER, response_format={"type": "json"}).message
    assert parse_chat_request({"messages": USER, "response_format": {"type": "text"}, "tool_choice": "none"})


def test_completion_prompts():
    assert parse_completion_request({"prompt": "abc"}).prompts == ["abc"]
    assert parse_completion_request({"prompt": [1, 2, 3]}).prompts == [[1, 2, 3]]
    assert parse_completion_request({"prompt": ["a", [4, 5]]}).prompts == ["a", [4, 5]]
    # the legacy API's default
    assert parse_completion_request({"prompt": "abc"}).sampling.max_tokens == 16
    assert completion_error().param == "prompt"
    assert completion_error(prompt=[]).param == "prompt"
    assert completion_error(prompt=[1, -2]).param == "prompt[1]"
    assert completion_error(prompt="x", best_of=3).param == "best_of"
    assert completion_error(prompt="x", suffix="y").param == "suffix"
    assert completion_error(prompt="x", messages=USER).code == "unknown_parameter"


def test_chunk_dumps_like_openai():
    chunk = ChatCompletionChunk("id1", 1, "m", [ChatCompletionChunkChoice(0, ChoiceDelta(content="hi"))])
    d = chunk.model_dump()
    assert "usage" not in d and d["choices"][0]["delta"] == {"content": "hi"} and d["object"] == "chat.completion.chunk"
    chunk.include_usage_field = True
    assert chunk.model_dump()["usage"] is None  # with include_usage every chunk carries usage: null


def test_responses_validate_as_openai_types():
    """The official client's pydantic models accept what we send."""
    from openai.types import Completion as OAICompletion
    from openai.types.chat import ChatCompletion as OAIChat
    from openai.types.chat import ChatCompletionChunk as OAIChunk

    usage = CompletionUsage(3, 2, 5, prefill_tokens_per_s=10.0, decode_tokens_per_s=5.0)
    chat = ChatCompletion("c1", 1, "m", [ChatCompletionChoice(0, ChatCompletionMessage("assistant", "Hello"), "stop")], usage)
    parsed = OAIChat.model_validate(chat.model_dump())
    assert parsed.choices[0].message.content == "Hello" and parsed.usage.total_tokens == 5
    assert parsed.usage.prefill_tokens_per_s == 10.0  # extension fields survive
    chunk = ChatCompletionChunk("c1", 1, "m", [ChatCompletionChunkChoice(0, ChoiceDelta(role="assistant", content=""))])
    assert OAIChunk.model_validate(chunk.model_dump()).choices[0].delta.role == "assistant"
    comp = Completion("c2", 1, "m", [CompletionChoice(0, "text", "length")], usage)
    assert OAICompletion.model_validate(comp.model_dump()).choices[0].text == "text"
    assert chat.model_dump_json().startswith("{")

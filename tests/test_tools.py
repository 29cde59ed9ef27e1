"""Function calling (REQUESTS.md, "Function calling"): the spec's fixtures (tests/fixtures/
tool_cases.json, run by web/test/tools.test.ts too), then real models: stories260K through the
engine API and SmolLM2 through `sphere_aae serve` with the real `openai` client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from conftest import STORIES

from sphere_aae.engine import AsyncSphereAaeEngine, SphereAaeEngine
from sphere_aae.protocol import RequestError
from sphere_aae.template import ChatTemplate
from sphere_aae.tools import Function, ToolCallParser, ToolPlan, call_format, check_tools, named_call_format, structural_tag

CASES = json.loads((Path(__file__).parent / "fixtures" / "tool_cases.json").read_text(encoding="utf-8"))
WEATHER = CASES["tools"][0]["function"]
WEATHER_ONLY = [CASES["tools"][0]]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


# ---------------------------------------------------------------------------------------------
# The spec's fixtures


@pytest.mark.parametrize("case", CASES["templates"], ids=lambda c: c["name"])
def test_call_format_read_off_the_template(case: dict[str, Any]) -> None:
    fmt, why = call_format(case["source"])
    assert (fmt.name if fmt else None, why) == (case["format"], case["why"])


@pytest.mark.parametrize("case", CASES["structural_tags"], ids=lambda c: f"{c['format']} {c['choice']} parallel={c['parallel']}")
def test_structural_tag(case: dict[str, Any]) -> None:
    plan = ToolPlan(check_tools(CASES["tools"]), case["choice"], case["parallel"])
    grammar = lambda schema: "root ::= " + json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # noqa: E731
    assert structural_tag(plan, named_call_format(case["format"]), grammar) == case["tag"]


@pytest.mark.parametrize("case", CASES["parses"], ids=lambda c: f"{c['format']}: {c['name']}")
def test_parsing_streamed_text(case: dict[str, Any]) -> None:
    parser = ToolCallParser(named_call_format(case["format"]), case["names"], case["id_prefix"])
    steps = [parser.push(p) for p in case["pieces"]] + [parser.finish()]
    assert [{"content": c, "calls": [x.to_dict(with_index=True) for x in calls]} for c, calls in steps] == case["steps"]
    # Parsing the whole text at once gives what the pieces add up to.
    whole = ToolCallParser(named_call_format(case["format"]), case["names"], case["id_prefix"])
    content = whole.push("".join(case["pieces"]))[0] + whole.finish()[0]
    assert content == "".join(s["content"] for s in case["steps"])
    assert whole.calls == parser.calls


@pytest.mark.parametrize("case", CASES["renders"], ids=lambda c: c["template"])
def test_tool_templates_render_calls_and_results(case: dict[str, Any]) -> None:
    text = ChatTemplate(case["source"], case["special_tokens"]).render(case["messages"], tools=case["tools"])
    assert text == case["text"]
    assert '"arguments": {"city": "Paris"' in text or '"parameters": {"city": "Paris"' in text
    assert "21C, sunny" in text and "&quot;" not in text and "&#34;" not in text


# ---------------------------------------------------------------------------------------------
# stories260K through the engine API: the grammar holds whatever the model would write

# A short template (stories260K's context is 512 one-character tokens): it renders the tools'
# names and uses the Hermes call format (the comment names its marker).
TINY_TEMPLATE = (
    "{# calls: <tool_call> #}{% if tools %}{% for t in tools %}{{ t['function']['name'] }} {% endfor %}{% endif %}"
    "{% for m in messages %}{{ m['content'] }}{% if m['tool_calls'] %}{{ m['tool_calls'][0]['function']['arguments'] | tojson }}{% endif %}\n{% endfor %}"
)


@pytest.fixture(scope="module")
def stories() -> Any:
    engine = SphereAaeEngine(str(STORIES), quantization="q0f32", chat_template=TINY_TEMPLATE)
    yield engine
    engine.terminate()


def _calls(message: Any) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.tool_calls or []]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_calls_are_valid_on_stories260k(stories: SphereAaeEngine, choice: Any) -> None:
    tools = CASES["tools"]
    for seed in range(4):
        r = stories.chat.completions.create(messages=USER, tools=tools, tool_choice=choice, parallel_tool_calls=False,
                                            seed=seed, temperature=1.0, max_tokens=300)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c.message.content
        calls = _calls(c.message)
        assert len(calls) == 1 and c.message.content is None
        name, args = calls[0]
        if isinstance(choice, dict):
            assert name == "get_weather"
        schema = next(t["function"].get("parameters", {"type": "object"}) for t in tools if t["function"]["name"] == name)
        jsonschema.validate(args, schema)
        assert c.message.tool_calls[0]["id"] == f"call_{r.id.split('-', 1)[1]}_0_0"


def test_streamed_calls_equal_the_non_streamed_ones(stories: SphereAaeEngine) -> None:
    body = dict(messages=USER, tools=CASES["tools"], tool_choice="required", seed=11, temperature=1.0, max_tokens=300, n=2)
    whole = stories.chat.completions.create(**body)
    deltas: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    content: dict[int, str] = {0: "", 1: ""}
    finish = {}
    for chunk in stories.chat.completions.create(**body, stream=True):
        for ch in chunk.choices:
            deltas[ch.index].extend(ch.delta.tool_calls or [])
            content[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    for i, choice in enumerate(whole.choices):
        assert finish[i] == choice.finish_reason
        assert [(d["function"]["name"], d["function"]["arguments"]) for d in deltas[i]] == \
               [(c["function"]["name"], c["function"]["arguments"]) for c in choice.message.tool_calls or []]
        assert [d["index"] for d in deltas[i]] == list(range(len(deltas[i])))
        assert content[i] == (choice.message.content or "")


def test_auto_lets_the_model_answer_in_prose(stories: SphereAaeEngine) -> None:
    r = stories.chat.completions.create(messages=[{"role": "user", "content": "Once upon a time"}], tools=CASES["tools"],
                                        seed=1, temperature=0.0, max_tokens=24)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content  # the story goes on: nothing forced a call


def test_tool_choice_none_renders_no_tools(stories: SphereAaeEngine) -> None:
    with_tools = stories.chat.completions.create(messages=USER, tools=CASES["tools"], tool_choice="none", max_tokens=2,
                                                 return_token_ids=True, temperature=0)
    without = stories.chat.completions.create(messages=USER, max_tokens=2, return_token_ids=True, temperature=0)
    assert with_tools.prompt_token_ids == without.prompt_token_ids


def test_a_template_without_tools_is_a_400_naming_the_fix() -> None:
    engine = SphereAaeEngine(str(STORIES), quantization="q0f32")  # a base model: no chat template at all
    try:
        with pytest.raises(RequestError) as info:
            engine.chat.completions.create(messages=USER, tools=CASES["tools"])
        assert info.value.param == "tools" and info.value.code == "tools_not_supported"
        assert "does not render tools" in info.value.message and "--chat-template hermes" in info.value.message
        # tool_choice none needs no template support.
        assert engine.chat.completions.create(messages=USER, tools=CASES["tools"], tool_choice="none", max_tokens=2)
    finally:
        engine.terminate()


def test_parameters_xgrammar_refuses_name_their_function(stories: SphereAaeEngine) -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "(["}}, "required": ["a"]}}}
    with pytest.raises(RequestError) as info:
        stories.chat.completions.create(messages=USER, tools=[WEATHER_ONLY[0], bad], tool_choice="required")
    assert info.value.param == "tools[1].function.parameters" and "Unclosed '['" in info.value.message


def test_unknown_named_template_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: chatml"):
        SphereAaeEngine(str(STORIES), quantization="q0f32", chat_template="hermes-9")


# ---------------------------------------------------------------------------------------------
# SmolLM2 through the server and the real openai client (ChatML model, Hermes tool template)


@pytest.fixture(scope="module")
def smollm2_server() -> Any:
    from test_serve import running

    engine = AsyncSphereAaeEngine("SmolLM2-135M-Instruct", chat_template="hermes")
    with running(engine) as url:
        yield engine, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    engine.terminate()


@pytest.mark.slow
def test_named_function_round_trip_on_smollm2(smollm2_server: Any) -> None:
    _, client = smollm2_server
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model="m", messages=USER, tools=WEATHER_ONLY, tool_choice=choice, seed=5, max_tokens=80)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["parameters"])
    assert "paris" in args["city"].lower()

    # Streaming, same seed: the call arrives in one delta, with the same arguments.
    stream = client.chat.completions.create(model="m", messages=USER, tools=WEATHER_ONLY, tool_choice=choice, seed=5,
                                            max_tokens=80, stream=True)
    chunks = list(stream)
    deltas = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].function.name == "get_weather"
    assert deltas[0].function.arguments == call.function.arguments
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]

    # The result goes back as history: the assistant's call and the tool's answer are rendered
    # (the prompt holds both), and the model answers in prose.
    history = USER + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees Celsius and sunny"},
    ]
    answer = client.chat.completions.create(model="m", messages=history, tools=WEATHER_ONLY, tool_choice="none", seed=5,
                                            max_tokens=40, temperature=0, extra_body={"return_token_ids": True})
    prompt = smollm2_server[0].tokenizer.decode(answer.model_extra["prompt_token_ids"], skip_special_tokens=False)
    assert "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": " + json.dumps(args) + "}\n</tool_call>" in prompt
    assert "<tool_response>\n18 degrees Celsius and sunny\n</tool_response>" in prompt
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None


@pytest.mark.slow
def test_required_and_auto_on_smollm2(smollm2_server: Any) -> None:
    _, client = smollm2_server
    tools = CASES["tools"]
    r = client.chat.completions.create(model="m", messages=USER, tools=tools, tool_choice="required", seed=2, max_tokens=120,
                                       parallel_tool_calls=False)
    assert r.choices[0].finish_reason == "tool_calls" and len(r.choices[0].message.tool_calls) == 1
    # auto: the model may call or answer; either way the result is well-formed.
    r = client.chat.completions.create(model="m", messages=USER, tools=tools, seed=2, max_tokens=120)
    c = r.choices[0]
    if c.message.tool_calls:
        assert c.finish_reason == "tool_calls"
        for call in c.message.tool_calls:
            json.loads(call.function.arguments)
    else:
        assert c.message.content


@pytest.mark.slow
def test_bad_tool_requests_are_400s(smollm2_server: Any) -> None:
    _, client = smollm2_server
    cases = [
        ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name"),
        ({"tools": WEATHER_ONLY, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "patternProperties": {}}}}]},
         "tools[0].function.parameters.patternProperties"),
        ({"tools": WEATHER_ONLY, "response_format": {"type": "json_object"}}, "response_format"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="m", messages=USER, **extra)
        assert info.value.body["param"] == param, extra


def test_plan_of_a_named_function_keeps_one_tag() -> None:
    plan = ToolPlan((Function("a", {"type": "object"}), Function("b", {"type": "object"})), "b", True)
    tag = structural_tag(plan, named_call_format("hermes"), lambda s: "root ::= \"{}\"")
    assert [t["begin"] for t in tag["format"]["tags"]] == ['<tool_call>\n{"name": "b", "arguments": ']
    assert tag["format"]["stop_after_first"] is True and tag["format"]["at_least_one"] is True


def test_llama3_json_calls_on_stories260k() -> None:
    """The Llama 3.1 call format: a bare JSON object with "parameters", one call at most."""
    template = TINY_TEMPLATE.replace("<tool_call>", '{"name": f, "parameters": {...}}')
    engine = SphereAaeEngine(str(STORIES), quantization="q0f32", chat_template=template)
    try:
        for seed in range(3):
            r = engine.chat.completions.create(messages=USER, tools=WEATHER_ONLY, tool_choice="required", seed=seed,
                                               temperature=1.0, max_tokens=300)
            c = r.choices[0]
            assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
            jsonschema.validate(json.loads(c.message.tool_calls[0]["function"]["arguments"]), WEATHER["parameters"])
            assert r.choices[0].message.content is None
    finally:
        engine.terminate()

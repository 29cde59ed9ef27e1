"""The OpenAI-compatible server, driven by the real `openai` client and raw HTTP, on real models."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import openai
import pytest
import uvicorn
from conftest import STORIES, STORIES_REFERENCE_TEXT

from sphere_aae.engine import AsyncSphereAaeEngine
from sphere_aae.serve import create_app

pytestmark = pytest.mark.slow

PROMPT = "Once upon a time"
REFERENCE_CONTINUATION = STORIES_REFERENCE_TEXT[len(PROMPT) :]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(engine: AsyncSphereAaeEngine) -> Iterator[str]:
    """Serve `engine` with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def stories():
    engine = AsyncSphereAaeEngine(str(STORIES), quantization="q0f32")
    with running(engine) as url:
        yield engine, url
    engine.terminate()


@pytest.fixture(scope="module")
def smollm2():
    engine = AsyncSphereAaeEngine("SmolLM2-135M-Instruct")
    with running(engine) as url:
        yield engine, url
    engine.terminate()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def wait_idle(engine: AsyncSphereAaeEngine, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.active_sequences and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.active_sequences == 0


def test_models_and_health(stories):
    engine, url = stories
    models = client(url).models.list()
    assert [m.id for m in models.data] == [engine.model_id] and models.data[0].owned_by == "sphere_aae"
    health = httpx.get(f"{url}/health").json()
    assert health == {"status": "ok", "model": engine.model_id, "active_sequences": 0}


def test_completions_reference_text(stories):
    _, url = stories
    c = client(url)
    r = c.completions.create(model="stories", prompt=PROMPT, temperature=0, max_tokens=40)
    assert PROMPT + r.choices[0].text == STORIES_REFERENCE_TEXT
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 40 and r.usage.total_tokens == 45
    stream = c.completions.create(model="stories", prompt=PROMPT, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == REFERENCE_CONTINUATION
    assert chunks[-1].usage.completion_tokens == 40


def test_sse_wire_format(stories):
    _, url = stories
    body = {"model": "x", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 10, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and "usage" not in chunks[-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["object"] == "chat.completion.chunk"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert REFERENCE_CONTINUATION.startswith(text) and text


@pytest.mark.parametrize(
    "kwargs, param, words",
    [
        ({"temperature": 3}, "temperature", ["temperature", "[0, 2]"]),
        ({"top_p": 0}, "top_p", ["top_p"]),
        ({"n": 0}, "n", ["'n'"]),
        ({"max_tokens": 0}, "max_tokens", ["max_tokens"]),
        ({"top_logprobs": 3}, "top_logprobs", ["logprobs"]),
        ({"messages": []}, "messages", ["empty array"]),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", ["robot"]),
        ({"extra_body": {"colour": "blue"}}, "colour", ["colour"]),
    ],
)
def test_bad_chat_requests_are_400_with_a_message(stories, kwargs, param, words):
    _, url = stories
    args = {"model": "x", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client(url).chat.completions.create(**args)
    err = info.value
    assert err.status_code == 400 and err.body["param"] == param and err.body["type"] == "invalid_request_error"
    for word in words:
        assert word in err.body["message"]


def test_prompt_past_the_context_window_is_400(stories):
    engine, url = stories
    window = engine.config["context_window_size"]
    with pytest.raises(openai.BadRequestError) as info:
        client(url).completions.create(model="x", prompt="Once upon a time " * window)
    assert info.value.body["code"] == "context_length_exceeded" and str(window) in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):  # also when streaming: refused before the stream starts
        client(url).completions.create(model="x", prompt="Once upon a time " * window, stream=True)


def test_malformed_http_requests(stories):
    _, url = stories
    r = httpx.post(f"{url}/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/completions", json=["not", "an", "object"])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = httpx.get(f"{url}/v1/chat/completions")
    assert r.status_code == 405 and "GET" in r.json()["error"]["message"]
    r = httpx.get(f"{url}/v1/nothing-here")
    assert r.status_code == 404 and "/v1/nothing-here" in r.json()["error"]["message"]


def test_chat_non_streaming_and_streaming_on_smollm2(smollm2):
    engine, url = smollm2
    c = client(url)
    r = c.chat.completions.create(model=engine.model_id, messages=QUESTION, temperature=0, max_tokens=12)
    answer = r.choices[0].message.content
    assert "Paris" in answer and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 20 and r.usage.completion_tokens <= 12
    assert r.usage.prefill_tokens_per_s > 0
    stream = c.chat.completions.create(model=engine.model_id, messages=QUESTION, temperature=0, max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == answer
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert engine.active_sequences == 0


def test_two_concurrent_streams_complete_correctly(smollm2):
    engine, url = smollm2
    prompts = ["The capital of France is", "The capital of Italy is"]
    c = client(url)
    alone = [c.completions.create(model="x", prompt=p, temperature=0, max_tokens=6).choices[0].text for p in prompts]

    async def both():
        ac = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        arrivals: list[int] = []

        async def one(i: int) -> str:
            stream = await ac.completions.create(model="x", prompt=prompts[i], temperature=0, max_tokens=6, stream=True)
            parts = []
            async for chunk in stream:
                arrivals.append(i)
                parts.append(chunk.choices[0].text)
            return "".join(parts)

        texts = await asyncio.gather(one(0), one(1))
        return texts, arrivals

    texts, arrivals = asyncio.run(both())
    assert texts == alone and alone[0] != alone[1]
    # The streams really overlapped: chunks of the two arrived interleaved, not one after the other.
    first_done = min(len(arrivals) - arrivals[::-1].index(i) for i in (0, 1))
    assert set(arrivals[:first_done]) == {0, 1}
    wait_idle(engine)


def test_dropped_stream_frees_its_sequence(smollm2):
    engine, url = smollm2
    body = {"model": "x", "prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                break  # the first generated text: generation is under way
        assert engine.active_sequences == 1
    # Closing the response drops the connection mid-stream; 300 tokens would take minutes.
    wait_idle(engine, timeout=20)
    assert httpx.get(f"{url}/health").json()["active_sequences"] == 0


def test_abandoned_non_streaming_request_is_cancelled(smollm2):
    engine, url = smollm2
    # 1,500 tokens: more than a fast CPU decodes in the 3 s the client waits.
    body = {"model": "x", "prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(3.0, connect=5.0))
    wait_idle(engine, timeout=20)


def test_cli_serve_entry_point():
    """`sphere_aae serve` (the lead's CLI around serve()) starts, answers, and stops on Ctrl-C."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sphere_aae", "serve", str(STORIES), "-q", "q0f32", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        r = client(url).completions.create(model="x", prompt=PROMPT, temperature=0, max_tokens=40)
        assert PROMPT + r.choices[0].text == STORIES_REFERENCE_TEXT
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- structured output (REQUESTS.md "Structured output"), through the real openai client ----------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "pets": {"type": "array", "maxItems": 3, "items": {"type": "object", "required": ["kind", "legs"], "properties": {
            "kind": {"enum": ["cat", "dog", "bird"]}, "legs": {"type": "integer", "minimum": 0, "maximum": 4}}}},
        "address": {"type": "object", "required": ["street", "zip"], "properties": {
            "street": {"type": "string", "maxLength": 30}, "zip": {"type": "integer", "minimum": 10000, "maximum": 99999}}},
        "rating": {"type": "integer", "exclusiveMinimum": 0, "maximum": 5},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "pets", "address", "rating"],
}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
DESCRIBE = [{"role": "user", "content": "Describe a person as JSON."}]


def test_json_schema_50_sampled_generations_all_validate(smollm2):
    """Temperature 1, 50 different seeds (10 requests of n=5; choice i is seeded seed + i): every
    answer parses and validates against the nested schema; the last one is streamed."""
    import jsonschema

    engine, url = smollm2
    c = client(url)
    texts = []
    for k in range(10):
        r = c.chat.completions.create(model="m", messages=DESCRIBE, temperature=1.0, seed=5 * k, n=5, max_tokens=256, response_format=PERSON_FORMAT)
        assert all(ch.finish_reason == "stop" for ch in r.choices), [ch.finish_reason for ch in r.choices]
        texts += [ch.message.content for ch in r.choices]
    assert len(texts) == 50 and len(set(texts)) > 40, "seeds give different answers"
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)
    stream = c.chat.completions.create(model="m", messages=DESCRIBE, temperature=1.0, seed=7, max_tokens=256, response_format=PERSON_FORMAT, stream=True)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    jsonschema.validate(json.loads(streamed), PERSON)
    assert streamed == texts[7], "the same seed streamed and not"
    wait_idle(engine)


def test_json_object_and_grammar_formats(smollm2):
    engine, url = smollm2
    c = client(url)
    r = c.chat.completions.create(model="m", messages=DESCRIBE, temperature=0.8, seed=1, max_tokens=128, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    grammar = 'root ::= ("yes" | "no") ", because " [a-z ]{1,40} "."'
    r = c.chat.completions.create(model="m", messages=QUESTION, temperature=1.0, seed=2, max_tokens=40, extra_body={"response_format": {"type": "grammar", "grammar": grammar}})
    import re

    assert re.fullmatch(r"(yes|no), because [a-z ]{1,40}\.", r.choices[0].message.content), r.choices[0].message.content
    wait_idle(engine)


@pytest.mark.parametrize(
    ("response_format", "param", "words"),
    [
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}}},
         "response_format.json_schema.schema.properties.tags.uniqueItems", "'uniqueItems' is not supported"),
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"a": {"type": "integr"}}}}},
         "response_format.json_schema.schema.properties.a.type", "not a JSON Schema type"),
        ({"type": "grammar", "grammar": "root ::= ("}, "response_format.grammar", "Invalid 'response_format.grammar'"),
        ({"type": "xml"}, "response_format.type", "is not supported"),
    ],
)
def test_bad_response_formats_are_400_naming_the_path(smollm2, response_format, param, words):
    _, url = smollm2
    with pytest.raises(openai.BadRequestError) as info:
        client(url).chat.completions.create(model="m", messages=DESCRIBE, max_tokens=8, extra_body={"response_format": response_format})
    err = info.value.body
    assert err["param"] == param and words in err["message"], err

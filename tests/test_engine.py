"""The native engine: overrides, tokenizer pieces, chat templates (fast), and the sync + async
Python API on real compiled models (slow)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from conftest import STORIES, STORIES_REFERENCE_TEXT

from sphere_aae.engine import AsyncSphereAaeEngine, OverrideError, SphereAaeEngine, parse_overrides
from sphere_aae.protocol import RequestError
from sphere_aae.template import ChatTemplate
from sphere_aae.text_stream import StopStringMatcher
from sphere_aae.tokenizer import IncrementalDetokenizer, TextTokenizer

PROMPT = "Once upon a time"
REFERENCE_CONTINUATION = STORIES_REFERENCE_TEXT[len(PROMPT) :]
STORIES_CONFIG = {"bos_token_id": 1, "add_bos_token": True, "eos_token_ids": [2]}

# ---------------------------------------------------------------------------------------------
# --overrides


def test_parse_overrides_string_and_dict():
    spec = " context_window_size=2048; prefill_chunk_size=512 ;max_batch_size=4;tensor_parallel_shards=1; "
    assert parse_overrides(spec) == {"context_window_size": 2048, "prefill_chunk_size": 512, "max_batch_size": 4, "tensor_parallel_shards": 1}
    assert parse_overrides({"max_batch_size": "2"}) == {"max_batch_size": 2}
    assert parse_overrides(None) == {} and parse_overrides("") == {}


@pytest.mark.parametrize(
    "spec, words",
    [
        ("context_window=2048", ["unknown override 'context_window'", "context_window_size"]),
        ("max_batch_size=four", ["max_batch_size", "positive integer", "'four'"]),
        ("max_batch_size=0", ["positive integer"]),
        ("prefill_chunk_size=-5", ["positive integer"]),
        ("context_window_size=1.5", ["positive integer"]),
        ("context_window_size", ["key=value"]),
        ({"max_batch_size": True}, ["positive integer"]),
        (42, ["string or a dict"]),
    ],
)
def test_bad_overrides_say_what_is_wrong(spec, words):
    with pytest.raises(OverrideError) as info:
        parse_overrides(spec)
    for word in words:
        assert word in str(info.value)


def test_engine_rejects_bad_overrides_before_loading():
    with pytest.raises(OverrideError, match="tensor_parallel_shards=2 needs 2 'cpu' devices, but this machine has 1"):
        SphereAaeEngine(str(STORIES), overrides="tensor_parallel_shards=2")
    with pytest.raises(OverrideError, match="unknown override"):
        SphereAaeEngine(str(STORIES), overrides="colour=3")


# ---------------------------------------------------------------------------------------------
# Tokenizer, detokenizer, stop strings


@pytest.fixture(scope="module")
def stories_tokenizer() -> TextTokenizer:
    return TextTokenizer(STORIES, STORIES_CONFIG)


@pytest.fixture(scope="module")
def smollm2_files(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2's tokenizer.json / tokenizer_config.json, rebuilt from its GGUF as gen_config does."""
    from sphere_aae.loaders import gguf_tokenizer_files

    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    for name, data in gguf_tokenizer_files(smollm2_gguf).items():
        (out / name).write_bytes(data)
    return out


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_files) -> TextTokenizer:
    return TextTokenizer(smollm2_files, {"bos_token_id": 1, "add_bos_token": False, "eos_token_ids": [2]})


def test_encode_adds_bos_as_configured(stories_tokenizer):
    assert stories_tokenizer.encode(PROMPT) == [1, 403, 407, 261, 378]  # the fixture's reference ids
    assert stories_tokenizer.encode(PROMPT, add_bos=False) == [403, 407, 261, 378]
    with_bos = stories_tokenizer.encode("<s>" + PROMPT)
    assert with_bos[0] == 1 and with_bos.count(1) == 1  # a template that writes BOS gets no second one


MULTIBYTE = "Héllo wörld 😀 世界, Lily said: «ça va?» ½"


@pytest.mark.parametrize("which", ["stories_tokenizer", "smollm2_tokenizer"])
def test_incremental_detokenizer_handles_multibyte_tokens(request, which):
    tok: TextTokenizer = request.getfixturevalue(which)
    ids = tok.encode(MULTIBYTE, add_bos=False)
    # Some characters really are split over several byte tokens, or the test proves nothing.
    assert any(tok.token_bytes(i) and not _is_utf8(tok.token_bytes(i)) for i in ids)
    detok = IncrementalDetokenizer(tok, [tok.encode("x")[-1]])
    deltas = [detok.push(i) for i in ids]
    text = "".join(deltas) + detok.flush()
    assert text.strip() == MULTIBYTE
    assert not any("\ufffd" in d for d in deltas)
    # Token bytes concatenate to the text's bytes (what logprobs report per token).
    assert b"".join(tok.token_bytes(i) for i in ids).decode().strip() == MULTIBYTE


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_detokenizer_keeps_the_leading_space_of_the_first_token(stories_tokenizer):
    prompt = stories_tokenizer.encode(PROMPT)
    ids = stories_tokenizer.encode(PROMPT + " there was", add_bos=True)[len(prompt) :]
    detok = IncrementalDetokenizer(stories_tokenizer, prompt)
    assert "".join(detok.push(i) for i in ids) == " there was"


def feed_all(stops, pieces):
    m = StopStringMatcher(stops)
    emitted, hit = [], False
    for piece in pieces:
        text, hit = m.feed(piece)
        emitted.append(text)
        if hit:
            break
    if not hit:
        emitted.append(m.flush())
    return emitted, hit


def test_stop_string_split_over_deltas_is_cut_exactly():
    emitted, hit = feed_all(["o w"], ["Hel", "lo", " wo", "rld"])
    assert hit and "".join(emitted) == "Hell"
    assert emitted == ["Hel", "l", ""]  # "o" is held back until " wo" proves the stop


def test_held_text_is_released_when_it_is_not_a_stop():
    emitted, hit = feed_all(["bc"], ["ab", "d"])
    assert not hit and emitted == ["a", "bd", ""]
    emitted, hit = feed_all(["bc"], ["ab"])
    assert not hit and "".join(emitted) == "ab"  # flushed at the end


def test_earliest_of_several_stops_wins():
    emitted, hit = feed_all(["world", "lo"], ["hello world"])
    assert hit and emitted == ["hel"]
    assert feed_all([], ["abc"]) == (["abc", ""], False)


# ---------------------------------------------------------------------------------------------
# Chat template


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Ünïcödé 😀"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_smollm2_template_renders_like_transformers(smollm2_files, smollm2_tokenizer, messages):
    import json

    from transformers import PreTrainedTokenizerFast

    cfg = json.loads((smollm2_files / "tokenizer_config.json").read_text())
    ours = ChatTemplate(cfg["chat_template"], smollm2_tokenizer.special_tokens).render(messages)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(smollm2_files / "tokenizer.json"), **{k: cfg[k] for k in ("bos_token", "eos_token")})
    assert ours == hf.apply_chat_template(messages, chat_template=cfg["chat_template"], tokenize=False, add_generation_prompt=True)
    assert ours.endswith("<|im_start|>assistant\n")
    ids = smollm2_tokenizer.encode(ours)
    assert ids.count(smollm2_tokenizer.tokenizer.token_to_id("<|im_start|>")) == len(messages) + 1 + (messages[0]["role"] != "system")


def test_template_helpers_and_errors():
    src = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}"
        "{{ bos_token }}{% for m in messages %}{{ m | tojson }}{% endfor %}"
    )
    t = ChatTemplate(src, {"bos_token": "<s>", "eos_token": "</s>"})
    assert t.render([{"role": "user", "content": "é"}]) == '<s>{"role": "user", "content": "é"}'
    with pytest.raises(RequestError, match="no system messages"):
        t.render([{"role": "system", "content": "x"}])


def test_sandbox_blocks_attribute_escapes():
    from jinja2.exceptions import SecurityError

    t = ChatTemplate("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", {})
    with pytest.raises((SecurityError, RequestError)):
        t.render([{"role": "user", "content": "x"}])


def test_fallback_template_for_base_models():
    t = ChatTemplate(None, {})
    assert t.is_fallback
    assert t.render([{"role": "user", "content": "Once upon"}, {"role": "user", "content": "a time"}]) == "Once upon\na time"


# ---------------------------------------------------------------------------------------------
# Real models (slow)


@pytest.fixture(scope="module")
def stories_engine():
    engine = SphereAaeEngine(str(STORIES), quantization="q0f32")
    yield engine
    engine.terminate()


def wait_idle(engine, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.active_sequences and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.active_sequences == 0


@pytest.mark.slow
def test_completion_reproduces_the_fixture_reference(stories_engine):
    r = stories_engine.completions.create(prompt=PROMPT, temperature=0, max_tokens=40)
    assert PROMPT + r.choices[0].text == STORIES_REFERENCE_TEXT
    assert r.choices[0].finish_reason == "length" and r.object == "text_completion"
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (5, 40, 45)
    assert u.prefill_tokens_per_s > 0 and u.decode_tokens_per_s > 0
    assert stories_engine.active_sequences == 0


@pytest.mark.slow
def test_streaming_equals_non_streaming(stories_engine):
    chunks = list(stories_engine.completions.create(prompt=PROMPT, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == REFERENCE_CONTINUATION
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert len(chunks) > 20  # really incremental


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["Lily", "girl na", ". "])
def test_stop_strings_cut_exactly(stories_engine, stop):
    expected = REFERENCE_CONTINUATION[: REFERENCE_CONTINUATION.index(stop)]
    r = stories_engine.completions.create(prompt=PROMPT, temperature=0, max_tokens=40, stop=[stop, "zzz"])
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].text for c in stories_engine.completions.create(prompt=PROMPT, temperature=0, max_tokens=40, stop=stop, stream=True)]
    assert "".join(pieces) == expected
    assert stories_engine.active_sequences == 0


@pytest.mark.slow
def test_chat_api_on_a_base_model_and_logprobs(stories_engine):
    r = stories_engine.chat.completions.create(messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=12, logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    assert REFERENCE_CONTINUATION.startswith(choice.message.content) and choice.message.role == "assistant"
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens == 12
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely token
        assert bytes(t.bytes).decode() == t.token


@pytest.mark.slow
def test_completion_logprobs_echo_and_several_prompts(stories_engine):
    r = stories_engine.completions.create(prompt=PROMPT, temperature=0, max_tokens=8, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == 8
    assert all(len(d) <= 2 for d in lp.top_logprobs) and lp.text_offset == sorted(lp.text_offset)
    r = stories_engine.completions.create(prompt=PROMPT, temperature=0, max_tokens=40, echo=True)
    assert r.choices[0].text == STORIES_REFERENCE_TEXT
    r = stories_engine.completions.create(prompt=[PROMPT, [1, 403, 407, 261, 378]], temperature=0, max_tokens=40, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(c.text == REFERENCE_CONTINUATION for c in r.choices)
    assert r.usage.prompt_tokens == 10 and r.usage.completion_tokens == 160


@pytest.mark.slow
def test_seeded_sampling_repeats_and_n_choices_differ(stories_engine):
    def run(seed):
        return [c.message.content for c in stories_engine.chat.completions.create(
            messages=[{"role": "user", "content": PROMPT}], temperature=1.0, top_p=0.95, max_tokens=30, seed=seed, n=2
        ).choices]

    first = run(123)
    assert first == run(123)
    assert first[0] != first[1]  # each choice gets its own stream of random numbers
    assert run(124) != first


@pytest.mark.slow
def test_return_token_ids_stream_and_not(stories_engine):
    """return_token_ids (request_spec.json): prompt ids on the response (the first chunk when
    streaming), each choice's generated ids on it (per chunk when streaming), as in the browser."""
    body = dict(prompt=PROMPT, temperature=0.8, top_p=0.9, seed=3, max_tokens=12, return_token_ids=True)
    r = stories_engine.completions.create(**body)
    assert r.prompt_token_ids == [1, 403, 407, 261, 378]
    ids = r.choices[0].token_ids
    assert len(ids) == r.usage.completion_tokens
    assert stories_engine.tokenizer.decode(r.prompt_token_ids + ids) == PROMPT + r.choices[0].text
    chunks = list(stories_engine.completions.create(**body, stream=True))
    assert chunks[0].prompt_token_ids == r.prompt_token_ids and all(c.prompt_token_ids is None for c in chunks[1:])
    assert [t for c in chunks for t in c.choices[0].token_ids] == ids
    chat = dict(messages=[{"role": "user", "content": PROMPT}], temperature=1.0, seed=11, n=2, max_tokens=10, return_token_ids=True)
    whole = stories_engine.chat.completions.create(**chat)
    streamed: dict[int, list[int]] = {}
    for c in stories_engine.chat.completions.create(**chat, stream=True):
        for choice in c.choices:
            streamed.setdefault(choice.index, []).extend(choice.token_ids or [])  # role chunks carry none
    assert streamed == {c.index: c.token_ids for c in whole.choices}
    plain = stories_engine.completions.create(prompt=PROMPT, max_tokens=2).model_dump()
    assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0]


@pytest.mark.slow
def test_context_window_errors_and_length_limit(stories_engine):
    window = stories_engine.config["context_window_size"]
    with pytest.raises(RequestError) as info:
        stories_engine.completions.create(prompt=[1] + [403] * window, max_tokens=5)
    assert info.value.code == "context_length_exceeded" and str(window) in info.value.message
    assert info.value.status_code == 400
    prompt = [1] + [403, 407, 261, 378] * ((window - 10) // 4)
    r = stories_engine.completions.create(prompt=prompt, max_tokens=100, temperature=0, ignore_eos=True)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == window  # generation stopped at the window, not past it
    # And the engine still works.
    assert stories_engine.completions.create(prompt=PROMPT, temperature=0, max_tokens=3).choices[0].text


@pytest.mark.slow
def test_closing_a_sync_stream_frees_its_sequence(stories_engine):
    stream = stories_engine.completions.create(prompt=PROMPT, max_tokens=400, ignore_eos=True, stream=True)
    next(stream)
    next(stream)
    stream.close()
    wait_idle(stories_engine)
    with stories_engine.completions.create(prompt=PROMPT, max_tokens=400, ignore_eos=True, stream=True) as stream:
        next(stream)
    wait_idle(stories_engine)


@pytest.mark.slow
def test_prefix_cache_prefills_only_what_is_new_and_changes_no_token(stories_engine, monkeypatch):
    """request_spec.json "scheduler": a finished choice's sequence stays cached; the next request
    sharing its prefix pops it back and prefills the rest, with the tokens a fresh prefill gives."""
    runtime = stories_engine._core.runtime
    prefilled: list[int] = []
    real_prefill = runtime.prefill
    monkeypatch.setattr(runtime, "prefill", lambda seq, ids: (prefilled.append(len(ids)), real_prefill(seq, ids))[1])
    stories_engine.reset_chat()
    first = stories_engine.completions.create(prompt=PROMPT, temperature=0, max_tokens=20, return_token_ids=True)
    wait_idle(stories_engine)
    assert stories_engine.cached_sequences == 1
    prompt_ids, generated = first.prompt_token_ids, first.choices[0].token_ids
    # The cache holds the prompt and 19 of the 20 generated ids (the last was never fed).
    turn2 = [*prompt_ids, *generated, 13, 42]
    prefilled.clear()
    reused = stories_engine.completions.create(prompt=turn2, temperature=0, max_tokens=24, return_token_ids=True)
    assert prefilled == [len(turn2) - (len(prompt_ids) + 19)]
    # A diverging request pops back to the common prefix (the first prompt here).
    prefilled.clear()
    diverged = stories_engine.completions.create(prompt=[*prompt_ids, 99], temperature=0, max_tokens=8, return_token_ids=True)
    assert prefilled == [1]
    stories_engine.reset_chat()
    prefilled.clear()
    fresh = stories_engine.completions.create(prompt=turn2, temperature=0, max_tokens=24, return_token_ids=True)
    assert prefilled == [len(turn2)]
    assert reused.choices[0].token_ids == fresh.choices[0].token_ids
    stories_engine.reset_chat()
    fresh_diverged = stories_engine.completions.create(prompt=[*prompt_ids, 99], temperature=0, max_tokens=8, return_token_ids=True)
    assert diverged.choices[0].token_ids == fresh_diverged.choices[0].token_ids
    wait_idle(stories_engine)


@pytest.mark.slow
def test_async_engine_concurrent_requests_and_cancellation():
    prompts = [PROMPT, "Lily and Tom", "The cat sat", "One day"]
    engine = AsyncSphereAaeEngine(str(STORIES), quantization="q0f32", overrides="max_batch_size=2;context_window_size=256")
    try:
        assert engine.config["max_batch_size"] == 2 and engine.config["context_window_size"] == 256

        async def one(prompt):
            r = await engine.completions.create(prompt=prompt, temperature=0, max_tokens=40)
            return r.choices[0].text

        async def streamed(prompt):
            stream = await engine.chat.completions.create(messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=40, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        async def main():
            alone = [await one(p) for p in prompts]
            together = await asyncio.gather(*(one(p) for p in prompts), *(streamed(p) for p in prompts))
            # Four requests on two batch slots: queued, batched, and none sees another's KV.
            assert list(together) == alone + alone
            assert alone[0] == REFERENCE_CONTINUATION

            stream = await engine.completions.create(prompt=PROMPT, max_tokens=200, ignore_eos=True, stream=True)
            async for _ in stream:
                break
            await stream.aclose()
            task = asyncio.ensure_future(one(PROMPT))  # a non-streaming request whose caller gives up
            await asyncio.sleep(0.01)
            task.cancel()
            for _ in range(500):
                if engine.active_sequences == 0:
                    break
                await asyncio.sleep(0.02)
            assert engine.active_sequences == 0

        asyncio.run(main())
    finally:
        engine.terminate()
    with pytest.raises(RuntimeError, match="terminated"):
        asyncio.run(engine.completions.create(prompt=PROMPT))


@pytest.mark.slow
def test_bench_measures_both_engines_on_the_same_tokens():
    import json

    from sphere_aae.bench import format_bench, run_bench

    r = run_bench(str(STORIES), quantization="q0f32", prompt=PROMPT, max_tokens=40,
                  against=["transformers", "llama.cpp"], contexts=[100], streams=2, structured=True, repeat=2)
    assert r["repeat"] == 2 and "best of 2 runs" in format_bench(r)
    assert r["aae"]["text"] == REFERENCE_CONTINUATION == r["transformers"]["text"]
    for side in ("aae", "transformers"):
        assert r[side]["completion_tokens"] == 40 and r[side]["prompt_tokens"] == 5
        for key in ("load_s", "ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_mb"):
            assert r[side][key] > 0, (side, key)
        (ctx,) = r[side]["contexts"]  # the same 100 ids of context on both sides, the same greedy text
        assert ctx["context"] == 100 and ctx["prompt_tokens"] == 100 and ctx["decode_tokens_per_s"] > 0
    assert r["aae"]["contexts"][0]["text"] == r["transformers"]["contexts"][0]["text"]
    ratios = r["ratios"]["transformers"]
    assert ratios["prompt"]["decode_tokens_per_s"] == r["aae"]["decode_tokens_per_s"] / r["transformers"]["decode_tokens_per_s"]
    assert set(ratios) == {"prompt", "100"}
    # stories260K is a safetensors folder: llama.cpp (GGUF only) is refused with the reason, the
    # rest of the run still reports
    assert r["llama.cpp"] is None and "GGUF" in r["llama.cpp_error"]
    assert r["machine"]["vcpus"] >= 1 and r["machine"]["cpu"]
    st = r["aae"]["streams"]
    assert st["streams"] == 2 and st["total_tokens_per_s"] > 0 and st["speedup"] == st["total_tokens_per_s"] / st["one_stream_tokens_per_s"]
    report = format_bench(r)
    assert "time to first token" in report and "agree on the first 24 words" in report
    assert "with 100 tokens of context" in report and "AAE / transformers" in report and "llama.cpp not run" in report
    assert "2 concurrent streams" in report
    so = r["aae"]["structured"]  # the grammar's cost per token, against the decode step
    assert so["tokens"] > 1 and 0 < so["grammar_ms_per_token"] and so["share_of_step"] == so["grammar_ms_per_token"] / so["decode_ms_per_token"]
    assert "the grammar costs" in report
    json.dumps(r)  # the CLI's --json output


def test_runtime_processes_keep_torch_out() -> None:
    """chat / serve / bench's worker keep PyTorch out of the process (tvm_ffi would import it,
    ~250 MB of memory); code that needs it (.bin checkpoints) still gets it."""
    import subprocess
    import sys

    code = (
        "import sys, sphere_aae\n"
        "sphere_aae.keep_torch_out()\n"
        "import tvm\n"
        "from sphere_aae.engine import SphereAaeEngine\n"
        "assert sys.modules['torch'] is None, 'torch was imported'\n"
        "print(sphere_aae.import_torch().__name__)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "torch", r.stderr[-2000:]


def test_bench_keeps_the_best_of_repeated_measurements():
    from sphere_aae.bench import _best_of

    runs = [{"ttft_s": 0.2, "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 50.0, "text": "a"},
            {"ttft_s": 0.1, "prefill_tokens_per_s": 90.0, "decode_tokens_per_s": 60.0, "text": "a"},
            {"ttft_s": 0.3, "prefill_tokens_per_s": 120.0, "decode_tokens_per_s": None, "text": "a"}]
    assert _best_of(runs) == {"ttft_s": 0.1, "prefill_tokens_per_s": 120.0, "decode_tokens_per_s": 60.0, "text": "a"}

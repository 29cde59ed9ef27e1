"""Named conversation templates (`gen_config --conv-template`) and `--tensor-parallel-shards`.

Templates are rendered with the engine's own ChatTemplate (the jinja environment that serves
requests), so what is asserted here is what the engine will put in front of the model:
- our `chatml` against the real SmolLM2 model's own template, through gen_config'd model folders;
- every named template against the exact text of its model's format for one conversation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sphere_aae import artifact, conv_templates
from sphere_aae.template import ChatTemplate
from sphere_aae.tokenizer import TextTokenizer
from sphere_aae.gen_config import gen_config
from sphere_aae.protocol import RequestError
from sphere_aae.quantization import get_scheme

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a colour."},
]
CONV = [SYSTEM, *TURNS]

LLAMA_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}
CHATML = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
)
GEMMA_TURNS = (
    "<bos><start_of_turn>user\n{first}Hi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    "<start_of_turn>user\nName a colour.<end_of_turn>\n"
)

# Llama 3 and 3.1 render a conversation without tools alike.
EXPECTED_LLAMA3 = ({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, CONV,
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>")

# name -> (special tokens of the model, messages, prompt with add_generation_prompt, without it).
# The strings are the formats' facts: what each model's own (HF) template renders.
EXPECTED: dict[str, tuple[dict[str, str], list[dict[str, str]], str, str]] = {
    "chatml": ({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, CONV,
               CHATML + "<|im_start|>assistant\n", CHATML),
    # Llama 2's template ignores add_generation_prompt: a user turn already ends in [/INST].
    "llama-2": (LLAMA_TOKENS, CONV,
                "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Name a colour. [/INST]",
                "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Name a colour. [/INST]"),
    "llama-3": EXPECTED_LLAMA3,
    "phi-2": ({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}, CONV,
              "Be brief.\nInstruct: Hi\nOutput: Hello!\nInstruct: Name a colour.\nOutput:",
              "Be brief.\nInstruct: Hi\nOutput: Hello!\nInstruct: Name a colour.\n"),
    # Phi-3.5: without a generation prompt the text ends with EOS.
    "phi-3": ({"bos_token": "<s>", "eos_token": "<|endoftext|>"}, CONV,
              "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
              "<|user|>\nName a colour.<|end|>\n<|assistant|>\n",
              "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
              "<|user|>\nName a colour.<|end|>\n<|endoftext|>"),
    # Gemma 2 has no system role (see test_system_message_handling); Gemma 3 folds it in.
    "gemma": ({"bos_token": "<bos>", "eos_token": "<eos>"}, TURNS,
              GEMMA_TURNS.format(first="") + "<start_of_turn>model\n", GEMMA_TURNS.format(first="")),
    "gemma3": ({"bos_token": "<bos>", "eos_token": "<eos>"}, CONV,
               GEMMA_TURNS.format(first="Be brief.\n\n") + "<start_of_turn>model\n", GEMMA_TURNS.format(first="Be brief.\n\n")),
    "qwen2": ({"bos_token": "", "eos_token": "<|im_end|>"}, CONV, CHATML + "<|im_start|>assistant\n", CHATML),
    # Mistral v0.2: one BOS, ' [INST] ' turns, the system message folded into the first user turn.
    "mistral": (LLAMA_TOKENS, CONV,
                "<s> [INST] Be brief.\n\nHi [/INST] Hello!</s> [INST] Name a colour. [/INST]",
                "<s> [INST] Be brief.\n\nHi [/INST] Hello!</s> [INST] Name a colour. [/INST]"),
    "chatglm3": ({"bos_token": "", "eos_token": "</s>"}, CONV,
                 "[gMASK]sop<|system|>\n Be brief.<|user|>\n Hi<|assistant|>\n Hello!<|user|>\n Name a colour.<|assistant|>",
                 "[gMASK]sop<|system|>\n Be brief.<|user|>\n Hi<|assistant|>\n Hello!<|user|>\n Name a colour."),
    # The function-calling templates render a conversation without tools as their base formats
    # (ChatML, Llama 3) do; tools, calls and results are tests/fixtures/tool_cases.json's.
    "hermes": ({"bos_token": "", "eos_token": "<|im_end|>"}, CONV, CHATML + "<|im_start|>assistant\n", CHATML),
    "llama-3.1": EXPECTED_LLAMA3,
    # MiniCPM's template ignores add_generation_prompt: a user turn already ends in <AI>.
    "minicpm": (LLAMA_TOKENS, CONV,
                "Be brief.<用户>Hi<AI>Hello!<用户>Name a colour.<AI>",
                "Be brief.<用户>Hi<AI>Hello!<用户>Name a colour.<AI>"),
}

REQUIRED_NAMES = ["chatml", "llama-2", "llama-3", "phi-2", "phi-3", "gemma", "qwen2", "mistral", "chatglm3", "minicpm"]
TP_MESSAGE = ("this model was configured with tensor_parallel_shards=4, but AAE libraries run on one device; "
              "regenerate it with `sphere_aae gen_config --tensor-parallel-shards 1`")


def render(name: str, messages: list[dict[str, str]], special: dict[str, str], add_generation_prompt: bool = True) -> str:
    return ChatTemplate(conv_templates.get(name).template, special).render(messages, add_generation_prompt=add_generation_prompt)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sphere_aae", *args], capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------
# The data file and the CLI listing


def test_every_named_template_has_its_expected_text() -> None:
    assert set(REQUIRED_NAMES) <= set(conv_templates.names())
    assert set(EXPECTED) == set(conv_templates.names())  # no template goes untested


def test_list_conv_templates_needs_no_other_argument() -> None:
    r = run_cli("gen_config", "--list-conv-templates")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == conv_templates.names()
    r = run_cli("gen_config")  # without the listing flag the usual arguments are still required
    assert r.returncode == 2 and "required: source, --quantization/-q, -o/--output" in r.stderr


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown conversation template 'vicuna'; known: chatml, llama-2, llama-3"):
        conv_templates.get("vicuna")
    r = run_cli("gen_config", str(tmp_path), "-q", "q0f32", "-o", str(tmp_path / "out"), "--conv-template", "vicuna")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sphere_aae: error: unknown conversation template 'vicuna'; known: chatml")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Each named template renders its model's format


@pytest.mark.parametrize("name", list(EXPECTED))
def test_named_template_renders_its_format(name: str) -> None:
    special, messages, with_prompt, without_prompt = EXPECTED[name]
    assert render(name, messages, special) == with_prompt
    assert render(name, messages, special, add_generation_prompt=False) == without_prompt


def test_system_message_handling() -> None:
    gemma = EXPECTED["gemma"][0]
    with pytest.raises(RequestError, match="System role not supported"):
        render("gemma", CONV, gemma)
    # Defaults where the model's template has one: Qwen2 adds its system message, ChatML none.
    assert render("qwen2", TURNS, {}).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi")
    assert render("chatml", TURNS, {}).startswith("<|im_start|>user\nHi")
    # Without a system message, Llama 2 and Mistral have no <<SYS>> / folded prefix.
    assert render("llama-2", TURNS, LLAMA_TOKENS).startswith("<s>[INST] Hi [/INST] Hello! </s>")
    assert render("mistral", TURNS, LLAMA_TOKENS).startswith("<s> [INST] Hi [/INST] Hello!</s>")
    assert render("gemma3", TURNS, gemma) == EXPECTED["gemma"][2]
    # Phi-3.5 drops an empty system message.
    assert render("phi-3", [{"role": "system", "content": ""}, TURNS[0]], {}).startswith("<|user|>\nHi<|end|>")


@pytest.mark.parametrize("name, error", [
    ("llama-2", "Conversation roles must alternate user/assistant/user/assistant/..."),
    ("gemma", "Conversation roles must alternate user/assistant/user/assistant/..."),
    ("mistral", "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."),
])
def test_roles_must_alternate_where_the_model_says_so(name: str, error: str) -> None:
    with pytest.raises(RequestError) as info:
        render(name, [TURNS[0], TURNS[0]], LLAMA_TOKENS)
    assert str(info.value) == f"The model's chat template rejected the messages: {error}" and info.value.status_code == 400


# ---------------------------------------------------------------------------------------------
# gen_config on the real SmolLM2: our chatml against the model's own template


@pytest.fixture(scope="module")
def smollm2_source(smollm2_gguf: Path):
    from sphere_aae.loaders import load_source

    return load_source(smollm2_gguf)


def _folder(source, out: Path, **kw) -> tuple[dict, ChatTemplate]:
    """gen_config into `out`, then the template exactly as the engine builds it from the folder."""
    config = gen_config(source, get_scheme("q0f32"), out, model_id="smollm2", **kw)
    assert artifact.read_chat_config(out) == json.loads((out / artifact.CHAT_CONFIG).read_text())
    tok = TextTokenizer(out, config)
    return config, ChatTemplate(config["chat_template"], tok.special_tokens)


SMOLLM2_CONVERSATIONS = [
    [SYSTEM, TURNS[0]],
    CONV,
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Where is the treasure?"},
     {"role": "assistant", "content": "Arr, under the palm tree."}, {"role": "user", "content": "Which one?"},
     {"role": "assistant", "content": "  The tallest.\n"}],
    [{"role": "system", "content": "Répondez en français. 日本語も"}, {"role": "user", "content": "multi\nline\n\ntext"}],
]
SMOLLM2_DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_chatml_renders_exactly_what_smollm2_renders(smollm2_source, tmp_path: Path) -> None:
    own_config, own = _folder(smollm2_source, tmp_path / "own")
    named_config, chatml = _folder(smollm2_source, tmp_path / "chatml", conv_template="chatml")
    assert own_config["conv_template"] is None and named_config["conv_template"] == "chatml"
    assert own_config["chat_template"] != named_config["chat_template"]  # really two templates
    assert named_config["chat_template"] == conv_templates.get("chatml").template
    for messages in SMOLLM2_CONVERSATIONS:
        for gen in (True, False):
            assert chatml.render(messages, add_generation_prompt=gen) == own.render(messages, add_generation_prompt=gen), messages
    # Without a system message SmolLM2 adds its own default one; ChatML itself has none.
    for gen in (True, False):
        assert own.render(TURNS, add_generation_prompt=gen) == SMOLLM2_DEFAULT_SYSTEM + chatml.render(TURNS, add_generation_prompt=gen)
    assert named_config["eos_token_ids"] == own_config["eos_token_ids"]  # <|im_end|> is SmolLM2's EOS already


def test_named_template_stop_tokens_join_eos(smollm2_source, tmp_path: Path) -> None:
    own = gen_config(smollm2_source, get_scheme("q0f32"), tmp_path / "own", model_id="m")
    qwen = gen_config(smollm2_source, get_scheme("q0f32"), tmp_path / "qwen2", model_id="m", conv_template="qwen2")
    end_of_text = 0  # SmolLM2's <|endoftext|>: a Qwen2 turn may end with it
    assert end_of_text not in own["eos_token_ids"] and qwen["eos_token_ids"] == [*own["eos_token_ids"], end_of_text]
    llama3 = gen_config(smollm2_source, get_scheme("q0f32"), tmp_path / "llama3", model_id="m", conv_template="llama-3")
    assert llama3["eos_token_ids"] == own["eos_token_ids"]  # no <|eot_id|> in this vocabulary: nothing added
    with pytest.raises(ValueError, match="unknown conversation template 'nope'"):
        gen_config(smollm2_source, get_scheme("q0f32"), tmp_path / "bad", model_id="m", conv_template="nope")
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------
# --tensor-parallel-shards


def test_tensor_parallel_shards_recorded_and_refused_at_load(smollm2_source, tmp_path: Path) -> None:
    from sphere_aae.engine import SphereAaeEngine

    one = gen_config(smollm2_source, get_scheme("q0f32"), tmp_path / "one", model_id="m")
    assert one["tensor_parallel_shards"] == 1 and artifact.read_chat_config(tmp_path / "one")["tensor_parallel_shards"] == 1
    four = gen_config(smollm2_source, get_scheme("q0f32"), tmp_path / "four", model_id="m", tensor_parallel_shards=4)
    assert four["tensor_parallel_shards"] == 4
    path = tmp_path / "four" / artifact.CHAT_CONFIG
    with pytest.raises(artifact.ArtifactError) as info:
        artifact.read_chat_config(tmp_path / "four")
    assert str(info.value) == f"{path}: {TP_MESSAGE}"  # the same text as web/test/artifact.test.ts
    # The engine's load goes through the same check, before any compile or weight read.
    with pytest.raises(artifact.ArtifactError, match="tensor_parallel_shards=4, but AAE libraries run on one device"):
        SphereAaeEngine(str(tmp_path / "four"))
    # A config written before the field existed loads as one shard.
    cfg = json.loads((tmp_path / "one" / artifact.CHAT_CONFIG).read_text())
    del cfg["tensor_parallel_shards"], cfg["conv_template"]
    artifact.atomic_write_json(tmp_path / "one" / artifact.CHAT_CONFIG, cfg)
    assert "tensor_parallel_shards" not in artifact.read_chat_config(tmp_path / "one")
    for bad in (0, None, 1.5, "2"):  # present but not a shard count: malformed, as in the browser
        artifact.atomic_write_json(tmp_path / "one" / artifact.CHAT_CONFIG, {**cfg, "tensor_parallel_shards": bad})
        with pytest.raises(artifact.ArtifactError, match="tensor_parallel_shards must be an integer >= 1"):
            artifact.read_chat_config(tmp_path / "one")
    for bad in (0, True, "2"):
        with pytest.raises(ValueError, match="tensor_parallel_shards must be an integer >= 1"):
            gen_config(smollm2_source, get_scheme("q0f32"), tmp_path / "bad", model_id="m", tensor_parallel_shards=bad)


def test_tensor_parallel_shards_cli(smollm2_gguf: Path, tmp_path: Path) -> None:
    r = run_cli("gen_config", str(smollm2_gguf), "-q", "q0f32", "-o", str(tmp_path / "out"), "--tensor-parallel-shards", "0")
    assert r.returncode == 2 and "--tensor-parallel-shards: expected an integer >= 1, got '0'" in r.stderr
    r = run_cli("gen_config", str(smollm2_gguf), "-q", "q0f32", "-o", str(tmp_path / "out"), "--tensor-parallel-shards", "4",
                "--conv-template", "chatml")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "out" / artifact.CHAT_CONFIG).read_text())
    assert cfg["tensor_parallel_shards"] == 4 and cfg["conv_template"] == "chatml"
    assert "AAE libraries run on one device" in r.stderr  # gen_config says so at once

"""The quick-start flow, verbatim, as a user types it: gen_config with a named conversation
template, convert_weight, compile, then chat, each a separate `sphere_aae` process, on a tiny
random-weight Phi model (tests/tiny_families.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tiny_families import make_family

from sphere_aae import artifact, conv_templates
from sphere_aae.template import ChatTemplate
from sphere_aae.tokenizer import TextTokenizer

QUESTION = "What is the colour of the sky?"


def sphere_aae(*args: str, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "sphere_aae", *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"sphere_aae {' '.join(args)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_quickstart_gen_config_convert_compile_chat(tiny_models_root: Path, tmp_path: Path) -> None:
    src = str(make_family(tiny_models_root, "phi"))
    out = tmp_path / "phi-q0f16"
    sphere_aae("gen_config", src, "--quantization", "q0f16", "--conv-template", "phi-2", "-o", str(out))
    sphere_aae("convert_weight", src, "--quantization", "q0f16", "-o", str(out))
    sphere_aae("compile", str(out), "--device", "cpu")

    config = artifact.read_chat_config(out)
    assert config["conv_template"] == "phi-2" and config["chat_template"] == conv_templates.get("phi-2").template
    assert (out / artifact.model_lib_name(config["model_id"], "cpu")).is_file()

    # Piped stdin: the chat reads lines with input(), so commands and the question go in as text.
    script = f"/set temperature=0;max_gen_len=12\n{QUESTION}\n/stats\n/exit\n"
    r = sphere_aae("chat", str(out), stdin=script)
    after = r.stdout.split("Settings: temperature=0.0, max_gen_len=12\n>>> ", 1)
    assert len(after) == 2, r.stdout[-3000:]
    reply, _, rest = after[1].partition("\n>>> ")
    assert reply.strip(), r.stdout[-3000:]  # the model answered (random weights: any text)
    assert "reusing cached library" in r.stdout + r.stderr  # chat runs what compile built
    stats = re.search(r"prefill: [\d.]+ tok/s \((\d+) tokens\), decode: [\d.]+ tok/s \((\d+) tokens\)", rest)
    assert stats, r.stdout[-3000:]

    # The prompt the engine fed the model is the phi-2 rendering of the question, token for token.
    tok = TextTokenizer(out, config)
    prompt = ChatTemplate(config["chat_template"], tok.special_tokens).render([{"role": "user", "content": QUESTION}])
    assert prompt == f"Instruct: {QUESTION}\nOutput:"
    assert int(stats.group(1)) == len(tok.encode(prompt)) > len(tok.encode(QUESTION))
    assert 0 < int(stats.group(2)) <= 12
    assert json.loads((out / artifact.CHAT_CONFIG).read_text())["tensor_parallel_shards"] == 1

"""The terminal chat: /set parsing and input rules (fast), and real sessions in a pseudo-terminal
driving `sphere_aae chat` on real models (slow)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time

import pytest
from conftest import STORIES

from sphere_aae.chat_cli import ChatSession, ChatSettings, parse_set_command, read_message

# ---------------------------------------------------------------------------------------------
# Pure logic


def test_set_command_parses_and_accumulates():
    s = parse_set_command("temperature=0.5;max_gen_len=100;stop=end,stop", ChatSettings())
    assert (s.temperature, s.max_gen_len, s.stop) == (0.5, 100, ["end", "stop"])
    s = parse_set_command(" top_p = 0.9 ; seed=7 ", s)
    assert (s.temperature, s.top_p, s.seed) == (0.5, 0.9, 7)
    assert s.request_args() == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 100, "stop": ["end", "stop"], "seed": 7}
    assert parse_set_command("stop=", s).stop == []


@pytest.mark.parametrize(
    "spec, words",
    [
        ("temperature=5", ["temperature", "[0, 2]"]),
        ("temperature=warm", ["temperature", "number"]),
        ("max_gen_len=0", ["max_gen_len"]),
        ("max_gen_len=ten", ["max_gen_len", "integer"]),
        ("colour=red", ["unknown setting 'colour'"]),
        ("temperature", ["key=value"]),
    ],
)
def test_bad_set_commands(spec, words):
    with pytest.raises(ValueError) as info:
        parse_set_command(spec, ChatSettings())
    for word in words:
        assert word in str(info.value)


def test_read_message_continuation_rules():
    def lines(*items):
        """A reader like input(): the given lines, then EOFError."""
        it = iter(items)

        def read(prompt: str) -> str:
            try:
                return next(it)
            except StopIteration:
                raise EOFError from None

        return read

    assert read_message(lines("one line")) == "one line"
    assert read_message(lines("first\\", "second\x1b", "third")) == "first\nsecond\nthird"
    with pytest.raises(EOFError):
        read_message(lines())


def test_session_commands_without_generation(capsys):
    # Commands never reach the model, so no engine is needed for them.
    session = ChatSession(engine=None, system_prompt="Be brief.")  # type: ignore[arg-type]
    assert session.handle("/help")
    assert "/stats" in capsys.readouterr().out
    session.handle("/stats")
    assert "No statistics yet" in capsys.readouterr().out
    session.handle("/set temperature=0.2")
    assert "temperature=0.2" in capsys.readouterr().out
    session.messages.append({"role": "user", "content": "x"})
    session.handle("/reset")
    assert session.messages == [{"role": "system", "content": "Be brief."}]
    session.handle("/bogus")
    assert "Unknown command /bogus" in capsys.readouterr().out
    assert session.handle("   ")
    assert not session.handle("/exit") and not session.handle("/quit")


# ---------------------------------------------------------------------------------------------
# Real sessions in a pseudo-terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


class Terminal:
    """A child process on a pseudo-terminal, read with expect-style waits."""

    def __init__(self, argv: list[str]) -> None:
        env = {**os.environ, "TERM": "xterm", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            # A test run started in the background (`cmd &`) inherits SIGINT ignored, and Python
            # then never installs its Ctrl-C handler: give the chat the default a terminal gives.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execvpe(argv[0], argv, env)
        self.seen = ""  # everything read, escape codes removed
        self.pos = 0  # expect() searches from here

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the child exited
                data = b""
            self.seen += ANSI.sub("", data.decode("utf-8", errors="replace"))

    def expect(self, pattern: str, timeout: float) -> re.Match:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.seen, self.pos)
            if match:
                self.pos = match.end()
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r}; the terminal shows:\n{self.seen[-3000:]}")
            self._read(0.1)

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r")

    def ask(self, text: str, timeout: float = 300) -> None:
        """Wait for the input prompt, then type a line (typing ahead of the prompt races readline)."""
        self.expect(r"(^|\n)>>> ", timeout)
        self.line(text)

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            self._read(0.1)
        raise AssertionError(f"the chat did not exit; it shows:\n{self.seen[-2000:]}")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


PROMPT_RE = r"\n>>> "


@pytest.mark.slow
def test_chat_session_on_smollm2():
    term = Terminal([sys.executable, "-m", "sphere_aae", "chat", "SmolLM2-135M-Instruct"])
    try:
        term.expect(r"Type /help", timeout=600)
        term.ask("/set temperature=0;max_gen_len=12")
        term.expect(r"Settings: temperature=0\.0, max_gen_len=12", timeout=10)
        term.ask("What is the capital of France?")
        reply = term.expect(r"France\?\n(.*?)(?=\n>>> )", timeout=300).group(1)
        assert "Paris" in reply
        term.ask("/stats")
        m = term.expect(r"prefill: ([\d.]+) tok/s \((\d+) tokens\), decode: ([\d.]+) tok/s \((\d+) tokens\)", timeout=10)
        assert float(m.group(1)) > 0 and int(m.group(2)) > 20 and 0 < int(m.group(4)) <= 12
        term.ask("/set temperature=9")
        term.expect(r"Error: .*temperature.*\[0, 2\]", timeout=10)
        term.ask("/reset")
        term.expect(r"Conversation reset\.", timeout=10)
        # Ctrl-C stops a long reply, and the chat goes on.
        term.ask("/set max_gen_len=500")
        term.expect(r"max_gen_len=500", timeout=10)
        term.ask("Tell me a very long story about a dragon.")
        term.expect(r"dragon\.\n(?!>>>)\S", timeout=300)  # the reply has started
        term.send("\x03")
        term.expect(r"\[reply stopped\]", timeout=30)
        term.ask("/stats")  # a stopped reply has no finished statistics
        term.expect(r"No statistics yet", timeout=10)
        term.ask("/exit")
        assert term.wait_exit(60) == 0
    finally:
        term.kill()


@pytest.mark.slow
def test_multiline_input_with_escape_enter():
    from sphere_aae.tokenizer import TextTokenizer

    tok = TextTokenizer(STORIES, {"bos_token_id": 1, "add_bos_token": True, "eos_token_ids": [2]})
    code = f"from sphere_aae.chat_cli import run_chat; run_chat({str(STORIES)!r}, quantization='q0f32')"
    term = Terminal([sys.executable, "-c", code])
    try:
        term.expect(r"Type /help", timeout=600)
        term.ask("/set temperature=0;max_gen_len=20")
        term.expect(r"Settings:", timeout=10)
        term.expect(PROMPT_RE, timeout=10)
        term.send("Once upon\x1b\ra time\r")  # Escape+Enter: a new line inside the same message
        term.ask("/stats")
        m = term.expect(r"prefill: .*?\((\d+) tokens\)", timeout=60)
        assert int(m.group(1)) == len(tok.encode("Once upon\na time"))  # one message with both lines
        term.ask("/reset")
        term.ask("Once upon a time\\")  # the backslash rule
        term.line("there was")
        term.ask("/stats")
        m = term.expect(r"prefill: .*?\((\d+) tokens\)", timeout=60)
        assert int(m.group(1)) == len(tok.encode("Once upon a time\nthere was"))
        term.expect(PROMPT_RE, timeout=10)
        term.send("\x04")  # Ctrl-D leaves
        assert term.wait_exit(60) == 0
    finally:
        term.kill()

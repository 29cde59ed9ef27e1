"""Terminal chat with a compiled model (`sphere_aae chat MODEL`).

Replies stream as they are generated. Commands:

    /help                      this list
    /exit (or /quit, Ctrl-D)   leave
    /stats                     prefill and decode speed (tokens/s) of the last reply
    /reset                     forget the conversation (keeps the system prompt)
    /set k=v;k=v               generation settings, e.g. /set temperature=0.5;max_gen_len=100;stop=end,stop
                               keys: temperature, top_p, max_gen_len, stop (comma-separated; empty clears),
                               presence_penalty, frequency_penalty, repetition_penalty, seed

Multi-line input: Escape then Enter (Alt+Enter in most terminals) starts a new line inside the
message, Enter sends it. Where the terminal line editor (GNU readline) is not in use, e.g. with
input piped in, a line ending in a backslash continues onto the next line instead. Ctrl-C during a
reply stops that reply (the partial reply stays in the conversation); Ctrl-C at the prompt clears
the line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from .engine import DEFAULT_MODEL, SphereAaeEngine
from .protocol import CompletionUsage, RequestError, parse_chat_request

HELP = """Commands:
  /help                      show this help
  /exit, /quit               leave (Ctrl-D too)
  /stats                     prefill and decode tokens/s of the last reply
  /reset                     start a new conversation
  /set k=v;k=v               change generation settings, e.g.
                             /set temperature=0.5;max_gen_len=100;stop=end,stop
                             keys: temperature, top_p, max_gen_len, stop, presence_penalty,
                                   frequency_penalty, repetition_penalty, seed
Escape+Enter (or a line ending in '\\') continues the message on a new line; Enter sends it.
Ctrl-C stops a reply."""

PROMPT = ">>> "
CONTINUATION_PROMPT = "... "


@dataclass
class ChatSettings:
    """Generation settings of the chat; None leaves the model's default."""

    temperature: float | None = None
    top_p: float | None = None
    max_gen_len: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def request_args(self) -> dict[str, Any]:
        """Keyword arguments for `chat.completions.create`."""
        args: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_gen_len,
            "stop": self.stop or None,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }
        return {k: v for k, v in args.items() if v is not None}


_FLOAT_KEYS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
_INT_KEYS = ("max_gen_len", "seed")


def parse_set_command(spec: str, current: ChatSettings) -> ChatSettings:
    """Apply `temperature=0.5;max_gen_len=100;stop=end,stop` to a copy of `current`.

    Values are checked with the same rules as API requests, so /set refuses what a request would."""
    values: dict[str, Any] = {}
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep:
            raise ValueError(f"expected key=value, got {part!r}")
        if key == "stop":
            values["stop"] = [s for s in raw.split(",") if s]
        elif key in _FLOAT_KEYS:
            try:
                values[key] = float(raw)
            except ValueError:
                raise ValueError(f"{key} must be a number, got {raw!r}") from None
        elif key in _INT_KEYS:
            try:
                values[key] = int(raw)
            except ValueError:
                raise ValueError(f"{key} must be an integer, got {raw!r}") from None
        else:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(('stop', *_FLOAT_KEYS, *_INT_KEYS))}")
    updated = ChatSettings(**{**current.__dict__, **values})
    try:
        parse_chat_request({"messages": [{"role": "user", "content": "check"}], **updated.request_args()})
    except RequestError as exc:
        raise ValueError(exc.message.replace("'max_tokens'", "'max_gen_len'")) from None
    return updated


def read_message(read_line: Callable[[str], str] = input) -> str:
    """Read one user message, possibly several lines (see the module docstring). EOFError at end."""
    lines: list[str] = []
    prompt = PROMPT
    while True:
        line = read_line(prompt)
        # Without readline, Escape+Enter arrives as the line's last character.
        if line.endswith("\x1b") or line.endswith("\\"):
            lines.append(line[:-1])
            prompt = CONTINUATION_PROMPT
            continue
        lines.append(line)
        return "\n".join(lines)


def _enable_line_editing() -> None:
    """GNU readline: history and arrow keys for input(), and Escape+Enter inserting a newline."""
    try:
        import readline
    except ImportError:  # not on every platform; the backslash rule still works
        return
    for key in (r"\e\C-m", r"\e\C-j"):
        readline.parse_and_bind(f'"{key}": "\\C-v\\C-j"')


class ChatSession:
    """The conversation state and command handling of one terminal chat."""

    def __init__(self, engine: SphereAaeEngine, *, system_prompt: str | None = None, out: TextIO | None = None) -> None:
        self.engine = engine
        self.system_prompt = system_prompt
        self.out = out if out is not None else sys.stdout
        self.settings = ChatSettings()
        self.messages: list[dict[str, str]] = []
        self.last_usage: CompletionUsage | None = None
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def handle(self, text: str) -> bool:
        """Run one input (command or message); False means leave."""
        stripped = text.strip()
        if not stripped:
            return True
        if stripped.startswith("/"):
            return self.command(stripped)
        self.reply(text)
        return True

    def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            self.reset()
            self.last_usage = None
            self.say("Conversation reset.")
        elif name == "/stats":
            self.say(self.stats_text())
        elif name == "/set":
            try:
                self.settings = parse_set_command(arg, self.settings)
            except ValueError as exc:
                self.say(f"Error: {exc}")
            else:
                shown = ", ".join(f"{k}={v!r}" for k, v in self.settings.request_args().items()) or "model defaults"
                self.say(f"Settings: {shown.replace('max_tokens', 'max_gen_len')}")
        else:
            self.say(f"Unknown command {name}. Type /help for the list.")
        return True

    def stats_text(self) -> str:
        u = self.last_usage
        if u is None:
            return "No statistics yet: no reply has finished since the start or the last /reset."

        def rate(v: float | None) -> str:
            return f"{v:.1f} tok/s" if v is not None else "n/a"

        return (
            f"prefill: {rate(u.prefill_tokens_per_s)} ({u.prompt_tokens} tokens), "
            f"decode: {rate(u.decode_tokens_per_s)} ({u.completion_tokens} tokens)"
        )

    def reply(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        try:
            stream = self.engine.chat.completions.create(
                messages=self.messages, stream=True, stream_options={"include_usage": True}, **self.settings.request_args()
            )
        except RequestError as exc:
            self.messages.pop()
            hint = " Use /reset to start a new conversation." if exc.code == "context_length_exceeded" else ""
            self.say(f"Error: {exc.message}{hint}")
            return
        parts: list[str] = []
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    self.last_usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        self.out.write(choice.delta.content)
                        self.out.flush()
            self.out.write("\n")
        except KeyboardInterrupt:
            stream.close()  # cancels the generation and frees its KV sequence
            self.out.write("\n[reply stopped]\n")
        self.out.flush()
        self.messages.append({"role": "assistant", "content": "".join(parts)})


def run_chat(
    model: str = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    quantization: str | None = None,
    model_lib: str | Path | None = None,
    overrides: str | Mapping[str, Any] | None = None,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> None:
    """Interactive chat on the terminal until /exit or Ctrl-D."""
    print(f"Loading {model} ...", flush=True)
    engine = SphereAaeEngine(model, device=device, quantization=quantization, model_lib=model_lib, overrides=overrides,
                             chat_template=chat_template)
    try:
        session = ChatSession(engine, system_prompt=system_prompt)
        print(f"Chatting with {engine.model_id}. Type /help for commands, /exit to leave.", flush=True)
        if sys.stdin.isatty():
            _enable_line_editing()
        while True:
            try:
                text = read_message()
            except KeyboardInterrupt:
                print("^C", flush=True)  # clear the line, keep chatting
                continue
            except EOFError:
                print(flush=True)
                break
            if not session.handle(text):
                break
    finally:
        engine.terminate()

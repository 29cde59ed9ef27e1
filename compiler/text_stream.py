"""Generated text as a client sees it: `StopStringMatcher` cuts text before a stop string and
`TextStream` runs a choice's tokens through the detokenizer and the matcher. Twin of
web/src/text_stream.ts."""

from __future__ import annotations

from typing import Sequence

from .tokenizer import IncrementalDetokenizer, TextTokenizer


class StopStringMatcher:
    """Cuts generated text exactly before the first stop string.

    While streaming, text that might be the start of a stop string is held back until the next
    delta proves it is not, so a client never sees part of a stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[: min(hits)], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


class TextStream:
    """One choice's text: token ids in, text deltas out, cut before the first stop string."""

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: Sequence[int], stops: Sequence[str]) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.stopper = StopStringMatcher(stops)

    def push(self, token_id: int) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        text, hit = self.stopper.feed(self.detok.push(token_id))
        return text, hit

    def finish(self) -> tuple[str, bool]:
        """The end of generation: what the detokenizer and the matcher still hold back, and whether
        that text hit a stop string (then the held-back rest is dropped)."""
        text, hit = self.stopper.feed(self.detok.flush())
        if hit:
            return text, True
        return text + self.stopper.flush(), False

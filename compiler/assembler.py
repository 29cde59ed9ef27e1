"""Turning the scheduler's outputs into OpenAI objects: `Assembler` builds one request's chunks
(streaming) or its final object, for chat and completions alike. Twin of web/src/assembler.ts."""

from __future__ import annotations

from typing import Any, Sequence

from .protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionTokenLogprob,
    ChoiceDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionUsage,
    TopLogprob,
)
from .scheduler import Failure, Output, Request, Scheduler, TokenInfo
from .tools import RULES as TOOL_RULES, CallFormat, ToolCallParser, ToolPlan


class Assembler:
    """Builds chunks (streaming) or the final object (non-streaming) of one request."""

    def __init__(
        self, core: Scheduler, request: Request, kind: str, *, num_choices: int, prompt_tokens: int, include_usage: bool,
        echo_texts: Sequence[str] = (), n: int = 1, prompt_ids: Sequence[list[int]] | None = None,
        tool_calls: tuple[ToolPlan, CallFormat] | None = None,
    ) -> None:
        self.core = core
        self.request = request
        self.kind = kind
        self.num_choices = num_choices
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
        self.texts = [""] * num_choices
        self.finish: list[str | None] = [None] * num_choices
        self.tokens: list[list[TokenInfo]] = [[] for _ in range(num_choices)]
        # return_token_ids: the prompts' ids (None when not asked for) and each choice's ids.
        self._prompt_ids = prompt_ids
        self._prompt_ids_pending = prompt_ids is not None
        self.token_ids: list[list[int]] = [[] for _ in range(num_choices)]
        self._unsent_ids: list[list[int]] = [[] for _ in range(num_choices)]  # streams: ids no chunk carried yet
        # Function calling: each choice's text split into content and calls as it streams.
        self._tool_calls = tool_calls
        self._parsers = [self._parser(i) for i in range(num_choices)] if tool_calls is not None else None  # streams'
        self.finished = 0
        self._echo = list(echo_texts)
        self._n = n
        self._completion_tokens = 0
        self._prefill = [0, 0.0]  # tokens, seconds
        self._decode = [0, 0.0]
        self._want_logprobs = any(j.sampler.params.logprobs for j in request.jobs)

    def _parser(self, index: int) -> ToolCallParser:
        assert self._tool_calls is not None
        plan, fmt = self._tool_calls
        prefix = self.request.id.split("-", 1)[-1]
        return ToolCallParser(fmt, [f.name for f in plan.functions], f"call_{prefix}_{index}")

    def _finish_reason(self, reason: str | None, parser: ToolCallParser | None) -> str | None:
        """A choice that made calls and stopped (EOS or a stop string) finished to call them."""
        return TOOL_RULES["finish_reason"] if parser is not None and parser.calls and reason == "stop" else reason

    @property
    def done(self) -> bool:
        return self.finished == self.num_choices

    def add(self, event: object) -> Output:
        if isinstance(event, Failure):
            raise event.error
        assert isinstance(event, Output)
        i = event.index
        self.texts[i] += event.text
        self.tokens[i].extend(event.tokens)
        self.token_ids[i].extend(event.token_ids)
        if event.finish_reason is not None:
            self.finish[i] = event.finish_reason
            self.finished += 1
            self._completion_tokens += event.completion_tokens
            self._prefill[0] += event.prefill_tokens
            self._prefill[1] += event.prefill_s
            self._decode[0] += max(event.completion_tokens - 1, 0)  # the first token came from prefill
            self._decode[1] += event.decode_s
        return event

    def usage(self) -> CompletionUsage:
        return CompletionUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self._completion_tokens,
            total_tokens=self.prompt_tokens + self._completion_tokens,
            prefill_tokens_per_s=round(self._prefill[0] / self._prefill[1], 2) if self._prefill[1] > 0 else None,
            decode_tokens_per_s=round(self._decode[0] / self._decode[1], 2) if self._decode[1] > 0 else None,
        )

    # ---- logprobs

    def _chat_logprobs(self, tokens: Sequence[TokenInfo]) -> ChoiceLogprobs:
        tok = self.core.tokenizer
        content = []
        for t in tokens:
            tops = [TopLogprob(tok.token_text(i), lp, list(tok.token_bytes(i))) for i, lp in t.top_logprobs]
            content.append(ChatCompletionTokenLogprob(tok.token_text(t.token_id), t.logprob, list(tok.token_bytes(t.token_id)), tops))
        return ChoiceLogprobs(content=content)

    def _completion_logprobs(self, tokens: Sequence[TokenInfo], offset: int) -> CompletionLogprobs:
        tok = self.core.tokenizer
        out = CompletionLogprobs()
        for t in tokens:
            text = tok.token_text(t.token_id)
            out.tokens.append(text)
            out.token_logprobs.append(t.logprob)
            out.top_logprobs.append({tok.token_text(i): lp for i, lp in t.top_logprobs})
            out.text_offset.append(offset)
            offset += len(text)
        return out

    # ---- streaming (return_token_ids: request_spec.json "$token_ids")

    def _ids(self, ids: list[int]) -> list[int] | None:
        return list(ids) if self._prompt_ids is not None else None

    def _prompt_ids_field(self) -> list[int] | list[list[int]] | None:
        if self._prompt_ids is None:
            return None
        return list(self._prompt_ids[0]) if len(self._prompt_ids) == 1 else [list(p) for p in self._prompt_ids]

    def _first(self, chunk: Any) -> Any:
        """Put prompt_token_ids on the stream's first chunk."""
        if self._prompt_ids_pending:
            self._prompt_ids_pending = False
            chunk.prompt_token_ids = self._prompt_ids_field()
        return chunk

    def opening_chunks(self) -> list[Any]:
        """Chat streams start with a role-only delta per choice, as OpenAI's do."""
        if self.kind != "chat":
            return [self._first(self._completion_chunk(i, self._echo[i // self._n], None, None)) for i in range(self.num_choices) if self._echo]
        return [self._first(self._chat_chunk(i, ChoiceDelta(role="assistant", content=""), None, None)) for i in range(self.num_choices)]

    def chunks_for(self, out: Output) -> list[Any]:
        chunks: list[Any] = []
        if self.kind == "chat":
            logprobs = self._chat_logprobs(out.tokens) if out.tokens else None
            text, calls = out.text, []
            parser = self._parsers[out.index] if self._parsers is not None else None
            if parser is not None:
                text, calls = parser.push(out.text)
                if out.finish_reason is not None:
                    rest, more = parser.finish()
                    text, calls = text + rest, calls + more
            # Ids go on the next chunk sent: a content, tool-call or finish chunk.
            ids = self._unsent_ids[out.index] + out.token_ids
            if text or logprobs is not None:
                chunks.append(self._chat_chunk(out.index, ChoiceDelta(content=text), None, logprobs, self._ids(ids)))
                ids = []
            for call in calls:
                chunks.append(self._chat_chunk(out.index, ChoiceDelta(tool_calls=[call.to_dict(with_index=True)]), None, None, self._ids(ids)))
                ids = []
            if out.finish_reason is not None:
                reason = self._finish_reason(out.finish_reason, parser)
                chunks.append(self._chat_chunk(out.index, ChoiceDelta(), reason, None, self._ids(ids)))
                ids = []
            self._unsent_ids[out.index] = ids
        else:
            offset = len(self.texts[out.index]) - len(out.text)
            logprobs = self._completion_logprobs(out.tokens, offset) if self._want_logprobs else None
            chunks.append(self._completion_chunk(out.index, out.text, out.finish_reason, logprobs, self._ids(out.token_ids)))
        return [self._first(c) for c in chunks]

    def closing_chunks(self) -> list[Any]:
        if not self.include_usage:
            return []
        if self.kind == "chat":
            return [ChatCompletionChunk(self.request.id, self.request.created, self.core.model_id, [], usage=self.usage(), include_usage_field=True)]
        return [Completion(self.request.id, self.request.created, self.core.model_id, [], usage=self.usage(), include_usage_field=True)]

    def _chat_chunk(
        self, index: int, delta: ChoiceDelta, finish: str | None, logprobs: ChoiceLogprobs | None, token_ids: list[int] | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            self.request.id, self.request.created, self.core.model_id,
            [ChatCompletionChunkChoice(index, delta, finish, logprobs, token_ids)], include_usage_field=self.include_usage,
        )

    def _completion_chunk(
        self, index: int, text: str, finish: str | None, logprobs: CompletionLogprobs | None, token_ids: list[int] | None = None
    ) -> Completion:
        return Completion(
            self.request.id, self.request.created, self.core.model_id,
            [CompletionChoice(index, text, finish, logprobs, token_ids)], usage=None, include_usage_field=self.include_usage,
        )

    # ---- final object

    def _message(self, index: int) -> tuple[ChatCompletionMessage, str | None]:
        """A choice's message and finish reason."""
        if self._parsers is None:
            return ChatCompletionMessage(role="assistant", content=self.texts[index]), self.finish[index]
        parser = self._parser(index)  # the whole text at once: what the stream's deltas add up to
        content, _ = parser.push(self.texts[index])
        content += parser.finish()[0]
        tool_calls = [c.to_dict(with_index=False) for c in parser.calls] or None
        message = ChatCompletionMessage(role="assistant", content=content or (None if tool_calls else ""), tool_calls=tool_calls)
        return message, self._finish_reason(self.finish[index], parser)

    def result(self) -> ChatCompletion | Completion:
        if self.kind == "chat":
            choices = [
                ChatCompletionChoice(
                    i,
                    *self._message(i),
                    self._chat_logprobs(self.tokens[i]) if self._want_logprobs else None,
                    self._ids(self.token_ids[i]),
                )
                for i in range(self.num_choices)
            ]
            return ChatCompletion(self.request.id, self.request.created, self.core.model_id, choices, self.usage(),
                                  prompt_token_ids=self._prompt_ids_field())
        choices_c = []
        for i in range(self.num_choices):
            echo = self._echo[i // self._n] if self._echo else ""
            logprobs = self._completion_logprobs(self.tokens[i], len(echo)) if self._want_logprobs else None
            choices_c.append(CompletionChoice(i, echo + self.texts[i], self.finish[i], logprobs, self._ids(self.token_ids[i])))
        return Completion(self.request.id, self.request.created, self.core.model_id, choices_c, self.usage(), prompt_token_ids=self._prompt_ids_field())

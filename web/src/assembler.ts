/**
 * Turning the scheduler's outputs into OpenAI objects: the chunks of a stream or the final
 * object, for chat and completions alike (one path). Twin of compiler/assembler.py.
 */
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionMessage,
  ChatCompletionTokenLogprob,
  ChoiceLogprobs,
  Completion,
  CompletionLogprobs,
  CompletionUsage,
  FinishReason,
  TopLogprob,
} from "./protocol.js";
import type { Endpoint } from "./request_spec.js";
import type { SampledToken } from "./sampling.js";
import { Failure, type Output, type Request, type SchedulerEvent } from "./scheduler.js";
import type { TextTokenizer } from "./tokenizer.js";
import { RULES as TOOL_RULES, ToolCallParser, toolCallObject, type CallFormat, type ToolCall, type ToolPlan } from "./tools.js";

export interface AssemblerOptions {
  modelId: string;
  tokenizer: TextTokenizer;
  numChoices: number;
  promptTokens: number;
  includeUsage: boolean;
  wantLogprobs: boolean;
  /** completions' echo: the prompts as given (one per prompt) */
  echoTexts: string[];
  /** choices per prompt */
  n: number;
  /** return_token_ids: the prompts' ids; null when not asked for */
  promptIds: number[][] | null;
  /** function calling: the calls to parse out of each choice; null when calls are off */
  toolCalls: { plan: ToolPlan; format: CallFormat } | null;
}

type Chunk = ChatCompletionChunk | Completion;

/** Builds the chunks (streaming) or the final object (non-streaming) of one request. */
export class Assembler {
  readonly texts: string[];
  readonly finish: Array<FinishReason | null>;
  private readonly tokens: SampledToken[][];
  private readonly tokenIds: number[][];
  /** streams: ids no chunk carried yet */
  private readonly unsentIds: number[][];
  /** function calling: each choice's text split into content and calls as it streams */
  private readonly parsers: ToolCallParser[] | null;
  private finished = 0;
  private promptIdsPending: boolean;
  private completionTokens = 0;
  private prefill = { tokens: 0, s: 0 };
  private decode = { tokens: 0, s: 0 };
  private firstTokenS: number | undefined;
  private readonly started = Date.now();

  constructor(
    readonly request: Request,
    readonly kind: Endpoint,
    private readonly o: AssemblerOptions,
  ) {
    this.texts = Array.from({ length: o.numChoices }, () => "");
    this.finish = Array.from({ length: o.numChoices }, () => null);
    this.tokens = Array.from({ length: o.numChoices }, () => []);
    this.tokenIds = Array.from({ length: o.numChoices }, () => []);
    this.unsentIds = Array.from({ length: o.numChoices }, () => []);
    this.parsers = o.toolCalls !== null ? Array.from({ length: o.numChoices }, (_, i) => this.parser(i)) : null;
    this.promptIdsPending = o.promptIds !== null;
  }

  /** Call ids: call_ + the request id's part after its prefix + _ + choice index (+ _ + call index). */
  private parser(index: number): ToolCallParser {
    const { plan, format } = this.o.toolCalls!;
    const id = this.request.id;
    const dash = id.indexOf("-");
    const prefix = dash < 0 ? id : id.slice(dash + 1);
    return new ToolCallParser(format, plan.functions.map((f) => f.name), `call_${prefix}_${index}`);
  }

  /** A choice that made calls and stopped (EOS or a stop string) finished to call them. */
  private finishReason(reason: FinishReason | null, parser: ToolCallParser | undefined): FinishReason | null {
    return parser !== undefined && parser.calls.length > 0 && reason === "stop" ? (TOOL_RULES.finish_reason as FinishReason) : reason;
  }

  get done(): boolean {
    return this.finished === this.o.numChoices;
  }

  add(event: SchedulerEvent): Output {
    if (event instanceof Failure) throw event.error;
    const i = event.index;
    this.texts[i] += event.text;
    this.tokens[i]!.push(...event.tokens);
    this.tokenIds[i]!.push(...event.tokenIds);
    if (event.finishReason !== null) {
      this.finish[i] = event.finishReason;
      this.finished++;
      this.completionTokens += event.completionTokens;
      this.prefill.tokens += event.prefillTokens;
      this.prefill.s += event.prefillS;
      this.decode.tokens += Math.max(event.completionTokens - 1, 0); // the first token came from prefill
      this.decode.s += event.decodeS;
      this.firstTokenS ??= event.firstTokenS;
    }
    return event;
  }

  usage(): CompletionUsage {
    const prefillTps = this.prefill.s > 0 ? this.prefill.tokens / this.prefill.s : 0;
    const decodeTps = this.decode.s > 0 ? this.decode.tokens / this.decode.s : 0;
    return {
      prompt_tokens: this.o.promptTokens,
      completion_tokens: this.completionTokens,
      total_tokens: this.o.promptTokens + this.completionTokens,
      prefill_tokens_per_s: prefillTps,
      decode_tokens_per_s: decodeTps,
      extra: {
        prefill_tokens_per_s: prefillTps,
        decode_tokens_per_s: decodeTps,
        time_to_first_token_s: this.firstTokenS ?? 0,
        e2e_latency_s: (Date.now() - this.started) / 1000,
      },
    };
  }

  // ---- logprobs

  private logprobEntry(id: number, logprob: number): TopLogprob {
    const tok = this.o.tokenizer;
    return { token: tok.tokenString(id), logprob, bytes: Array.from(tok.tokenBytes(id)) };
  }

  private chatLogprobs(tokens: readonly SampledToken[]): ChoiceLogprobs {
    const content: ChatCompletionTokenLogprob[] = tokens.map((t) => ({
      ...this.logprobEntry(t.tokenId, t.logprob),
      top_logprobs: t.topLogprobs.map(([i, lp]) => this.logprobEntry(i, lp)),
    }));
    return { content };
  }

  /** The completions API's logprobs of `tokens`, whose text starts at code point `offset`. */
  private completionLogprobs(tokens: readonly SampledToken[], offset: number): CompletionLogprobs {
    const tok = this.o.tokenizer;
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const t of tokens) {
      const text = tok.tokenString(t.tokenId);
      out.tokens.push(text);
      out.token_logprobs.push(t.logprob);
      out.top_logprobs.push(Object.fromEntries(t.topLogprobs.map(([i, lp]) => [tok.tokenString(i), lp])));
      out.text_offset.push(offset);
      offset += codePoints(text);
    }
    return out;
  }

  // ---- streaming (return_token_ids: request_spec.json "$token_ids")

  /** `token_ids` for a choice or chunk: spreads to nothing when the request did not ask for ids. */
  private ids(ids: readonly number[]): { token_ids?: number[] } {
    return this.o.promptIds !== null ? { token_ids: [...ids] } : {};
  }

  private promptIdsField(): number[] | number[][] | undefined {
    const p = this.o.promptIds;
    if (p === null) return undefined;
    return p.length === 1 ? [...p[0]!] : p.map((x) => [...x]);
  }

  /** Put prompt_token_ids on the stream's first chunk. */
  private first<T extends Chunk>(chunk: T): T {
    if (!this.promptIdsPending) return chunk;
    this.promptIdsPending = false;
    return { ...chunk, prompt_token_ids: this.promptIdsField() };
  }

  private echo(i: number): string {
    return this.o.echoTexts.length ? this.o.echoTexts[Math.floor(i / this.o.n)]! : "";
  }

  /** Chat streams start with a role-only delta per choice, as OpenAI's do; completions with their echo. */
  openingChunks(): Chunk[] {
    const all = Array.from({ length: this.o.numChoices }, (_, i) => i);
    if (this.kind !== "chat") {
      return this.o.echoTexts.length ? all.map((i) => this.first(this.completionChunk(i, this.echo(i), null, null, {}))) : [];
    }
    return all.map((i) => this.first(this.chatChunk(i, { role: "assistant", content: "" }, null, null, {})));
  }

  chunksFor(out: Output): Chunk[] {
    const chunks: Chunk[] = [];
    if (this.kind === "chat") {
      const logprobs = out.tokens.length ? this.chatLogprobs(out.tokens) : null;
      let text = out.text;
      let calls: ToolCall[] = [];
      const parser = this.parsers?.[out.index];
      if (parser !== undefined) {
        [text, calls] = parser.push(out.text);
        if (out.finishReason !== null) {
          const [rest, more] = parser.finish();
          text += rest;
          calls = [...calls, ...more];
        }
      }
      // Ids go on the next chunk sent: a content, tool-call or finish chunk.
      let ids = [...this.unsentIds[out.index]!, ...out.tokenIds];
      if (text || logprobs !== null) {
        chunks.push(this.chatChunk(out.index, { content: text }, null, logprobs, this.ids(ids)));
        ids = [];
      }
      for (const call of calls) {
        chunks.push(this.chatChunk(out.index, { tool_calls: [toolCallObject(call, true)] }, null, null, this.ids(ids)));
        ids = [];
      }
      if (out.finishReason !== null) {
        chunks.push(this.chatChunk(out.index, {}, this.finishReason(out.finishReason, parser), null, this.ids(ids)));
        ids = [];
      }
      this.unsentIds[out.index] = ids;
    } else {
      const offset = codePoints(this.texts[out.index]!) - codePoints(out.text);
      const logprobs = this.o.wantLogprobs ? this.completionLogprobs(out.tokens, offset) : null;
      chunks.push(this.completionChunk(out.index, out.text, out.finishReason, logprobs, this.ids(out.tokenIds)));
    }
    return chunks.map((c) => this.first(c));
  }

  closingChunks(): Chunk[] {
    if (!this.o.includeUsage) return [];
    const r = this.request;
    if (this.kind === "chat") return [{ id: r.id, object: "chat.completion.chunk", created: r.created, model: this.o.modelId, choices: [], usage: this.usage() }];
    return [{ id: r.id, object: "text_completion", created: r.created, model: this.o.modelId, choices: [], usage: this.usage() }];
  }

  private chatChunk(index: number, delta: ChatCompletionChunk["choices"][0]["delta"], finish: FinishReason | null, logprobs: ChoiceLogprobs | null, ids: { token_ids?: number[] }): ChatCompletionChunk {
    const r = this.request;
    const chunk: ChatCompletionChunk = {
      id: r.id, object: "chat.completion.chunk", created: r.created, model: this.o.modelId,
      choices: [{ index, delta, finish_reason: finish, logprobs, ...ids }],
    };
    if (this.o.includeUsage) chunk.usage = null;
    return chunk;
  }

  private completionChunk(index: number, text: string, finish: FinishReason | null, logprobs: CompletionLogprobs | null, ids: { token_ids?: number[] }): Completion {
    const r = this.request;
    const chunk: Completion = {
      id: r.id, object: "text_completion", created: r.created, model: this.o.modelId,
      choices: [{ index, text, finish_reason: finish, logprobs, ...ids }],
    };
    if (this.o.includeUsage) chunk.usage = null;
    return chunk;
  }

  // ---- final object

  /** A choice's message and finish reason. */
  private message(index: number): [ChatCompletionMessage, FinishReason] {
    if (this.parsers === null) return [{ role: "assistant", content: this.texts[index]! }, this.finish[index]!];
    const parser = this.parser(index); // the whole text at once: what the stream's deltas add up to
    const content = parser.push(this.texts[index]!)[0] + parser.finish()[0];
    const message: ChatCompletionMessage = { role: "assistant", content: content || (parser.calls.length ? null : "") };
    if (parser.calls.length) message.tool_calls = parser.calls.map((c) => toolCallObject(c, false));
    return [message, this.finishReason(this.finish[index]!, parser)!];
  }

  result(): ChatCompletion | Completion {
    const r = this.request;
    const all = Array.from({ length: this.o.numChoices }, (_, i) => i);
    const promptIds = this.promptIdsField();
    if (this.kind === "chat") {
      const out: ChatCompletion = {
        id: r.id, object: "chat.completion", created: r.created, model: this.o.modelId,
        choices: all.map((i) => {
          const [message, finishReason] = this.message(i);
          return {
            index: i,
            message,
            finish_reason: finishReason,
            logprobs: this.o.wantLogprobs ? this.chatLogprobs(this.tokens[i]!) : null,
            ...this.ids(this.tokenIds[i]!),
          };
        }),
        usage: this.usage(),
      };
      if (promptIds !== undefined) out.prompt_token_ids = promptIds as number[];
      return out;
    }
    const out: Completion = {
      id: r.id, object: "text_completion", created: r.created, model: this.o.modelId,
      choices: all.map((i) => {
        const echo = this.echo(i);
        const logprobs = this.o.wantLogprobs ? this.completionLogprobs(this.tokens[i]!, codePoints(echo)) : null;
        return { index: i, text: echo + this.texts[i]!, finish_reason: this.finish[i]!, logprobs, ...this.ids(this.tokenIds[i]!) };
      }),
      usage: this.usage(),
    };
    if (promptIds !== undefined) out.prompt_token_ids = promptIds;
    return out;
  }
}

/** Length in code points, as the native engine (Python str) counts text offsets. */
function codePoints(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/**
 * OpenAI chat/completions shapes and request validation.
 *
 * Validation mirrors the native server's (compiler/protocol.py): same accepted fields, same ranges,
 * same wording, and unknown fields are an error rather than silently ignored, so a typo such as
 * `maxTokens` fails loudly instead of quietly running with defaults. Every failure is an
 * InvalidRequestError whose `field` names the offending field ("messages[1].role").
 */
import { InvalidRequestError } from "./errors.js";

// ---------------------------------------------------------------------------------------------
// Request types

export type Role = "system" | "developer" | "user" | "assistant" | "tool";

export interface ChatCompletionContentPartText {
  type: "text";
  text: string;
}

export interface ChatCompletionMessageParam {
  role: Role;
  content: string | ChatCompletionContentPartText[] | null;
  name?: string;
}

export interface StreamOptions {
  include_usage?: boolean | null;
}

interface SamplingRequestFields {
  model?: string | null;
  temperature?: number | null;
  top_p?: number | null;
  max_tokens?: number | null;
  stop?: string | string[] | null;
  seed?: number | null;
  frequency_penalty?: number | null;
  presence_penalty?: number | null;
  /** Extension (WebLLM, vLLM): HF-style repetition penalty, > 0, 1 = off. */
  repetition_penalty?: number | null;
  /** token id (as a string key) -> bias in [-100, 100] */
  logit_bias?: Record<string, number> | null;
  n?: number | null;
  user?: string | null;
  /** Extension: keep generating past EOS (benchmarks). */
  ignore_eos?: boolean | null;
  /**
   * Extension (as in vLLM): also return token ids, `prompt_token_ids` on the response (first
   * chunk when streaming) and `token_ids` on the choice (per delta when streaming; the finish
   * chunk carries the rest, e.g. EOS). Lets tests compare ids, not only text.
   */
  return_token_ids?: boolean | null;
  stream_options?: StreamOptions | null;
}

export interface ChatCompletionRequestBase extends SamplingRequestFields {
  messages: ChatCompletionMessageParam[];
  max_completion_tokens?: number | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  response_format?: { type: "text" } | null;
  tool_choice?: "none" | "auto" | null;
}
export interface ChatCompletionRequestStreaming extends ChatCompletionRequestBase {
  stream: true;
}
export interface ChatCompletionRequestNonStreaming extends ChatCompletionRequestBase {
  stream?: false | null;
}
export type ChatCompletionRequest = ChatCompletionRequestStreaming | ChatCompletionRequestNonStreaming;

export interface CompletionRequestBase extends SamplingRequestFields {
  /** Text, or token ids. */
  prompt: string | number[];
  echo?: boolean | null;
}
export interface CompletionRequestStreaming extends CompletionRequestBase {
  stream: true;
}
export interface CompletionRequestNonStreaming extends CompletionRequestBase {
  stream?: false | null;
}
export type CompletionRequest = CompletionRequestStreaming | CompletionRequestNonStreaming;

// ---------------------------------------------------------------------------------------------
// Response types

export type FinishReason = "stop" | "length" | "abort";

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Extensions, as in the native server: this request's prefill / decode throughput. */
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
  /** WebLLM-compatible copy of the timing numbers, plus latency. */
  extra: {
    prefill_tokens_per_s: number;
    decode_tokens_per_s: number;
    time_to_first_token_s: number;
    e2e_latency_s: number;
  };
}

export interface TopLogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
}
export interface ChatCompletionTokenLogprob extends TopLogprob {
  top_logprobs: TopLogprob[];
}
export interface ChoiceLogprobs {
  content: ChatCompletionTokenLogprob[] | null;
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: Array<{
    index: number;
    message: { role: "assistant"; content: string };
    finish_reason: FinishReason;
    logprobs: ChoiceLogprobs | null;
    /** With return_token_ids: the generated ids (EOS included when it ended the answer). */
    token_ids?: number[];
  }>;
  usage: CompletionUsage;
  /** With return_token_ids: the prompt's ids after chat template and tokenization. */
  prompt_token_ids?: number[];
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: Array<{
    index: number;
    delta: { role?: "assistant"; content?: string };
    finish_reason: FinishReason | null;
    logprobs: ChoiceLogprobs | null;
    /** With return_token_ids: the ids of this chunk's delta. */
    token_ids?: number[];
  }>;
  /** Present only when stream_options.include_usage is set: null until the final chunk. */
  usage?: CompletionUsage | null;
  /** With return_token_ids: on the first chunk. */
  prompt_token_ids?: number[];
}

export interface Completion {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  choices: Array<{ index: number; text: string; finish_reason: FinishReason | null; logprobs: null; token_ids?: number[] }>;
  usage?: CompletionUsage | null;
  /** With return_token_ids: on the response (on the first chunk when streaming). */
  prompt_token_ids?: number[];
}

// ---------------------------------------------------------------------------------------------
// Parsed (validated) requests

export interface ParsedSampling {
  /** undefined: use the model's default from aae-chat-config.json */
  temperature?: number;
  top_p?: number;
  frequency_penalty?: number;
  presence_penalty?: number;
  repetition_penalty?: number;
  max_tokens?: number;
  seed?: number;
  stop: string[];
  logit_bias: Map<number, number>;
  ignore_eos: boolean;
}

export interface ParsedMessage {
  role: Role;
  content: string;
  name?: string;
}

export interface ParsedChatRequest {
  messages: ParsedMessage[];
  sampling: ParsedSampling;
  stream: boolean;
  includeUsage: boolean;
  model?: string;
  returnTokenIds: boolean;
  logprobs: boolean;
  topLogprobs: number;
}

export interface ParsedCompletionRequest {
  prompt: string | number[];
  sampling: ParsedSampling;
  stream: boolean;
  includeUsage: boolean;
  model?: string;
  returnTokenIds: boolean;
  echo: boolean;
}

// ---------------------------------------------------------------------------------------------
// Validation helpers

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

function bad(field: string, message: string, code = "invalid_value"): InvalidRequestError {
  return new InvalidRequestError(message, { field, param: field, code });
}

function badType(field: string, value: unknown, expected: string): InvalidRequestError {
  return bad(field, `Invalid type for '${field}': expected ${expected}, but got ${typeName(value)}.`, "invalid_type");
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function num(field: string, v: unknown, lo?: number, hi?: number, loOpen = false): number {
  if (typeof v !== "number") throw badType(field, v, "a number");
  if (!Number.isFinite(v)) throw bad(field, `Invalid value for '${field}': it must be a finite number.`);
  const below = lo !== undefined && (loOpen ? v <= lo : v < lo);
  const above = hi !== undefined && v > hi;
  if (below || above) {
    const rule = hi !== undefined ? `in ${loOpen ? "(" : "["}${lo}, ${hi}]` : `${loOpen ? ">" : ">="} ${lo}`;
    throw bad(field, `Invalid value for '${field}': ${v} is out of range; it must be ${rule}.`);
  }
  return v;
}

function int(field: string, v: unknown, lo?: number, hi?: number): number {
  if (typeof v !== "number" || !Number.isInteger(v)) throw badType(field, v, "an integer");
  if ((lo !== undefined && v < lo) || (hi !== undefined && v > hi)) {
    const rule = lo !== undefined && hi !== undefined ? `between ${lo} and ${hi}` : lo !== undefined ? `>= ${lo}` : `<= ${hi}`;
    throw bad(field, `Invalid value for '${field}': ${v} is out of range; it must be ${rule}.`);
  }
  return v;
}

function bool(field: string, v: unknown): boolean {
  if (typeof v !== "boolean") throw badType(field, v, "a boolean");
  return v;
}

function str(field: string, v: unknown): string {
  if (typeof v !== "string") throw badType(field, v, "a string");
  return v;
}

/** Value of an optional field; null and undefined both mean "not given" (as in OpenAI's API). */
function opt<T>(body: Record<string, unknown>, field: string, check: (field: string, v: unknown) => T): T | undefined {
  const v = body[field];
  return v === undefined || v === null ? undefined : check(field, v);
}

export const MAX_STOP_STRINGS = 16;

function parseStop(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const items = typeof v === "string" ? [v] : v;
  if (!Array.isArray(items)) throw badType("stop", v, "a string or an array of strings");
  if (items.length > MAX_STOP_STRINGS) {
    throw bad("stop", `Invalid 'stop': at most ${MAX_STOP_STRINGS} stop strings are allowed, got ${items.length}.`);
  }
  return items.map((s, i) => {
    str(`stop[${i}]`, s);
    if (s === "") throw bad(`stop[${i}]`, `Invalid 'stop[${i}]': stop strings must not be empty.`);
    return s as string;
  });
}

function parseLogitBias(v: unknown): Map<number, number> {
  const out = new Map<number, number>();
  if (v === undefined || v === null) return out;
  if (!isRecord(v)) throw badType("logit_bias", v, "an object mapping token ids to biases");
  for (const [key, bias] of Object.entries(v)) {
    if (!/^\d+$/.test(key)) {
      throw bad("logit_bias", `Invalid key in 'logit_bias': ${JSON.stringify(key)} is not a token id (a non-negative integer).`);
    }
    out.set(Number(key), num(`logit_bias.${key}`, bias, -100, 100));
  }
  return out;
}

const COMMON_FIELDS = [
  "model", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens", "stop", "seed",
  "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias", "user", "ignore_eos",
  "return_token_ids",
];
const CHAT_FIELDS = new Set([
  ...COMMON_FIELDS, "messages", "logprobs", "top_logprobs", "max_completion_tokens", "response_format", "tools",
  "tool_choice", "parallel_tool_calls", "metadata", "store", "service_tier",
]);
const COMPLETION_FIELDS = new Set([...COMMON_FIELDS, "prompt", "echo", "logprobs", "best_of", "suffix"]);

function checkFields(body: unknown, allowed: Set<string>, required: string): Record<string, unknown> {
  if (!isRecord(body)) throw bad("", `The request must be an object, got ${typeName(body)}.`, "invalid_type");
  const unknown = Object.keys(body).filter((k) => !allowed.has(k)).sort();
  if (unknown.length) {
    throw bad(unknown[0]!, `Unrecognized request argument supplied: ${unknown.join(", ")}.`, "unknown_parameter");
  }
  if (body[required] === undefined || body[required] === null) {
    throw bad(required, `Missing required parameter: '${required}'.`, "missing_required_parameter");
  }
  return body;
}

function parseCommon(body: Record<string, unknown>): {
  sampling: ParsedSampling;
  stream: boolean;
  includeUsage: boolean;
  model?: string;
  returnTokenIds: boolean;
} {
  const model = opt(body, "model", str);
  const stream = opt(body, "stream", bool) ?? false;
  let includeUsage = false;
  const so = body["stream_options"];
  if (so !== undefined && so !== null) {
    if (!stream) throw bad("stream_options", "Invalid 'stream_options': only allowed when 'stream' is true.");
    if (!isRecord(so)) throw badType("stream_options", so, "an object");
    const extra = Object.keys(so).filter((k) => k !== "include_usage" && k !== "continuous_usage_stats").sort();
    if (extra.length) {
      throw bad(`stream_options.${extra[0]}`, `Invalid 'stream_options': unrecognized field(s) ${extra.join(", ")}.`);
    }
    includeUsage = opt(so, "include_usage", (f, v) => bool(`stream_options.${f}`, v)) ?? false;
  }
  const n = opt(body, "n", (f, v) => int(f, v, 1));
  if (n !== undefined && n !== 1) {
    throw bad("n", `Invalid value for 'n': ${n}. The browser engine generates one choice per request (n = 1).`);
  }
  opt(body, "user", str);
  const sampling: ParsedSampling = {
    stop: parseStop(body["stop"]),
    logit_bias: parseLogitBias(body["logit_bias"]),
    ignore_eos: opt(body, "ignore_eos", bool) ?? false,
  };
  const set = <K extends keyof ParsedSampling>(k: K, v: ParsedSampling[K] | undefined) => {
    if (v !== undefined) sampling[k] = v;
  };
  set("temperature", opt(body, "temperature", (f, v) => num(f, v, 0, 2)));
  set("top_p", opt(body, "top_p", (f, v) => num(f, v, 0, 1, true)));
  set("max_tokens", opt(body, "max_tokens", (f, v) => int(f, v, 1)));
  set("seed", opt(body, "seed", (f, v) => int(f, v)));
  set("frequency_penalty", opt(body, "frequency_penalty", (f, v) => num(f, v, -2, 2)));
  set("presence_penalty", opt(body, "presence_penalty", (f, v) => num(f, v, -2, 2)));
  set("repetition_penalty", opt(body, "repetition_penalty", (f, v) => num(f, v, 0, undefined, true)));
  const returnTokenIds = opt(body, "return_token_ids", bool) ?? false;
  const out: { sampling: ParsedSampling; stream: boolean; includeUsage: boolean; model?: string; returnTokenIds: boolean } = {
    sampling,
    stream,
    includeUsage,
    returnTokenIds,
  };
  if (model !== undefined) out.model = model;
  return out;
}

const ROLES: readonly Role[] = ["system", "developer", "user", "assistant", "tool"];
const MESSAGE_KEYS = new Set(["role", "content", "name", "tool_calls", "tool_call_id", "refusal"]);

function parseContent(field: string, content: unknown, role: string): string {
  if (content === null || content === undefined) {
    if (role === "assistant") return "";
    throw bad(field, `Invalid '${field}': a ${role} message needs content.`);
  }
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) throw badType(field, content, "a string or an array of content parts");
  return content
    .map((part, i) => {
      const pf = `${field}[${i}]`;
      if (!isRecord(part)) throw badType(pf, part, "an object");
      if (part["type"] !== "text") {
        throw bad(`${pf}.type`, `Invalid '${pf}.type': only 'text' content parts are supported by this model, got ${JSON.stringify(part["type"])}.`);
      }
      return str(`${pf}.text`, part["text"]);
    })
    .join("");
}

function parseMessages(v: unknown): ParsedMessage[] {
  if (!Array.isArray(v)) throw badType("messages", v, "an array of messages");
  if (v.length === 0) {
    throw bad("messages", "Invalid 'messages': empty array. Expected an array with at least one message.", "empty_array");
  }
  return v.map((msg, i) => {
    const f = `messages[${i}]`;
    if (!isRecord(msg)) throw badType(f, msg, "an object");
    const unknown = Object.keys(msg).filter((k) => !MESSAGE_KEYS.has(k)).sort();
    if (unknown.length) throw bad(`${f}.${unknown[0]}`, `Invalid '${f}': unrecognized field(s) ${unknown.map((k) => `'${k}'`).join(", ")}.`);
    if (!("role" in msg)) throw bad(`${f}.role`, `Missing required parameter: '${f}.role'.`, "missing_required_parameter");
    const role = msg["role"];
    if (typeof role !== "string" || !(ROLES as readonly string[]).includes(role)) {
      throw bad(`${f}.role`, `Invalid value for '${f}.role': ${JSON.stringify(role)}. Supported values are: ${ROLES.map((r) => `'${r}'`).join(", ")}.`);
    }
    const toolCalls = msg["tool_calls"];
    if (Array.isArray(toolCalls) ? toolCalls.length > 0 : toolCalls) {
      throw bad(`${f}.tool_calls`, `Invalid '${f}.tool_calls': tool calls are not supported by this engine.`);
    }
    const out: ParsedMessage = { role: role as Role, content: parseContent(`${f}.content`, msg["content"], role) };
    const name = msg["name"];
    if (name !== undefined && name !== null) out.name = str(`${f}.name`, name);
    return out;
  });
}

/** Validate a chat completion request; throws InvalidRequestError naming the bad field. */
export function parseChatRequest(body: unknown): ParsedChatRequest {
  const b = checkFields(body, CHAT_FIELDS, "messages");
  const common = parseCommon(b);
  const mct = opt(b, "max_completion_tokens", (f, v) => int(f, v, 1));
  if (mct !== undefined) {
    if (common.sampling.max_tokens !== undefined) {
      throw bad("max_completion_tokens", "Give only one of 'max_tokens' and 'max_completion_tokens'.");
    }
    common.sampling.max_tokens = mct;
  }
  const logprobs = opt(b, "logprobs", bool) ?? false;
  const topLogprobs = opt(b, "top_logprobs", (f, v) => int(f, v, 0, 20)) ?? 0;
  if (b["top_logprobs"] !== undefined && b["top_logprobs"] !== null && !logprobs) {
    throw bad("top_logprobs", "Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.");
  }
  const fmt = b["response_format"];
  if (fmt !== undefined && fmt !== null) {
    if (!isRecord(fmt)) throw badType("response_format", fmt, "an object");
    if (fmt["type"] !== "text") {
      throw bad("response_format.type", `Invalid 'response_format.type': ${JSON.stringify(fmt["type"])} is not supported; only 'text' is.`);
    }
  }
  const tools = b["tools"];
  if (Array.isArray(tools) ? tools.length > 0 : tools) {
    throw bad("tools", "Invalid 'tools': function calling is not supported by this engine.");
  }
  const tc = b["tool_choice"];
  if (tc !== undefined && tc !== null && tc !== "none" && tc !== "auto") {
    throw bad("tool_choice", "Invalid 'tool_choice': function calling is not supported by this engine.");
  }
  return { ...common, messages: parseMessages(b["messages"]), logprobs, topLogprobs };
}

/** Validate a (legacy) text completion request. One prompt per request. */
export function parseCompletionRequest(body: unknown): ParsedCompletionRequest {
  const b = checkFields(body, COMPLETION_FIELDS, "prompt");
  const common = parseCommon(b);
  // The legacy API's default, as in OpenAI and the native server.
  if (common.sampling.max_tokens === undefined) common.sampling.max_tokens = 16;
  const p = b["prompt"];
  let prompt: string | number[];
  if (typeof p === "string") {
    prompt = p;
  } else if (Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === "number")) {
    prompt = p.map((x, i) => int(`prompt[${i}]`, x, 0));
  } else if (Array.isArray(p) && p.length === 1 && typeof p[0] === "string") {
    prompt = p[0];
  } else {
    throw bad("prompt", "Invalid 'prompt': expected a non-empty string or an array of token ids (one prompt per request).");
  }
  const echo = opt(b, "echo", bool) ?? false;
  if (b["logprobs"] !== undefined && b["logprobs"] !== null) {
    throw bad("logprobs", "Invalid 'logprobs': token log-probabilities are only available in the chat API here.");
  }
  const bestOf = opt(b, "best_of", (f, v) => int(f, v, 1));
  if (bestOf !== undefined && bestOf !== 1) throw bad("best_of", "Invalid 'best_of': only best_of equal to n (1) is supported.");
  if (b["suffix"]) throw bad("suffix", "Invalid 'suffix': insertion (suffix) is not supported by this model.");
  return { ...common, prompt, echo };
}

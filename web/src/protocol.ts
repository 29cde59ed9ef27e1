/**
 * OpenAI chat/completions shapes and request validation.
 *
 * Validation is request_spec.json's (REQUESTS.md), which the native server (compiler/protocol.py)
 * reads too: same accepted fields, same ranges, same wording, and unknown fields are an error
 * rather than silently ignored, so a typo such as `maxTokens` fails loudly instead of quietly
 * running with defaults. Every failure is an InvalidRequestError whose `field` names the
 * offending field ("messages[1].role").
 */
import { checkResponseFormat, isConstrained, type ResponseFormat } from "./structured.js";
import { InvalidRequestError } from "./errors.js";
import { SPEC, endpointFields, errorText, fieldType, rangeRule, show, typeName, type Endpoint, type FieldSpec } from "./request_spec.js";
import {
  checkMessageToolCalls,
  checkToolChoice,
  checkTools,
  toolPlan,
  type ChatToolCall,
  type TemplateToolCall,
  type ToolCallDelta,
  type ToolPlan,
} from "./tools.js";

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
  /** assistant: the calls it made (arguments as JSON text) */
  tool_calls?: ChatToolCall[] | null;
  /** tool: the call this message answers */
  tool_call_id?: string | null;
}

/** A function the model may call (OpenAI's tool object). */
export interface ChatCompletionTool {
  type: "function";
  function: {
    /** 1 to 64 letters, digits, '_' or '-' */
    name: string;
    description?: string | null;
    /** A JSON Schema (structured output's keywords); default {"type": "object"}. */
    parameters?: Record<string, unknown> | null;
    strict?: boolean | null;
  };
}

export type ChatCompletionToolChoice = "none" | "auto" | "required" | { type: "function"; function: { name: string } };

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
  /** Choices per prompt (1-128): generated one after the other, choice i seeded with seed + i. */
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
  /** OpenAI's forms, plus {type: "grammar", grammar: EBNF} (REQUESTS.md, "Structured output"). */
  response_format?:
    | { type: "text" }
    | { type: "json_object" }
    | { type: "json_schema"; json_schema: { name: string; description?: string; schema?: Record<string, unknown> | boolean; strict?: boolean | null } }
    | { type: "grammar"; grammar: string }
    | null;
  /** Function calling (REQUESTS.md, "Function calling"): rendered by the model's chat template. */
  tools?: ChatCompletionTool[] | null;
  /** Default auto when tools are given, else none. */
  tool_choice?: ChatCompletionToolChoice | null;
  /** Default true; a call format that takes one call at a time (llama3_json) makes one anyway. */
  parallel_tool_calls?: boolean | null;
}
export interface ChatCompletionRequestStreaming extends ChatCompletionRequestBase {
  stream: true;
}
export interface ChatCompletionRequestNonStreaming extends ChatCompletionRequestBase {
  stream?: false | null;
}
export type ChatCompletionRequest = ChatCompletionRequestStreaming | ChatCompletionRequestNonStreaming;

export interface CompletionRequestBase extends SamplingRequestFields {
  /** Text, token ids, or several prompts (each text or token ids): n choices each. */
  prompt: string | number[] | Array<string | number[]>;
  echo?: boolean | null;
  /** How many alternatives per token to report (0-5) in the choice's logprobs. */
  logprobs?: number | null;
  best_of?: number | null;
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

/** tool_calls: the choice made calls and stopped (EOS or a stop string) to have them run. */
export type FinishReason = "stop" | "length" | "abort" | "tool_calls";

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

export interface ChatCompletionMessage {
  role: "assistant";
  content: string | null;
  /** The calls the choice made (function calling); absent when it made none. */
  tool_calls?: ChatToolCall[];
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: Array<{
    index: number;
    /** content is null when the choice made calls and wrote nothing else. */
    message: ChatCompletionMessage;
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
    /** A call is sent whole, in one delta, once its end was generated. */
    delta: { role?: "assistant"; content?: string; tool_calls?: ToolCallDelta[] };
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

/** The completions API's logprobs: per token its text, logprob, alternatives and text offset. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Array<Record<string, number>>;
  text_offset: number[];
}

export interface Completion {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  choices: Array<{ index: number; text: string; finish_reason: FinishReason | null; logprobs: CompletionLogprobs | null; token_ids?: number[] }>;
  usage?: CompletionUsage | null;
  /**
   * With return_token_ids: on the response (on the first chunk when streaming); a list per
   * prompt when the request had several.
   */
  prompt_token_ids?: number[] | number[][];
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
  /** Report log-probabilities, with the topLogprobs best alternatives. */
  logprobs: boolean;
  topLogprobs: number;
}

export interface ParsedMessage {
  role: Role;
  content: string;
  name?: string;
  /** assistant: the calls it made, arguments parsed (as templates take them) */
  tool_calls?: TemplateToolCall[];
  /** tool: the call this answers */
  tool_call_id?: string;
}

interface ParsedCommon {
  sampling: ParsedSampling;
  /** Choices per prompt. */
  n: number;
  stream: boolean;
  includeUsage: boolean;
  model?: string;
  returnTokenIds: boolean;
}

export interface ParsedChatRequest extends ParsedCommon {
  messages: ParsedMessage[];
  /** undefined or text: unconstrained */
  responseFormat?: ResponseFormat;
  /** undefined: no tools given */
  tools?: ToolPlan;
}

export interface ParsedCompletionRequest extends ParsedCommon {
  /** Each prompt is text or token ids. */
  prompts: Array<string | number[]>;
  echo: boolean;
  /** The completions API's logprobs: how many alternatives per token (undefined: none). */
  logprobs?: number;
}

// ---------------------------------------------------------------------------------------------
// Field checks, driven by request_spec.json (REQUESTS.md); compiler/protocol.py runs the same
// checks with the same texts. Every failure is an InvalidRequestError whose `field` (= param)
// names the offending field ("messages[1].role").

/** The spec's error `name`, its placeholders filled. */
export function specError(name: string, param: string | null, values: Record<string, unknown> = {}): InvalidRequestError {
  const [message, code] = errorText(name, { param, ...values });
  return new InvalidRequestError(message, { field: param ?? "", param, code, type: "invalid_request_error" });
}

function badType(field: string, value: unknown, expected: string): InvalidRequestError {
  return specError("bad_type", field, { expected: SPEC.expected[expected] ?? expected, got: typeName(value) });
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function num(field: string, v: unknown, lo?: number, hi?: number, loOpen = false): number {
  if (typeof v !== "number") throw badType(field, v, "number");
  if (!Number.isFinite(v)) throw specError("not_finite", field);
  if ((lo !== undefined && (loOpen ? v <= lo : v < lo)) || (hi !== undefined && v > hi)) {
    throw specError("out_of_range", field, { value: v, rule: rangeRule("number", lo, hi, loOpen) });
  }
  return v;
}

function int(field: string, v: unknown, lo?: number, hi?: number): number {
  if (typeof v !== "number" || !Number.isInteger(v)) throw badType(field, v, "integer");
  if ((lo !== undefined && v < lo) || (hi !== undefined && v > hi)) {
    throw specError("out_of_range", field, { value: v, rule: rangeRule("integer", lo, hi, false) });
  }
  return v;
}

function bool(field: string, v: unknown): boolean {
  if (typeof v !== "boolean") throw badType(field, v, "boolean");
  return v;
}

function str(field: string, v: unknown): string {
  if (typeof v !== "string") throw badType(field, v, "string");
  return v;
}

/** What a refused feature may still be sent as: nothing (null, false, "", [], {}). */
function isEmpty(v: unknown): boolean {
  if (v === null || v === undefined || v === false || v === "") return true;
  if (Array.isArray(v)) return v.length === 0;
  return isRecord(v) && Object.keys(v).length === 0;
}

export const MAX_STOP_STRINGS: number = SPEC.limits.max_stop_strings;

function parseStop(v: unknown): string[] {
  const items = typeof v === "string" ? [v] : v;
  if (!Array.isArray(items)) throw badType("stop", v, "stop");
  if (items.length > MAX_STOP_STRINGS) throw specError("stop_too_many", "stop", { max: MAX_STOP_STRINGS, count: items.length });
  return items.map((s, i) => {
    str(`stop[${i}]`, s);
    if (s === "") throw specError("stop_empty", `stop[${i}]`);
    return s as string;
  });
}

function parseLogitBias(v: unknown): Map<number, number> {
  if (!isRecord(v)) throw badType("logit_bias", v, "logit_bias");
  const f = SPEC.fields["logit_bias"]!;
  const out = new Map<number, number>();
  for (const [key, bias] of Object.entries(v)) {
    if (!/^[0-9]+$/.test(key)) throw specError("logit_bias_key", "logit_bias", { key: show(key) });
    out.set(Number(key), num(`logit_bias.${key}`, bias, f.min, f.max));
  }
  return out;
}

/** include_usage of a stream_options object. */
function parseStreamOptions(v: unknown): boolean {
  if (!isRecord(v)) throw badType("stream_options", v, "object");
  const extra = Object.keys(v).filter((k) => !SPEC.stream_options_fields.includes(k)).sort();
  if (extra.length) throw specError("stream_options_field", `stream_options.${extra[0]}`, { names: extra.join(", ") });
  const usage = v["include_usage"];
  return usage === undefined || usage === null ? false : bool("stream_options.include_usage", usage);
}

function parseContent(field: string, content: unknown, role: string): string {
  if (content === null || content === undefined) {
    if (role === "assistant") return "";
    throw specError("needs_content", field, { role });
  }
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) throw badType(field, content, "content");
  return content
    .map((part, i) => {
      const pf = `${field}[${i}]`;
      if (!isRecord(part)) throw badType(pf, part, "object");
      if (part["type"] !== "text") throw specError("content_part", `${pf}.type`, { value: show(part["type"]) });
      return str(`${pf}.text`, part["text"]);
    })
    .join("");
}

function parseMessage(f: string, msg: unknown): ParsedMessage {
  if (!isRecord(msg)) throw badType(f, msg, "object");
  const unknown = Object.keys(msg).filter((k) => !SPEC.message_fields.includes(k)).sort();
  if (unknown.length) throw specError("message_fields", `${f}.${unknown[0]}`, { names: unknown.map(show).join(", ") });
  if (!("role" in msg)) throw specError("missing", `${f}.role`);
  const role = msg["role"];
  if (typeof role !== "string" || !SPEC.roles.includes(role)) {
    throw specError("role", `${f}.role`, { value: show(role), roles: SPEC.roles.map(show).join(", ") });
  }
  let toolCalls: TemplateToolCall[] | undefined;
  if (msg["tool_calls"] !== undefined && msg["tool_calls"] !== null) {
    if (role !== "assistant") throw specError("tool_calls_role", `${f}.tool_calls`);
    toolCalls = checkMessageToolCalls(msg["tool_calls"], `${f}.tool_calls`);
  }
  const rawCallId = msg["tool_call_id"] ?? undefined;
  if (role === "tool" && rawCallId === undefined) throw specError("missing", `${f}.tool_call_id`);
  const toolCallId = rawCallId === undefined ? undefined : str(`${f}.tool_call_id`, rawCallId);
  const out: ParsedMessage = { role: role as Role, content: parseContent(`${f}.content`, msg["content"], role) };
  const name = msg["name"];
  if (name !== undefined && name !== null) out.name = str(`${f}.name`, name);
  // Keys in Python's order (role, content, name, tool_calls, tool_call_id); an empty call list is none.
  if (toolCalls?.length) out.tool_calls = toolCalls;
  if (toolCallId !== undefined) out.tool_call_id = toolCallId;
  return out;
}

function parseMessages(v: unknown): ParsedMessage[] {
  if (!Array.isArray(v)) throw badType("messages", v, "messages");
  if (v.length === 0) throw specError("messages_empty", "messages");
  return v.map((msg, i) => parseMessage(`messages[${i}]`, msg));
}

/** OpenAI accepts a string, an array of strings, an array of token ids, or an array of those. */
function parsePrompts(v: unknown): Array<string | number[]> {
  if (typeof v === "string") return [v];
  if (!Array.isArray(v) || v.length === 0) throw specError("prompt", "prompt");
  if (v.every((x) => typeof x === "number")) return [v.map((x, i) => int(`prompt[${i}]`, x, 0))];
  return v.map((item: unknown, i) => {
    if (typeof item === "string") return item;
    if (Array.isArray(item) && item.length > 0) return item.map((x, j) => int(`prompt[${i}][${j}]`, x, 0));
    throw specError("prompt_item", `prompt[${i}]`, { got: typeName(item) });
  });
}

function checkFields(body: unknown, kind: Endpoint): Record<string, unknown> {
  if (!isRecord(body)) throw specError("not_object", null, { got: typeName(body) });
  const names = new Set(endpointFields(kind).map(([n]) => n));
  const unknown = Object.keys(body).filter((k) => !names.has(k)).sort();
  if (unknown.length) throw specError("unknown_field", unknown[0]!, { names: unknown.join(", ") });
  const required = SPEC.endpoints[kind].required;
  if (body[required] === undefined || body[required] === null) throw specError("missing", required);
  return body;
}

/** The structured kinds and scalar types of request_spec.json's fields, by name. */
const KINDS: Record<string, (name: string, v: unknown, f: FieldSpec) => unknown> = {
  messages: (_n, v) => parseMessages(v),
  prompt: (_n, v) => parsePrompts(v),
  stream_options: (_n, v) => parseStreamOptions(v),
  stop: (_n, v) => parseStop(v),
  logit_bias: (_n, v) => parseLogitBias(v),
  response_format: (_n, v) => checkResponseFormat(v),
  tools: (_n, v) => checkTools(v),
  tool_choice: (_n, v) => checkToolChoice(v),
  number: (n, v, f) => num(n, v, f.min, f.max, f.min_exclusive ?? false),
  integer: (n, v, f) => int(n, v, f.min, f.max),
  boolean: (n, v) => bool(n, v),
  string: (n, v) => str(n, v),
  any: (_n, v) => v,
};

function checkField(kind: Endpoint, name: string, value: unknown, f: FieldSpec): unknown {
  const t = fieldType(f, kind);
  if (t === "refused_unless_empty") {
    if (!isEmpty(value)) throw specError("refused", name, { what: SPEC.refused[name] });
    return undefined;
  }
  const check = KINDS[t];
  if (!check) throw new Error(`request_spec.json: field ${name} has an unknown type "${t}"`);
  return check(name, value, f);
}

/** One of request_spec.json's cross-field rules. */
function checkRule(rule: string, kind: Endpoint, v: Map<string, unknown>): void {
  if (rule === "stream_options_need_stream" && v.has("stream_options") && !v.get("stream")) {
    throw specError("stream_options_without_stream", "stream_options");
  }
  if (rule === "max_tokens_once" && v.has("max_tokens") && v.has("max_completion_tokens")) throw specError("max_tokens_twice", "max_completion_tokens");
  if (rule === "top_logprobs_need_logprobs" && v.has("top_logprobs") && kind === "chat" && !v.get("logprobs")) {
    throw specError("top_logprobs_without_logprobs", "top_logprobs");
  }
  if (rule === "echo_without_logprobs" && kind === "completion" && v.has("logprobs") && v.get("echo")) throw specError("echo_with_logprobs", "logprobs");
  if (rule === "response_format_without_ignore_eos" && v.get("ignore_eos") && isConstrained(v.get("response_format") as ResponseFormat | undefined)) {
    throw specError("response_format_ignore_eos", "ignore_eos");
  }
  if (rule === "tool_choice_needs_tools" && (v.get("tool_choice") ?? "none") !== "none" && !(v.get("tools") as unknown[] | undefined)?.length) {
    // tool_choice is kept as a name; the message shows it as it was sent.
    const choice = v.get("tool_choice") as string;
    const sent = SPEC.tool_calling.choices.includes(choice) ? choice : { type: "function", function: { name: choice } };
    throw specError("tool_choice_without_tools", "tool_choice", { value: show(sent) });
  }
  if (
    rule === "tools_without_response_format" && (v.get("tools") as unknown[] | undefined)?.length && v.get("tool_choice") !== "none" &&
    isConstrained(v.get("response_format") as ResponseFormat | undefined)
  ) {
    throw specError("tools_with_response_format", "response_format");
  }
  if (rule === "tools_without_ignore_eos" && v.get("ignore_eos") && (v.get("tools") as unknown[] | undefined)?.length && v.get("tool_choice") !== "none") {
    throw specError("tools_ignore_eos", "ignore_eos");
  }
  if (rule === "best_of_is_n" && v.has("best_of") && v.get("best_of") !== (v.get("n") ?? SPEC.fields["n"]!.default)) throw specError("best_of", "best_of");
}

/**
 * Every given field of a `kind` body, checked in the spec's order, then the spec's cross-field
 * rules: field -> checked value. null and undefined both mean "not given" (as in OpenAI's API).
 */
export function checkRequest(kind: Endpoint, body: unknown): Map<string, unknown> {
  const b = checkFields(body, kind);
  const values = new Map<string, unknown>();
  for (const [name, f] of endpointFields(kind)) {
    if (b[name] !== undefined && b[name] !== null) values.set(name, checkField(kind, name, b[name], f));
  }
  for (const rule of SPEC.rules) checkRule(rule, kind, values);
  return values;
}

function parseCommon(kind: Endpoint, v: Map<string, unknown>): ParsedCommon {
  const get = <T>(name: string): T | undefined => v.get(name) as T | undefined;
  const logprobs = get<boolean | number>("logprobs");
  const sampling: ParsedSampling = {
    stop: get<string[]>("stop") ?? [],
    logit_bias: get<Map<number, number>>("logit_bias") ?? new Map(),
    ignore_eos: get<boolean>("ignore_eos") ?? false,
    // chat: logprobs is a switch and top_logprobs a count; completions: logprobs is the count
    logprobs: kind === "chat" ? logprobs === true : logprobs !== undefined,
    topLogprobs: kind === "chat" ? (get<number>("top_logprobs") ?? 0) : ((logprobs as number | undefined) ?? 0),
  };
  const maxDefault = SPEC.fields["max_tokens"]!.default as Record<Endpoint, number | null>;
  const maxTokens = get<number>("max_tokens") ?? get<number>("max_completion_tokens") ?? maxDefault[kind] ?? undefined;
  if (maxTokens !== undefined) sampling.max_tokens = maxTokens;
  for (const k of ["temperature", "top_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "seed"] as const) {
    const x = get<number>(k);
    if (x !== undefined) sampling[k] = x;
  }
  const out: ParsedCommon = {
    sampling,
    n: get<number>("n") ?? 1,
    stream: get<boolean>("stream") ?? false,
    includeUsage: get<boolean>("stream_options") ?? false,
    returnTokenIds: get<boolean>("return_token_ids") ?? false,
  };
  const model = get<string>("model");
  if (model !== undefined) out.model = model;
  return out;
}

/** Validate a chat completion request; throws InvalidRequestError naming the bad field. */
export function parseChatRequest(body: unknown): ParsedChatRequest {
  const v = checkRequest("chat", body);
  const out: ParsedChatRequest = { ...parseCommon("chat", v), messages: v.get("messages") as ParsedMessage[] };
  const format = v.get("response_format") as ResponseFormat | undefined;
  if (format !== undefined) out.responseFormat = format;
  const tools = toolPlan(v);
  if (tools !== undefined) out.tools = tools;
  return out;
}

/** Validate a (legacy) text completion request; max_tokens defaults to 16 as there. */
export function parseCompletionRequest(body: unknown): ParsedCompletionRequest {
  const v = checkRequest("completion", body);
  const out: ParsedCompletionRequest = { ...parseCommon("completion", v), prompts: v.get("prompt") as Array<string | number[]>, echo: (v.get("echo") as boolean | undefined) ?? false };
  const logprobs = v.get("logprobs") as number | undefined;
  if (logprobs !== undefined) out.logprobs = logprobs;
  return out;
}

/**
 * Function calling: `tools`, `tool_choice` and `parallel_tool_calls` checked, the call grammar
 * built as an XGrammar structural tag, and the model's text parsed back into OpenAI `tool_calls`.
 * Twin of compiler/tools.py; the rules are request_spec.json "tool_calling" (REQUESTS.md,
 * "Function calling").
 *
 * Tools are rendered by the model's own chat template (its `tools` variable), and the call format
 * (Hermes' `<tool_call>` JSON, Llama 3.1's bare JSON) is read off the same template, so a model
 * is asked for calls in the form it was trained on. Every call the engine parses was generated
 * under the call grammar (tool_choice auto included: the grammar lets text run free until the
 * model starts a call), so parsing is a walk over fixed begin and end texts and one JSON value.
 *
 * Text positions here are UTF-16 code units where Python counts code points; every position is
 * found by searching for ASCII texts, so both sides split a text at the same characters.
 */
import { isRecord, specError } from "./protocol.js";
import { SPEC, show, typeName } from "./request_spec.js";
import { checkSchema } from "./structured.js";

export const RULES = SPEC.tool_calling;
const NAME_PATTERN = new RegExp(SPEC.structured_output.name_pattern);

export interface ToolFunction {
  name: string;
  /** a JSON Schema (checked) */
  parameters: unknown;
  description: string | null;
}

/** What a request asks of the tools: `choice` is none, auto, required or a function's name. */
export interface ToolPlan {
  functions: readonly ToolFunction[];
  choice: string;
  parallel: boolean;
}

/** An OpenAI tool object, as a chat template's `tools` variable holds it. */
export interface TemplateTool {
  type: "function";
  function: { name: string; description?: string; parameters: unknown };
}

export function planActive(plan: ToolPlan): boolean {
  return plan.choice !== "none" && plan.functions.length > 0;
}

/** The `tools` a chat template renders (OpenAI's shape), or null when calls are off. */
export function forTemplate(plan: ToolPlan): TemplateTool[] | null {
  if (!planActive(plan)) return null;
  return plan.functions.map((f) => {
    // Keys in Python's order (name, description, parameters): templates write them with tojson.
    const fn: TemplateTool["function"] = f.description !== null ? { name: f.name, description: f.description, parameters: f.parameters } : { name: f.name, parameters: f.parameters };
    return { type: "function", function: fn };
  });
}

// ---------------------------------------------------------------------------------------------
// Checking the request fields

function checkFields(value: unknown, allowed: readonly string[], param: string): asserts value is Record<string, unknown> {
  if (!isRecord(value)) throw specError("bad_type", param, { expected: SPEC.expected["object"], got: typeName(value) });
  const extra = Object.keys(value).filter((k) => !allowed.includes(k)).sort();
  if (extra.length) throw specError("object_fields", `${param}.${extra[0]}`, { names: extra.join(", ") });
}

function functionName(value: unknown, param: string): string {
  if (typeof value !== "string" || !NAME_PATTERN.test(value)) throw specError("function_name", param, { value: show(value) });
  // A named tool_choice must not read as one of the choices.
  if (RULES.choices.includes(value)) throw specError("function_name_reserved", param, { value: show(value) });
  return value;
}

/** The tools field: function tools with unique names and checked parameter schemas. */
export function checkTools(value: unknown): ToolFunction[] {
  if (!Array.isArray(value)) throw specError("bad_type", "tools", { expected: SPEC.expected["array"], got: typeName(value) });
  const functions: ToolFunction[] = [];
  value.forEach((tool: unknown, i) => {
    const at = `tools[${i}]`;
    if (!isRecord(tool)) throw specError("bad_type", at, { expected: SPEC.expected["tool"], got: typeName(tool) });
    checkFields(tool, RULES.tool_fields, at);
    if (tool["type"] !== "function") throw specError("tool_type", `${at}.type`, { value: show(tool["type"]) });
    const fn = tool["function"];
    checkFields(fn, RULES.function_fields, `${at}.function`);
    const name = functionName(fn["name"], `${at}.function.name`);
    if (functions.some((f) => f.name === name)) throw specError("function_name_twice", `${at}.function.name`, { value: show(name) });
    const description = fn["description"] ?? null;
    if (description !== null && typeof description !== "string") {
      throw specError("bad_type", `${at}.function.description`, { expected: SPEC.expected["string"], got: typeName(description) });
    }
    const strict = fn["strict"] ?? null;
    if (strict !== null && typeof strict !== "boolean") {
      throw specError("bad_type", `${at}.function.strict`, { expected: SPEC.expected["boolean"], got: typeName(strict) });
    }
    const parameters = fn["parameters"] ?? RULES.default_parameters;
    checkSchema(parameters, `${at}.function.parameters`);
    functions.push({ name, parameters, description });
  });
  return functions;
}

/** none, auto, required, or the name of the function to call. */
export function checkToolChoice(value: unknown): string {
  if (typeof value === "string") {
    if (RULES.choices.includes(value)) return value;
    throw specError("tool_choice", "tool_choice", { value: show(value) });
  }
  if (!isRecord(value) || value["type"] !== "function" || !isRecord(value["function"])) throw specError("tool_choice", "tool_choice", { value: show(value) });
  checkFields(value, ["type", "function"], "tool_choice");
  const fn = value["function"];
  checkFields(fn, ["name"], "tool_choice.function");
  return functionName(fn["name"], "tool_choice.function.name");
}

/**
 * The request's checked tools, tool_choice and parallel_tool_calls as one plan (undefined: no
 * tools). The cross-field checks are the spec's rules, run before this.
 */
export function toolPlan(values: Map<string, unknown>): ToolPlan | undefined {
  const functions = (values.get("tools") as ToolFunction[] | undefined) ?? [];
  if (!functions.length) return undefined;
  const choice = (values.get("tool_choice") as string | undefined) ?? "auto";
  if (!RULES.choices.includes(choice) && !functions.some((f) => f.name === choice)) {
    throw specError("tool_choice_unknown", "tool_choice.function.name", { value: show(choice) });
  }
  return { functions, choice, parallel: (values.get("parallel_tool_calls") as boolean | undefined) ?? true };
}

/** A call of an assistant message, as the template gets it (arguments parsed). */
export interface TemplateToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: unknown };
}

/**
 * An assistant message's tool_calls, as the template gets them: each call's arguments parsed
 * from their JSON text (templates write them out with `tojson`).
 */
export function checkMessageToolCalls(value: unknown, param: string): TemplateToolCall[] {
  if (!Array.isArray(value)) throw specError("bad_type", param, { expected: SPEC.expected["array"], got: typeName(value) });
  return value.map((call: unknown, i) => {
    const at = `${param}[${i}]`;
    checkFields(call, RULES.tool_call_fields, at);
    const callId = call["id"];
    if (typeof callId !== "string") throw specError("bad_type", `${at}.id`, { expected: SPEC.expected["string"], got: typeName(callId) });
    if (call["type"] !== "function") throw specError("tool_type", `${at}.type`, { value: show(call["type"]) });
    const fn = call["function"];
    checkFields(fn, RULES.tool_call_function_fields, `${at}.function`);
    const name = fn["name"];
    if (typeof name !== "string") throw specError("bad_type", `${at}.function.name`, { expected: SPEC.expected["string"], got: typeName(name) });
    const args = fn["arguments"];
    // As Python's check: a text that does not parse is refused, unless it strips to "null".
    let parsed: unknown = null;
    if (typeof args === "string") {
      try {
        parsed = JSON.parse(args);
      } catch {
        parsed = null;
      }
    }
    if (typeof args !== "string" || (parsed === null && pyStrip(args) !== "null")) {
      throw specError("tool_arguments", `${at}.function.arguments`, { value: show(args) });
    }
    return { id: callId, type: "function" as const, function: { name, arguments: parsed } };
  });
}

// ---------------------------------------------------------------------------------------------
// The template's call format

export interface CallFormat {
  name: string;
  open: string;
  close: string;
  separator: string;
  argumentsKey: string;
  parallel: boolean;
}

/** The text every call of `fmt` starts with, whichever function it calls. */
export function trigger(fmt: CallFormat): string {
  return fmt.open + '{"name": ';
}

/** The text a call of `fn` starts with, up to its arguments. */
export function callBegin(fmt: CallFormat, fn: string): string {
  return `${trigger(fmt)}${JSON.stringify(fn)}, "${fmt.argumentsKey}": `;
}

export function callEnd(fmt: CallFormat): string {
  return "}" + fmt.close;
}

/** The spec's call format `name` (a key of tool_calling.formats). */
export function namedCallFormat(name: string): CallFormat {
  const f = RULES.formats[name];
  if (!f) throw new Error(`request_spec.json has no tool call format "${name}"`);
  return { name, open: f.open, close: f.close, separator: f.separator, argumentsKey: f.arguments_key, parallel: f.parallel };
}

/** The call format a chat template renders tools in; [null, why] when it renders none. */
export function callFormat(templateSource: string | null): [CallFormat | null, string] {
  // \b is ASCII here and Unicode in Python's re: they differ only beside a non-ASCII letter.
  if (!templateSource || !new RegExp(RULES.template_uses_tools).test(templateSource)) return [null, RULES.why["no_tools"]!];
  for (const name of RULES.detect_order) {
    if (templateSource.includes(RULES.formats[name]!.detect)) return [namedCallFormat(name), ""];
  }
  return [null, RULES.why["no_format"]!];
}

/** An XGrammar structural tag (the JSON object compileStructuralTag takes). */
export type StructuralTag = { type: "structural_tag"; format: Record<string, unknown> };

/**
 * The XGrammar structural tag of a plan's calls; `schemaGrammar` turns a parameters schema into
 * XGrammar's EBNF with structured_output's JSON options (same text on both sides).
 */
export function structuralTag(plan: ToolPlan, fmt: CallFormat, schemaGrammar: (schema: unknown) => string): StructuralTag {
  const named = !RULES.choices.includes(plan.choice);
  const functions = plan.functions.filter((f) => !named || f.name === plan.choice);
  const tags = functions.map((f) => ({
    type: "tag", begin: callBegin(fmt, f.name), content: { type: "grammar", grammar: schemaGrammar(f.parameters) }, end: callEnd(fmt),
  }));
  const one = named || !(plan.parallel && fmt.parallel);
  const body =
    plan.choice === "auto"
      ? { type: "triggered_tags", triggers: [trigger(fmt)], tags, at_least_one: false, stop_after_first: one }
      : { type: "tags_with_separator", tags, separator: fmt.separator, at_least_one: true, stop_after_first: one };
  return { type: "structural_tag", format: body };
}

// ---------------------------------------------------------------------------------------------
// Parsing calls out of the generated text

/**
 * Where the JSON value starting at `start` ends (exclusive); -1 if the text stops first.
 * The value was generated under a JSON grammar, so only its extent is found here.
 */
export function jsonValueEnd(text: string, start: number): number {
  let depth = 0;
  let inString = false;
  let escaped = false;
  for (let i = start; i < text.length; i++) {
    const c = text[i]!;
    if (escaped) escaped = false;
    else if (inString) {
      if (c === "\\") escaped = true;
      else if (c === '"') {
        inString = false;
        if (depth === 0) return i + 1;
      }
    } else if (depth === 0 && i > start && ",}] \n\t".includes(c)) {
      return i; // the end of a number, true, false or null
    } else if (c === '"') inString = true;
    else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return -1;
}

/** A call parsed out of a choice's text. */
export interface ToolCall {
  index: number;
  id: string;
  name: string;
  arguments: string;
}

/** OpenAI's tool call object; a stream's deltas carry the call's index too. */
export function toolCallObject(call: ToolCall, withIndex: true): ToolCallDelta;
export function toolCallObject(call: ToolCall, withIndex: false): ChatToolCall;
export function toolCallObject(call: ToolCall, withIndex: boolean): ChatToolCall | ToolCallDelta {
  const out: ChatToolCall = { id: call.id, type: "function", function: { name: call.name, arguments: call.arguments } };
  return withIndex ? { index: call.index, ...out } : out;
}

/** A tool call of a response message. */
export interface ChatToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

/** A tool call of a stream's delta: the whole call, with its index. */
export interface ToolCallDelta extends ChatToolCall {
  index: number;
}

/**
 * One choice's text split into content and calls as it streams (`push`, then `finish`). Each
 * returns [content to emit, calls completed since the last call].
 */
export class ToolCallParser {
  text = "";
  readonly calls: ToolCall[] = [];
  /** text before this is emitted or dropped */
  private pos = 0;
  /** content of the current segment held back (only whitespace so far) */
  private segment = "";
  /** the current segment has shown non-whitespace and streams */
  private segmentOpen = false;
  private readonly trigger: string;

  constructor(
    readonly fmt: CallFormat,
    readonly names: readonly string[],
    readonly idPrefix: string,
  ) {
    this.trigger = trigger(fmt);
  }

  push(delta: string): [string, ToolCall[]] {
    this.text += delta;
    return this.advance(false);
  }

  finish(): [string, ToolCall[]] {
    return this.advance(true);
  }

  private advance(final: boolean): [string, ToolCall[]] {
    const content: string[] = [];
    const newCalls: ToolCall[] = [];
    for (;;) {
      const at = this.text.indexOf(this.trigger, this.pos);
      if (at < 0) {
        // No call starts here: what cannot begin one is content.
        const keep = final ? 0 : held(this.text.slice(this.pos), this.trigger);
        content.push(this.content(this.text.slice(this.pos, this.text.length - keep), final));
        this.pos = this.text.length - keep;
        break;
      }
      content.push(this.content(this.text.slice(this.pos, at), true));
      this.pos = at;
      const call = this.call(at);
      if (call === null) {
        // not complete yet, or malformed
        if (final) {
          content.push(this.content(this.text.slice(at), true));
          this.pos = this.text.length;
        }
        break;
      }
      const [name, args, end] = call;
      const made: ToolCall = { index: this.calls.length, id: `${this.idPrefix}_${this.calls.length}`, name, arguments: args };
      newCalls.push(made);
      this.calls.push(made);
      this.pos = end;
    }
    return [content.join(""), newCalls];
  }

  /**
   * Content text of the current segment: held while only whitespace, dropped if the segment
   * ends so; otherwise emitted with what was held.
   */
  private content(piece: string, segmentEnds: boolean): string {
    let out = "";
    if (this.segmentOpen) out = piece;
    else if (pyStrip(piece) !== "") {
      out = this.segment + piece;
      this.segmentOpen = true;
      this.segment = "";
    } else this.segment += piece;
    if (segmentEnds) {
      this.segment = "";
      this.segmentOpen = false;
    }
    return out;
  }

  /** [name, arguments text, end] of the call starting at `at`; null if incomplete or not a call. */
  private call(at: number): [string, string, number] | null {
    for (const name of this.names) {
      const begin = callBegin(this.fmt, name);
      if (this.text.startsWith(begin, at)) {
        const valueAt = at + begin.length;
        const valueEnd = jsonValueEnd(this.text, valueAt);
        if (valueEnd < 0 || !this.text.startsWith(callEnd(this.fmt), valueEnd)) return null;
        return [name, this.text.slice(valueAt, valueEnd), valueEnd + callEnd(this.fmt).length];
      }
    }
    return null;
  }
}

/** Length of the longest suffix of `text` that is a proper prefix of `trigger`. */
function held(text: string, trigger: string): number {
  for (let n = Math.min(trigger.length - 1, text.length); n > 0; n--) {
    if (trigger.startsWith(text.slice(-n))) return n;
  }
  return 0;
}

/** Python's str.strip(): its whitespace (str.isspace) differs from String.trim's. */
const PY_SPACE = "[\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const PY_STRIP = new RegExp(`^${PY_SPACE}+|${PY_SPACE}+$`, "g");

function pyStrip(text: string): string {
  return text.replace(PY_STRIP, "");
}

/**
 * The request protocol and sampling pipeline both engines run (REQUESTS.md), from
 * request_spec.json: a build-time copy of compiler/request_spec.json, which the native engine
 * reads too (compiler/request_spec.py is this module's twin). Besides the data, the helpers that
 * write the spec's error texts the way the Python side does (values as JSON).
 */
import RAW from "./request_spec.json" with { type: "json" };

export type Endpoint = "chat" | "completion";

export interface FieldSpec {
  endpoints: Endpoint[];
  type: string | Record<Endpoint, string>;
  min?: number;
  max?: number;
  min_exclusive?: boolean;
  default?: unknown;
  fallback?: number;
  engines: { native: string; web: string };
}

export interface ErrorSpec {
  message: string;
  code?: string;
}

export interface RequestSpec {
  spec_version: number;
  endpoints: Record<Endpoint, { path: string; required: string; id_prefix: string }>;
  fields: Record<string, FieldSpec>;
  rules: string[];
  limits: { max_stop_strings: number };
  stream_options_fields: string[];
  roles: string[];
  message_fields: string[];
  errors: Record<string, ErrorSpec>;
  expected: Record<string, string>;
  range_rules: Record<string, string>;
  refused: Record<string, string>;
  sampling: {
    greedy_below_temperature: number;
    processors: string[];
    exp: { underflow_below: number; inv_ln2: number; ln2_hi: number; ln2_lo: number; terms: number };
    log: { sqrt_half: number; terms: number };
    prng: { algorithm: string; gamma: string; mix1: string; mix2: string; float_bits: number };
  };
  context_window: { param: Record<Endpoint, string> };
  detokenizer: { prefix_tokens: number; skip_special_tokens: boolean; incomplete_char: string };
  scheduler: { admissions_per_turn: number; prefix_cache_sequences: number; min_prefix_tokens: number; reuse_needs_exact_paged_prefill: boolean };
  tool_calling: {
    template_uses_tools: string;
    detect_order: string[];
    formats: Record<string, { detect: string; open: string; close: string; separator: string; arguments_key: string; parallel: boolean }>;
    default_parameters: Record<string, unknown>;
    tool_fields: string[];
    function_fields: string[];
    tool_call_fields: string[];
    tool_call_function_fields: string[];
    choices: string[];
    finish_reason: string;
    why: Record<string, string>;
  };
  structured_output: {
    engine_version: string;
    any_whitespace: boolean;
    indent: number | null;
    separators: [string, string];
    strict_mode: boolean;
    json_object_schema: Record<string, unknown>;
    json_schema_fields: string[];
    response_format_fields: Record<string, string[]>;
    name_pattern: string;
    types: string[];
    schema_keywords: Record<string, string>;
    integer_only_keywords: string[];
    annotation_keywords: string[];
    value_kinds: Record<string, string>;
    vocab_types: Record<string, string>;
  };
}

export const SPEC = RAW as unknown as RequestSpec;

/** `value` as JSON (what Python's request_spec.show writes); undefined is null. */
export function show(value: unknown): string {
  return value === undefined ? "null" : (JSON.stringify(value) ?? "null");
}

/** The JSON type of `value` as error messages name it (an integral number is an integer). */
export function typeName(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value;
}

/** Fill `{name}` placeholders (numbers as String(number) writes them, as Python's js_number). */
export function formatMessage(template: string, values: Record<string, unknown>): string {
  let out = template;
  for (const [key, value] of Object.entries(values)) out = out.split(`{${key}}`).join(String(value));
  return out;
}

/** [message, code] of the spec's error `name`. */
export function errorText(name: string, values: Record<string, unknown>): [string, string | null] {
  const entry = SPEC.errors[name];
  if (!entry) throw new Error(`request_spec.json has no error "${name}"`);
  return [formatMessage(entry.message, values), entry.code ?? null];
}

/** The fields `kind` accepts, in checking order. */
export function endpointFields(kind: Endpoint): Array<[string, FieldSpec]> {
  return Object.entries(SPEC.fields).filter(([, f]) => f.endpoints.includes(kind));
}

export function fieldType(field: FieldSpec, kind: Endpoint): string {
  return typeof field.type === "string" ? field.type : field.type[kind];
}

/** The {rule} text of out_of_range for this type and bounds. */
export function rangeRule(type: string, lo: number | undefined, hi: number | undefined, loOpen: boolean): string {
  let key: string;
  if (type === "integer") key = lo !== undefined && hi !== undefined ? "integer_both" : lo !== undefined ? "integer_min" : "integer_max";
  else if (hi !== undefined) key = loOpen ? "number_open" : "number_closed";
  else key = loOpen ? "number_min_open" : "number_min";
  return formatMessage(SPEC.range_rules[key]!, { min: lo, max: hi });
}

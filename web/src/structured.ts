/**
 * Structured output: `response_format` (json_object, json_schema, grammar) checked and turned
 * into a per-choice token mask with XGrammar. Twin of compiler/structured.py; the rules are
 * request_spec.json "structured_output" (REQUESTS.md, "Structured output").
 *
 * @mlc-ai/web-xgrammar is the same C++ as the PyPI xgrammar the native engine uses, at the same
 * version, so a schema gives the same grammar and the same mask on both sides. It is 2.4 MB
 * (its wasm inlined), so it is loaded on the first structured request only: the package build
 * ships it beside dist/index.js as dist/xgrammar.js.
 */
import { InvalidRequestError } from "./errors.js";
import { isRecord as isObject, specError } from "./protocol.js";
import { SPEC, show, typeName } from "./request_spec.js";
import { structuralTag, type CallFormat, type StructuralTag, type ToolPlan } from "./tools.js";

export const RULES = SPEC.structured_output;
export const SCHEMA_PARAM = "response_format.json_schema.schema";

/**
 * A checked response_format: `kind` is text, json_object, json_schema or grammar; or the grammar
 * of a request's tool calls (kind tool_calls, made by the engine, not a request field).
 */
export interface ResponseFormat {
  kind: "text" | "json_object" | "json_schema" | "grammar" | "tool_calls";
  /** json_schema (json_object: the spec's json_object_schema) */
  schema?: unknown;
  /** grammar: XGrammar's EBNF */
  grammar?: string;
  name?: string;
  /** tool_calls: the functions and the choice */
  tools?: ToolPlan;
  /** tool_calls: the template's call format */
  callFormat?: CallFormat;
}

export function isConstrained(f: ResponseFormat | undefined): f is ResponseFormat {
  return f !== undefined && f.kind !== "text";
}

/** The structural tag of a tool_calls format, its schemas turned into grammars by `schemaGrammar`. */
function formatTag(f: ResponseFormat, schemaGrammar: (schema: unknown) => string): StructuralTag {
  if (!f.tools || !f.callFormat) throw new Error("internal: a tool_calls format without its tools or call format");
  return structuralTag(f.tools, f.callFormat, schemaGrammar);
}

/** What identifies the compiled grammar (the compile cache's key). */
function formatKey(f: ResponseFormat): string {
  if (f.kind === "grammar") return "grammar:" + f.grammar;
  if (f.kind === "tool_calls") return "tools:" + sortedJson(formatTag(f, sortedJson));
  return "schema:" + sortedJson(f.schema);
}

/** Compact JSON with sorted keys (Python's json.dumps(v, sort_keys=True, separators=(",", ":"))). */
export function sortedJson(v: unknown): string {
  if (Array.isArray(v)) return "[" + v.map(sortedJson).join(",") + "]";
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return "{" + Object.keys(o).sort().map((k) => JSON.stringify(k) + ":" + sortedJson(o[k])).join(",") + "}";
  }
  return JSON.stringify(v);
}

// ---------------------------------------------------------------------------------------------
// Checking the request field

/** The response_format field, checked: its type, its fields, and a schema's keywords. */
export function checkResponseFormat(value: unknown): ResponseFormat {
  if (!isObject(value)) throw specError("bad_type", "response_format", { expected: SPEC.expected["object"], got: typeName(value) });
  const kind = value["type"];
  const allowed = RULES.response_format_fields;
  if (typeof kind !== "string" || !(kind in allowed)) throw specError("response_format", "response_format.type", { value: show(kind) });
  const extra = Object.keys(value).filter((k) => !allowed[kind]!.includes(k)).sort();
  if (extra.length) throw specError("response_format_fields", `response_format.${extra[0]}`, { names: extra.join(", ") });
  if (kind === "text") return { kind: "text" };
  if (kind === "json_object") return { kind: "json_object", schema: RULES.json_object_schema };
  if (kind === "grammar") {
    const grammar = value["grammar"];
    if (typeof grammar !== "string") throw specError("bad_type", "response_format.grammar", { expected: SPEC.expected["string"], got: typeName(grammar) });
    if (grammar.trim() === "") throw specError("grammar_invalid", "response_format.grammar", { detail: "the grammar is empty." });
    return { kind: "grammar", grammar };
  }
  return jsonSchema(value["json_schema"]);
}

function jsonSchema(spec: unknown): ResponseFormat {
  const param = "response_format.json_schema";
  if (!isObject(spec)) throw specError("bad_type", param, { expected: SPEC.expected["object"], got: typeName(spec) });
  const extra = Object.keys(spec).filter((k) => !RULES.json_schema_fields.includes(k)).sort();
  if (extra.length) throw specError("response_format_fields", `${param}.${extra[0]}`, { names: extra.join(", ") });
  const name = spec["name"];
  if (typeof name !== "string" || !new RegExp(RULES.name_pattern).test(name)) throw specError("json_schema_name", `${param}.name`, { value: show(name) });
  for (const [field, kind] of [["description", "string"], ["strict", "boolean"]] as const) {
    const v = spec[field];
    if (v !== undefined && v !== null && typeName(v) !== kind) throw specError("bad_type", `${param}.${field}`, { expected: SPEC.expected[kind], got: typeName(v) });
  }
  const schema = spec["schema"] ?? {};
  checkSchema(schema, SCHEMA_PARAM);
  return { kind: "json_schema", schema, name };
}

/**
 * Every keyword of `schema` and its subschemas is one the spec supports, with a value of its
 * kind. The error names the JSON path of what is wrong.
 */
export function checkSchema(schema: unknown, path: string): void {
  if (typeof schema === "boolean") return;
  if (!isObject(schema)) throw specError("schema_not_object", path, { got: typeName(schema) });
  for (const [key, value] of Object.entries(schema)) {
    const at = `${path}.${key}`;
    if (RULES.annotation_keywords.includes(key)) continue;
    const kind = RULES.schema_keywords[key];
    if (kind === undefined) throw specError("schema_keyword", at, { keyword: key });
    if (RULES.integer_only_keywords.includes(key) && schema["type"] !== "integer") throw specError("schema_integer_only", at, { keyword: key });
    checkValue(kind, key, value, at);
  }
}

function checkValue(kind: string, keyword: string, value: unknown, at: string): void {
  const bad = () => specError("schema_value", at, { expected: RULES.value_kinds[kind], keyword, value: show(value) });
  switch (kind) {
    case "schema":
      if (!isObject(value) && typeof value !== "boolean") throw bad();
      return checkSchema(value, at);
    case "schema_map":
      if (!isObject(value)) throw bad();
      for (const [name, sub] of Object.entries(value)) checkSchema(sub, `${at}.${name}`);
      return;
    case "schema_array":
      if (!Array.isArray(value) || value.length === 0) throw bad();
      value.forEach((sub, i) => checkSchema(sub, `${at}[${i}]`));
      return;
    case "type": {
      const names = Array.isArray(value) ? value : [value];
      if (names.length === 0 || !names.every((n) => typeof n === "string")) throw bad();
      for (const n of names) if (!RULES.types.includes(n)) throw specError("schema_type", at, { value: show(n), types: RULES.types.join(", ") });
      return;
    }
    case "string_array":
      if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) throw bad();
      return;
    case "array":
      if (!Array.isArray(value) || value.length === 0) throw bad();
      return;
    case "count":
      if (typeName(value) !== "integer" || (value as number) < 0) throw bad();
      return;
    case "number":
      if (typeof value !== "number" || !Number.isFinite(value)) throw bad();
      return;
    case "string":
      if (typeof value !== "string") throw bad();
      return;
  }
}

// ---------------------------------------------------------------------------------------------
// The vocabulary XGrammar needs, from the model's tokenizer.json

interface Component {
  type?: string;
  decoders?: Component[];
  pretokenizers?: Component[];
  normalizers?: Component[];
  [key: string]: unknown;
}

/** A tokenizer.json component and, for a Sequence, its members (flattened). */
function components(node: unknown): Component[] {
  if (!isObject(node)) return [];
  const c = node as Component;
  const out = [c];
  for (const key of ["decoders", "pretokenizers", "normalizers"] as const) for (const sub of c[key] ?? []) out.push(...components(sub));
  return out;
}

/** (encoded vocab by id padded to vocabSize, vocab type, prepend space), by the spec's rule. */
export function vocabulary(tokenizerJson: Record<string, unknown>, vocabSize: number): { tokens: string[]; vocabType: string; prependSpace: boolean } {
  const model = (tokenizerJson["model"] ?? {}) as { vocab?: Record<string, number> | Array<[string, number]> };
  const table = model.vocab ?? {};
  const tokens: string[] = new Array(vocabSize).fill("");
  const put = (i: number, text: string) => {
    if (i >= 0 && i < vocabSize) tokens[i] = text;
  };
  if (Array.isArray(table)) table.forEach(([text], i) => put(i, text));
  else for (const [text, i] of Object.entries(table)) put(i, text);
  for (const added of (tokenizerJson["added_tokens"] ?? []) as Array<{ id: number; content: string }>) put(added.id, added.content);
  const decoderTypes = new Set(components(tokenizerJson["decoder"]).map((c) => c.type));
  let vocabType = "raw";
  for (const [name, t] of Object.entries(RULES.vocab_types)) {
    if (decoderTypes.has(name)) {
      vocabType = t;
      break;
    }
  }
  return { tokens, vocabType, prependSpace: prependsSpace(tokenizerJson) };
}

function prependsSpace(tokenizerJson: Record<string, unknown>): boolean {
  for (const c of components(tokenizerJson["pre_tokenizer"])) {
    if (c.type !== "Metaspace") continue;
    if ("prepend_scheme" in c ? c["prepend_scheme"] !== "never" : c["add_prefix_space"] ?? true) return true;
  }
  return components(tokenizerJson["normalizer"]).some((c) => c.type === "Prepend" && c["prepend"] === "\u2581");
}

// ---------------------------------------------------------------------------------------------
// XGrammar, loaded on first use

/* eslint-disable @typescript-eslint/no-explicit-any */
type XGrammar = any;
let xgrammarModule: Promise<XGrammar> | undefined;

async function loadXGrammar(): Promise<XGrammar> {
  xgrammarModule ??= (async () => {
    const g = globalThis as Record<string, unknown>;
    const proc = g["process"] as { versions?: { node?: string }; cwd(): string } | undefined;
    if (proc?.versions?.node) {
      // Its Emscripten loader reads `require` and `__filename` under Node (an ES module has neither).
      const spec = ["node", "module"].join(":");
      const mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ spec)) as { createRequire(url: string): unknown };
      g["require"] ??= mod.createRequire(import.meta.url);
      g["__filename"] ??= proc.cwd() + "/xgrammar.js";
    }
    // A UMD bundle: loaded as an ES module it defines globalThis.xgrammar.
    const m = (await import("@mlc-ai/web-xgrammar")) as XGrammar;
    return m?.GrammarCompiler ? m : m?.default?.GrammarCompiler ? m.default : g["xgrammar"];
  })();
  return xgrammarModule;
}

/** XGrammar's message without its log prefix ("[time] file.cc:line: "). */
function xgrammarDetail(e: unknown): string {
  const text = String((e as Error)?.message ?? e).trim();
  const line = text.split("\n")[0] || (e as Error)?.name || "error";
  return line.replace(/^\[[^\]]*\]\s*\S+:\d+:\s*/, "");
}

/** indent -1 is XGrammar's JS spelling of "no indent" (Python's None). */
function jsIndent(): number {
  return RULES.indent === null ? -1 : RULES.indent;
}

/** A JSON Schema as XGrammar's EBNF text, with the spec's JSON options (Python's str(Grammar)). */
export async function schemaGrammar(schema: unknown): Promise<string> {
  const xgr = await loadXGrammar();
  const grammar = await xgr.Grammar.fromJSONSchema(JSON.stringify(schema), RULES.any_whitespace, jsIndent(), RULES.separators, RULES.strict_mode);
  try {
    return String(grammar.toString());
  } finally {
    grammar.dispose?.();
  }
}

/** One model's compiled grammars: XGrammar's compiler over its vocabulary, with a cache. */
export class GrammarCompiler {
  private compiler: Promise<XGrammar> | undefined;
  private readonly cache = new Map<string, Promise<XGrammar>>();

  constructor(
    private readonly tokenizerJson: Record<string, unknown>,
    private readonly vocabSize: number,
    private readonly stopTokenIds: readonly number[],
  ) {}

  private xgrCompiler(): Promise<XGrammar> {
    this.compiler ??= (async () => {
      const xgr = await loadXGrammar();
      const { tokens, vocabType, prependSpace } = vocabulary(this.tokenizerJson, this.vocabSize);
      const info = await xgr.TokenizerInfo.createTokenizerInfo(tokens, vocabType, prependSpace, this.vocabSize, [...this.stopTokenIds]);
      return xgr.GrammarCompiler.createGrammarCompiler(info, false);
    })();
    return this.compiler;
  }

  /** The compiled grammar of a constrained format; a bad schema or grammar is an InvalidRequestError. */
  compile(f: ResponseFormat): Promise<XGrammar> {
    const key = formatKey(f);
    let compiled = this.cache.get(key);
    if (!compiled) {
      compiled = this.compileNow(f);
      compiled.catch(() => this.cache.delete(key)); // a failed compile is not kept
      this.cache.set(key, compiled);
    }
    return compiled;
  }

  private async compileNow(f: ResponseFormat): Promise<XGrammar> {
    const compiler = await this.xgrCompiler();
    try {
      if (f.kind === "grammar") return await compiler.compileGrammar(f.grammar, "root");
      if (f.kind === "tool_calls") {
        // Each function's parameters as EBNF text first (XGrammar's JS API is async; Python's
        // structural_tag takes the conversion as a callback).
        const texts = new Map<unknown, string>();
        for (const [i, fn] of (f.tools?.functions ?? []).entries()) {
          try {
            texts.set(fn.parameters, await schemaGrammar(fn.parameters));
          } catch (e) {
            throw specError("schema_compile", `tools[${i}].function.parameters`, { detail: xgrammarDetail(e) });
          }
        }
        return await compiler.compileStructuralTag(JSON.stringify(formatTag(f, (schema) => texts.get(schema)!)));
      }
      return await compiler.compileJSONSchema(JSON.stringify(f.schema), RULES.any_whitespace, jsIndent(), RULES.separators, RULES.strict_mode);
    } catch (e) {
      if (e instanceof InvalidRequestError) throw e; // a function's parameters, named above
      const detail = xgrammarDetail(e);
      if (f.kind === "grammar") throw specError("grammar_invalid", "response_format.grammar", { detail });
      throw specError("schema_compile", f.kind === "tool_calls" ? "tools" : SCHEMA_PARAM, { detail });
    }
  }

  async matcher(compiled: XGrammar): Promise<GrammarMatcher> {
    const xgr = await loadXGrammar();
    return new GrammarMatcher(await xgr.GrammarMatcher.createGrammarMatcher(compiled));
  }
}

/** One choice's position in its grammar: the allowed tokens next, and accepting a token. */
export class GrammarMatcher {
  private next: Int32Array | undefined;

  constructor(private readonly matcher: XGrammar) {}

  /** Compute the mask for the next token (the engine calls it while the forward pass runs). */
  async prepare(): Promise<void> {
    // A copy: XGrammar may hand back a view of its wasm memory, which the next call reuses.
    this.next ??= ((await this.matcher.getNextTokenBitmask()) as Int32Array).slice();
  }

  /** XGrammar's bitmask of the tokens allowed next (bit t of word t >> 5); after prepare(). */
  allowed(): Int32Array {
    if (!this.next) throw new Error("internal: the grammar mask was not prepared");
    return this.next;
  }

  accept(tokenId: number): void {
    this.next = undefined;
    if (!this.matcher.acceptToken(tokenId)) throw new Error(`the grammar refused token ${tokenId}, which its own mask allowed`);
  }

  dispose(): void {
    this.matcher.dispose?.();
  }
}

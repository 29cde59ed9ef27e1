// Function calling (request_spec.json "tool_calling", the native engine's compiler/tools.py):
// the native engine's fixture (tests/fixtures/tool_cases.json) replayed exactly (call formats
// read off templates, structural tags, the streaming parser, templates rendering tools and
// calls), then the engine end to end on a fake model whose vocabulary can spell a call.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { InvalidRequestError } from "../src/errors.js";
import { parseChatRequest, type ChatCompletionChunk, type ChatCompletionTool } from "../src/protocol.js";
import { sortedJson } from "../src/structured.js";
import { ChatTemplate } from "../src/template.js";
import { ToolCallParser, callFormat, type ToolCall, checkTools, forTemplate, namedCallFormat, structuralTag, toolCallObject } from "../src/tools.js";
import { TextTokenizer } from "../src/tokenizer.js";
import { SIMPLE_TEMPLATE, TOKENIZER_CONFIG, TOKENIZER_JSON, fakeEngine } from "./helpers.js";

const FIXTURE = JSON.parse(readFileSync(new URL("../../../tests/fixtures/tool_cases.json", import.meta.url), "utf8"));

test("tool_cases: the call format read off each template, or why there is none", () => {
  for (const t of FIXTURE.templates) {
    const [fmt, why] = callFormat(t.source);
    assert.deepEqual([fmt?.name ?? null, why], [t.format, t.why], t.name);
  }
});

test("tool_cases: the structural tag of every tool_choice, format and parallel_tool_calls", () => {
  const functions = checkTools(FIXTURE.tools);
  // The fixture's stand-in for XGrammar's EBNF: the schema's sorted compact JSON.
  const grammar = (schema: unknown) => "root ::= " + sortedJson(schema);
  for (const c of FIXTURE.structural_tags) {
    const tag = structuralTag({ functions, choice: c.choice, parallel: c.parallel }, namedCallFormat(c.format), grammar);
    assert.deepEqual(tag, c.tag, `${c.format}, ${c.choice}, parallel ${c.parallel}`);
    // Compiled as JSON text: the keys in the order written, as Python's json.dumps writes them.
    assert.equal(JSON.stringify(tag), JSON.stringify(c.tag), `${c.format}, ${c.choice}: key order`);
  }
});

test("tool_cases: texts pushed in pieces give the same content and calls at every step", () => {
  for (const c of FIXTURE.parses) {
    const parser = new ToolCallParser(namedCallFormat(c.format), c.names, c.id_prefix);
    const steps = [...c.pieces.map((p: string) => parser.push(p)), parser.finish()];
    const got = steps.map(([content, calls]: [string, ToolCall[]]) => ({ content, calls: calls.map((x) => toolCallObject(x, true)) }));
    assert.deepEqual(got, c.steps, c.name);
  }
});

test("tool_cases: templates render tools and a conversation with calls as natively", () => {
  const plan = parseChatRequest({ messages: [{ role: "user", content: "hi" }], tools: FIXTURE.tools }).tools!;
  for (const r of FIXTURE.renders) {
    assert.deepEqual(forTemplate(plan), r.tools, `${r.template}: the tools variable`);
    const text = new ChatTemplate(r.source, r.special_tokens).render(r.messages, true, r.tools);
    assert.equal(text, r.text, r.template);
  }
});

// ---------------------------------------------------------------------------------------------
// The engine on a fake model

/** A word-level vocabulary that spells a Hermes call (the pre-tokenizer splits at \w+ and each other character). */
const WORDS = ["user", "assistant", "tool", ":", "\n", " ", "hi", "Let", "me", "check", "It", "is", "noon", ".", "<", ">", "/", "tool_call",
  "{", "}", '"', ",", "name", "arguments", "get_weather", "get_time", "city", "Paris"];
const VOCAB: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 };
WORDS.forEach((w, i) => (VOCAB[w] = i + 3));
const CALL_TOKENIZER = { ...TOKENIZER_JSON, model: { ...TOKENIZER_JSON.model, vocab: VOCAB } };
const callTokenizer = () => new TextTokenizer(CALL_TOKENIZER, TOKENIZER_CONFIG, { bos: 1, eos: [2] });

/** SIMPLE_TEMPLATE plus tools and Hermes calls: the engine reads the call format off `<tool_call>`. */
const TOOLS_TEMPLATE =
  "{% if tools %}{% for t in tools %}{{ t.function.name }}\n{% endfor %}{% endif %}" +
  "{% for m in messages %}{{ m.role }}:{{ m.content }}" +
  "{% for c in m.tool_calls or [] %}<tool_call>\n{{ c.function | tojson }}\n</tool_call>{% endfor %}{{ '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}assistant:{% endif %}";

const TOOLS: ChatCompletionTool[] = [
  { type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } },
  { type: "function", function: { name: "get_time" } },
];
const CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>';
const USER = [{ role: "user" as const, content: "hi" }];

function toolsEngine(reply: string, template = TOOLS_TEMPLATE, chatTemplate?: string) {
  return fakeEngine(reply, { chat_template: template, context_window_size: 256 }, { tokenizerJson: CALL_TOKENIZER, engineConfig: chatTemplate ? { chatTemplate } : {} });
}

/** The call id the native engine gives: call_ + the request id after its prefix + _choice_call. */
const callId = (requestId: string, choice: number, call: number) => `call_${requestId.slice(requestId.indexOf("-") + 1)}_${choice}_${call}`;

test("a named tool_choice returns the call parsed from the output, finish_reason tool_calls", async () => {
  const { engine } = toolsEngine(CALL);
  const r = await engine.chat.completions.create({
    messages: USER, tools: TOOLS, tool_choice: { type: "function", function: { name: "get_weather" } }, return_token_ids: true,
  });
  const c = r.choices[0]!;
  assert.deepEqual(c.message, {
    role: "assistant", content: null,
    tool_calls: [{ id: callId(r.id, 0, 0), type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } }],
  });
  assert.equal(c.finish_reason, "tool_calls");
  assert.equal(c.token_ids!.at(-1), 2, "the grammar ends after the one call: EOS");
  // The prompt rendered the tools (the template's `tools` variable).
  assert.equal(callTokenizer().decode(r.prompt_token_ids!), "get_weather\nget_time\nuser:hi\nassistant:");
});

test("streaming sends the call whole in one delta, then finish_reason tool_calls; ids ride the next chunk", async () => {
  const { engine } = toolsEngine(CALL);
  const body = { messages: USER, tools: TOOLS, tool_choice: { type: "function" as const, function: { name: "get_weather" } }, return_token_ids: true };
  const whole = await engine.chat.completions.create(body);
  const chunks: ChatCompletionChunk[] = [];
  for await (const chunk of await engine.chat.completions.create({ ...body, stream: true })) chunks.push(chunk);
  const deltas = chunks.map((ch) => ch.choices[0]!);
  assert.deepEqual(deltas[0]!.delta, { role: "assistant", content: "" });
  const withCalls = deltas.filter((d) => d.delta.tool_calls);
  assert.equal(withCalls.length, 1);
  assert.deepEqual(withCalls[0]!.delta.tool_calls, [
    { index: 0, id: callId(chunks[0]!.id, 0, 0), type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } },
  ]);
  assert.ok(deltas.every((d) => !d.delta.content), "no content: the call is all the choice wrote");
  assert.equal(deltas.at(-1)!.finish_reason, "tool_calls");
  assert.deepEqual(deltas.flatMap((d) => d.token_ids ?? []), whole.choices[0]!.token_ids, "every id is sent once");
});

test("tool_choice auto: prose and a call, or prose alone (finish_reason stop, no tool_calls)", async () => {
  const { engine } = toolsEngine("Let me check." + CALL);
  const r = await engine.chat.completions.create({ messages: USER, tools: TOOLS });
  assert.equal(r.choices[0]!.message.content, "Let me check.");
  assert.equal(r.choices[0]!.message.tool_calls?.[0]?.function.name, "get_weather");
  assert.equal(r.choices[0]!.finish_reason, "tool_calls");

  const plain = await toolsEngine("It is noon.").engine.chat.completions.create({ messages: USER, tools: TOOLS });
  assert.deepEqual(plain.choices[0]!.message, { role: "assistant", content: "It is noon." });
  assert.equal(plain.choices[0]!.finish_reason, "stop");
});

test("tools on a template that does not render them is the tools_template 400; tool_choice none still runs", async () => {
  const { engine } = toolsEngine("It is noon.", SIMPLE_TEMPLATE);
  await assert.rejects(engine.chat.completions.create({ messages: USER, tools: TOOLS }), (e: unknown) => {
    assert.ok(e instanceof InvalidRequestError, String(e));
    assert.equal(e.field, "tools");
    assert.equal(e.details["code"], "tools_not_supported");
    assert.match(e.message, /^This model's chat template does not render tools, so it cannot call functions\./);
    return true;
  });
  const r = await engine.chat.completions.create({ messages: USER, tools: TOOLS, tool_choice: "none" });
  assert.equal(r.choices[0]!.message.content, "It is noon.");
});

test("the chatTemplate option replaces the model's template: tools then work", async () => {
  const { engine } = toolsEngine(CALL, SIMPLE_TEMPLATE, TOOLS_TEMPLATE);
  const r = await engine.chat.completions.create({ messages: USER, tools: TOOLS, tool_choice: "required" });
  assert.equal(r.choices[0]!.message.tool_calls?.length, 1);
  assert.equal(r.choices[0]!.finish_reason, "tool_calls");
});

test("a conversation with calls and results renders through the template", async () => {
  const { engine } = toolsEngine("It is noon.");
  const r = await engine.chat.completions.create({
    messages: [
      ...USER,
      { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_time", arguments: "{}" } }] },
      { role: "tool", tool_call_id: "call_1", content: "noon" },
    ],
    tools: TOOLS, tool_choice: "none", return_token_ids: true,
  });
  assert.equal(r.choices[0]!.message.content, "It is noon.");
  // tool_choice none: the tools are not rendered, the calls in the conversation are (arguments parsed).
  assert.equal(
    callTokenizer().decode(r.prompt_token_ids!),
    'user:hi\nassistant:<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\ntool:noon\nassistant:',
  );
});

test("parameters XGrammar cannot compile are a 400 naming that function's parameters", async () => {
  const { engine } = toolsEngine(CALL);
  const bad: ChatCompletionTool = { type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { type: "string", pattern: "([" } }, required: ["a"] } } };
  await assert.rejects(engine.chat.completions.create({ messages: USER, tools: [TOOLS[0]!, bad], tool_choice: "required" }), (e: unknown) => {
    assert.ok(e instanceof InvalidRequestError, String(e));
    assert.equal(e.field, "tools[1].function.parameters");
    // XGrammar's wasm build aborts without its message (natively: "Unclosed '['").
    assert.match(e.message, /the schema cannot be turned into a grammar/);
    return true;
  });
});

// Structured output (request_spec.json "structured_output", the native engine's
// compiler/structured.py): the same vocabulary handed to XGrammar, and along each fixture path
// the same allowed tokens at every step (tests/fixtures/structured_cases.json, written from the
// native engine); then the engine end to end on a fake model: every answer is in the grammar.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { GrammarCompiler, vocabulary, type ResponseFormat } from "../src/structured.js";
import { InvalidRequestError } from "../src/errors.js";
import { namedCallFormat } from "../src/tools.js";
import { TOKENIZER_JSON, fakeEngine } from "./helpers.js";

const FIXTURES = new URL("../../../tests/fixtures/", import.meta.url);
const STORIES = new URL("../../../../shared/fixtures/stories260K/", import.meta.url);
const fixture = JSON.parse(readFileSync(new URL("structured_cases.json", FIXTURES), "utf8"));
const tokenizers: Record<string, Record<string, unknown>> = {
  stories260K: JSON.parse(readFileSync(new URL("tokenizer.json", STORIES), "utf8")),
  byte_level: fixture.tokenizers.byte_level,
};

const allowedIds = (bits: Int32Array, vocabSize: number): number[] => {
  const out: number[] = [];
  for (let t = 0; t < vocabSize; t++) if ((bits[t >>> 5]! >>> (t & 31)) & 1) out.push(t);
  return out;
};

test("the vocabulary XGrammar is given: tokens, vocab type and prepended space, as natively", () => {
  for (const [name, v] of Object.entries(fixture.vocabularies) as Array<[string, { vocab_size: number; vocab_type: string; prepend_space: boolean; tokens: string[] }]>) {
    const got = vocabulary(tokenizers[name]!, v.vocab_size);
    assert.equal(got.vocabType, v.vocab_type, name);
    assert.equal(got.prependSpace, v.prepend_space, name);
    assert.deepEqual(got.tokens, v.tokens, name);
  }
});

test("along each fixture path the grammar allows exactly the native engine's tokens", async () => {
  for (const c of fixture.cases) {
    const v = fixture.vocabularies[c.tokenizer];
    const compiler = new GrammarCompiler(tokenizers[c.tokenizer]!, v.vocab_size, v.eos);
    const f: ResponseFormat = { kind: c.format.kind, schema: c.format.schema ?? undefined, grammar: c.format.grammar ?? undefined };
    if (c.format.kind === "tool_calls") {
      // The engine's own format for a request's calls: the plan and the template's call format.
      f.tools = c.format.tools;
      f.callFormat = namedCallFormat(c.format.call_format);
    }
    const matcher = await compiler.matcher(await compiler.compile(f));
    for (const [i, step] of c.steps.entries()) {
      await matcher.prepare();
      assert.deepEqual(allowedIds(matcher.allowed(), v.vocab_size), step.allowed, `${c.name}, step ${i}`);
      if (v.eos.includes(step.token)) break;
      matcher.accept(step.token);
    }
  }
});

test("a grammar XGrammar cannot parse is a 400 naming response_format.grammar", async () => {
  const { engine } = fakeEngine("the cat", { max_batch_size: 2 });
  await assert.rejects(
    engine.chat.completions.create({ messages: [{ role: "user", content: "hi" }], response_format: { type: "grammar", grammar: "root ::= (" } }),
    (e: unknown) => e instanceof InvalidRequestError && e.field === "response_format.grammar",
  );
});

test("sampled answers all follow the grammar, and EOS ends them", async () => {
  const { engine, backend } = fakeEngine("x", { max_batch_size: 4 });
  backend.uniform = true; // every token equally likely: only the grammar shapes the answer
  // No token of the fake vocabulary is a dead-end prefix here ("c" would be one of "cat").
  const grammar = 'root ::= "the" " " ("sat" | "mat") (" " "on")? "."';
  const r = await engine.chat.completions.create({
    messages: [{ role: "user", content: "hello" }], n: 4, seed: 3, temperature: 1, max_tokens: 20, return_token_ids: true,
    response_format: { type: "grammar", grammar },
  });
  for (const c of r.choices) {
    assert.match(c.message.content ?? "", /^the (sat|mat)( on)?\.$/);
    assert.equal(c.finish_reason, "stop");
    assert.equal(c.token_ids!.at(-1), 2, "EOS ends a complete answer");
  }
  assert.ok(new Set(r.choices.map((c) => c.message.content)).size > 1, "seeds still choose among the grammar's answers");
  void TOKENIZER_JSON;
});

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { InvalidRequestError } from "../src/errors.js";
import { ChatTemplate } from "../src/template.js";

// The fixture the Python engine's tests run too (tests/fixtures/chat_template_cases.json).
interface Case {
  name: string;
  messages: { role: string; content: string }[];
  prompt?: string;
  error?: string;
}
const fixture = JSON.parse(readFileSync(new URL("../../../tests/fixtures/chat_template_cases.json", import.meta.url), "utf8")) as {
  template: string;
  special_tokens: Record<string, string>;
  cases: Case[];
};

for (const c of fixture.cases) {
  test(`chat template fixture: ${c.name}`, () => {
    const template = new ChatTemplate(fixture.template, fixture.special_tokens);
    if (c.prompt !== undefined) {
      assert.equal(template.render(c.messages), c.prompt);
      return;
    }
    assert.throws(
      () => template.render(c.messages),
      (e: unknown) => {
        assert.ok(e instanceof InvalidRequestError, `expected InvalidRequestError, got ${String(e)}`);
        assert.equal(e.message, c.error);
        assert.equal(e.field, "messages");
        return true;
      },
    );
  });
}

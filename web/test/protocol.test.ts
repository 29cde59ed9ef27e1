import assert from "node:assert/strict";
import { test } from "node:test";
import { InvalidRequestError } from "../src/errors.js";
import { parseChatRequest, parseCompletionRequest } from "../src/protocol.js";

const msgs = [{ role: "user", content: "hi" }];

function badField(body: unknown, field: string, pattern?: RegExp, parse: (b: unknown) => unknown = parseChatRequest): void {
  assert.throws(
    () => parse(body),
    (e: unknown) => {
      assert.ok(e instanceof InvalidRequestError, `expected InvalidRequestError, got ${String(e)}`);
      assert.equal(e.field, field, `field for ${JSON.stringify(body)}: ${e.message}`);
      if (pattern) assert.match(e.message, pattern);
      return true;
    },
  );
}

test("a minimal request parses with defaults left to the model", () => {
  const r = parseChatRequest({ messages: msgs });
  assert.deepEqual(r.messages, [{ role: "user", content: "hi" }]);
  assert.equal(r.stream, false);
  assert.equal(r.includeUsage, false);
  assert.equal(r.sampling.temperature, undefined);
  assert.deepEqual(r.sampling.stop, []);
});

test("all supported fields parse", () => {
  const r = parseChatRequest({
    messages: [
      { role: "system", content: "be brief" },
      { role: "user", content: [{ type: "text", text: "a" }, { type: "text", text: "b" }], name: "bob" },
      { role: "assistant", content: null },
    ],
    model: "m",
    stream: true,
    stream_options: { include_usage: true },
    temperature: 0.5,
    top_p: 0.9,
    max_tokens: 10,
    stop: "\n",
    seed: 42,
    frequency_penalty: 0.1,
    presence_penalty: -0.1,
    repetition_penalty: 1.1,
    logit_bias: { "5": -100, "7": 2 },
    n: 1,
    user: "u",
    ignore_eos: true,
    logprobs: true,
    top_logprobs: 3,
    response_format: { type: "text" },
    tool_choice: "none",
  });
  assert.equal(r.messages[1]!.content, "ab");
  assert.equal(r.messages[1]!.name, "bob");
  assert.equal(r.messages[2]!.content, "");
  assert.equal(r.includeUsage, true);
  assert.deepEqual(r.sampling.stop, ["\n"]);
  assert.equal(r.sampling.logit_bias.get(5), -100);
  assert.equal(r.sampling.seed, 42);
  assert.equal(r.sampling.topLogprobs, 3);
  assert.equal(r.model, "m");
});

test("null means not given", () => {
  const r = parseChatRequest({ messages: msgs, temperature: null, stop: null, max_tokens: null });
  assert.equal(r.sampling.temperature, undefined);
  assert.equal(r.sampling.max_tokens, undefined);
});

test("bad fields are named", () => {
  badField({ messages: msgs, temperature: "hot" }, "temperature", /expected a number, but got string/);
  badField({ messages: msgs, temperature: 2.5 }, "temperature", /\[0, 2\]/);
  badField({ messages: msgs, top_p: 0 }, "top_p", /\(0, 1\]/);
  badField({ messages: msgs, max_tokens: 0 }, "max_tokens");
  badField({ messages: msgs, max_tokens: 1.5 }, "max_tokens", /integer/);
  badField({ messages: msgs, seed: 0.5 }, "seed");
  badField({ messages: msgs, frequency_penalty: 3 }, "frequency_penalty");
  badField({ messages: msgs, presence_penalty: Number.NaN }, "presence_penalty", /finite/);
  badField({ messages: msgs, repetition_penalty: 0 }, "repetition_penalty");
  badField({ messages: msgs, maxTokens: 5 }, "maxTokens", /Unrecognized request argument/);
  badField({ messages: msgs, stream: "yes" }, "stream");
  badField({ messages: msgs, stream_options: { include_usage: true } }, "stream_options", /only allowed when 'stream' is true/);
  badField({ messages: msgs, stream: true, stream_options: { foo: 1 } }, "stream_options.foo");
  badField({ messages: msgs, stream: true, stream_options: { include_usage: 1 } }, "stream_options.include_usage");
  badField({ messages: msgs, stop: ["a", ""] }, "stop[1]", /must not be empty/);
  badField({ messages: msgs, stop: 5 }, "stop");
  badField({ messages: msgs, stop: Array(17).fill("x") }, "stop", /at most 16/);
  badField({ messages: msgs, logit_bias: { abc: 1 } }, "logit_bias", /not a token id/);
  badField({ messages: msgs, logit_bias: { "3": 101 } }, "logit_bias.3");
  badField({ messages: msgs, n: 129 }, "n", /between 1 and 128/);
  badField({ messages: msgs, max_tokens: 5, max_completion_tokens: 5 }, "max_completion_tokens");
  badField({ messages: msgs, top_logprobs: 2 }, "top_logprobs", /'logprobs' must be set/);
  badField({ messages: msgs, response_format: { type: "json" } as never }, "response_format.type");
  badField({ messages: msgs, tools: [{ type: "function" }] }, "tools[0].function", /expected an object/);
  badField({ messages: msgs, tool_choice: "required" }, "tool_choice", /needs 'tools'/);
});

test("bad messages are named", () => {
  badField({}, "messages", /Missing required parameter/);
  badField({ messages: [] }, "messages", /empty array/);
  badField({ messages: "hi" }, "messages", /array of messages/);
  badField({ messages: [{ role: "user", content: "a" }, { role: "robot", content: "b" }] }, "messages[1].role", /'robot'|"robot"/);
  badField({ messages: [{ content: "a" }] }, "messages[0].role", /Missing/);
  badField({ messages: [{ role: "user" }] }, "messages[0].content", /needs content/);
  badField({ messages: [{ role: "user", content: 5 }] }, "messages[0].content");
  badField({ messages: [{ role: "user", content: [{ type: "image_url", image_url: {} }] }] }, "messages[0].content[0].type", /only "text"/);
  badField({ messages: [{ role: "user", content: [{ type: "text", text: 1 }] }] }, "messages[0].content[0].text");
  badField({ messages: [{ role: "user", content: "a", extra: 1 }] }, "messages[0].extra");
  badField({ messages: [{ role: "assistant", content: "a", tool_calls: [{}] }] }, "messages[0].tool_calls[0].id");
  badField({ messages: [{ role: "user", content: "a", tool_calls: [] }] }, "messages[0].tool_calls", /only assistant messages/);
  badField({ messages: [{ role: "user", content: "a", name: 3 }] }, "messages[0].name");
  badField("nope", "", /must be a JSON object/);
});

test("completions requests", () => {
  const r = parseCompletionRequest({ prompt: "Once upon a time" });
  assert.equal(r.sampling.max_tokens, 16);
  assert.deepEqual(r.prompts, ["Once upon a time"]);
  assert.deepEqual(parseCompletionRequest({ prompt: [1, 2, 3], max_tokens: 4 }).prompts, [[1, 2, 3]]);
  // Several prompts, n choices each, and completion logprobs: as the native engine accepts them.
  const many = parseCompletionRequest({ prompt: ["a", [4, 5]], n: 2, logprobs: 2 });
  assert.deepEqual(many.prompts, ["a", [4, 5]]);
  assert.equal(many.n, 2);
  assert.equal(many.logprobs, 2);
  assert.ok(many.sampling.logprobs && many.sampling.topLogprobs === 2);
  badField({ prompt: [] }, "prompt", undefined, parseCompletionRequest);
  badField({ prompt: [1, -1] }, "prompt[1]", undefined, parseCompletionRequest);
  badField({ prompt: "x", suffix: "y" }, "suffix", undefined, parseCompletionRequest);
  badField({ prompt: "x", messages: [] }, "messages", /Unrecognized/, parseCompletionRequest);
  badField({ prompt: "x", logprobs: 6 }, "logprobs", /between 0 and 5/, parseCompletionRequest);
  badField({ prompt: "x", logprobs: 1, echo: true }, "logprobs", /echo/, parseCompletionRequest);
});

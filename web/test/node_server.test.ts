// The OpenAI-compatible HTTP server (src/node_server.ts) on the fake engine: routes, response and
// SSE shapes, error bodies (the native server's, compiler/serve/app.py), cancellation on a client
// disconnect, and the official `openai` JS client against it.
import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { after, test } from "node:test";
import OpenAI from "openai";
import type { Engine } from "../src/engine.js";
import { serve, type RunningServer, type ServerOptions } from "../src/node_server.js";
import { fakeEngine, type FakeBackend } from "./helpers.js";

const servers: RunningServer[] = [];
after(async () => {
  for (const s of servers) await s.close();
});

async function start(reply = "the cat sat.", options: ServerOptions = {}, over = {}): Promise<{ srv: RunningServer; engine: Engine; backend: FakeBackend }> {
  const { engine, backend } = fakeEngine(reply, over);
  const srv = await serve(engine, { port: 0, ...options });
  servers.push(srv);
  return { srv, engine, backend };
}

const USER = [{ role: "user", content: "hello world" }];

async function post(srv: RunningServer, path: string, body: unknown, raw?: string): Promise<Response> {
  return fetch(srv.url + path, { method: "POST", headers: { "content-type": "application/json" }, body: raw ?? JSON.stringify(body) });
}

/** The `data:` payloads of an SSE body, checking the framing on the way. */
function sseEvents(text: string): string[] {
  assert.ok(text.endsWith("\n\n"), "every event ends with a blank line");
  const events = text.slice(0, -2).split("\n\n");
  for (const e of events) assert.match(e, /^data: /);
  return events.map((e) => e.slice("data: ".length));
}

test("GET /v1/models and /health", async () => {
  const { srv } = await start("x", { healthInfo: () => ({ cache: { hits: 3 } }) });
  const models = await (await fetch(srv.url + "/v1/models")).json();
  assert.equal(models.object, "list");
  assert.equal(models.data.length, 1);
  assert.deepEqual({ ...models.data[0], created: 0 }, { id: "fake-model", object: "model", created: 0, owned_by: "sphere_aae" });
  assert.ok(Number.isInteger(models.data[0].created));
  const health = await (await fetch(srv.url + "/health")).json();
  assert.deepEqual(health, { status: "ok", model: "fake-model", active_sequences: 0, cache: { hits: 3 } });
  assert.equal(srv.host, "127.0.0.1");
});

test("POST /v1/chat/completions: JSON, as the engine returns it", async () => {
  const { srv, engine } = await start();
  const resp = await post(srv, "/v1/chat/completions", { messages: USER, return_token_ids: true });
  assert.equal(resp.status, 200);
  assert.match(resp.headers.get("content-type")!, /^application\/json/);
  const r = await resp.json();
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices[0].message.role, "assistant");
  assert.equal(r.choices[0].message.content, "the cat sat.");
  assert.equal(r.choices[0].finish_reason, "stop");
  assert.equal(r.usage.completion_tokens, r.choices[0].token_ids.length);
  const direct = await engine.chat.completions.create({ messages: USER as never, return_token_ids: true });
  assert.deepEqual(r.choices[0].token_ids, direct.choices[0]!.token_ids);
  assert.deepEqual(r.prompt_token_ids, direct.prompt_token_ids);
});

test("POST /v1/chat/completions stream: SSE chunks, then data: [DONE]", async () => {
  const { srv } = await start();
  const resp = await post(srv, "/v1/chat/completions", { messages: USER, stream: true, stream_options: { include_usage: true } });
  assert.equal(resp.status, 200);
  assert.match(resp.headers.get("content-type")!, /^text\/event-stream/);
  assert.equal(resp.headers.get("cache-control"), "no-cache");
  const events = sseEvents(await resp.text());
  assert.equal(events.at(-1), "[DONE]");
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
  for (const c of chunks) assert.equal(c.object, "chat.completion.chunk");
  assert.equal(chunks.map((c) => c.choices[0]?.delta.content ?? "").join(""), "the cat sat.");
  assert.equal(chunks.find((c) => c.choices[0]?.finish_reason)?.choices[0].finish_reason, "stop");
  assert.equal(chunks.at(-1).usage.completion_tokens > 0, true);
});

test("POST /v1/completions: JSON and SSE", async () => {
  const { srv } = await start();
  const r = await (await post(srv, "/v1/completions", { prompt: "a b", max_tokens: 3 })).json();
  assert.equal(r.object, "text_completion");
  assert.equal(r.choices[0].text, "the cat"); // "the", " ", "cat"
  assert.equal(r.choices[0].finish_reason, "length");
  const events = sseEvents(await (await post(srv, "/v1/completions", { prompt: "a b", stream: true })).text());
  assert.equal(events.at(-1), "[DONE]");
  assert.equal(events.slice(0, -1).map((e) => JSON.parse(e).choices[0]?.text ?? "").join(""), "the cat sat.");
});

test("errors: the engine's InvalidRequestError as an OpenAI error body, 400", async () => {
  const { srv, engine } = await start();
  const bad = { messages: USER, temperature: "hot" };
  const resp = await post(srv, "/v1/chat/completions", bad);
  assert.equal(resp.status, 400);
  const body = await resp.json();
  const e = await engine.chat.completions.create(bad as never).then(
    () => assert.fail("the engine accepted it"),
    (err: { message: string; details: Record<string, unknown> }) => err,
  );
  assert.deepEqual(body, { error: { message: e.message, type: "invalid_request_error", param: "temperature", code: e.details["code"] ?? null } });

  const unknown = await (await post(srv, "/v1/completions", { prompt: "a", bogus: 1 })).json();
  assert.equal(unknown.error.param, "bogus");
  assert.equal(unknown.error.type, "invalid_request_error");

  const model = await post(srv, "/v1/chat/completions", { messages: USER, model: "other" });
  assert.equal(model.status, 400);
  assert.equal((await model.json()).error.param, "model");

  // A JSON body that is not an object is the engine's to refuse.
  const arr = await post(srv, "/v1/chat/completions", [1, 2]);
  assert.equal(arr.status, 400);
  assert.match((await arr.json()).error.message, /must be a JSON object/);
});

test("errors: malformed JSON 400, oversized body 413, unknown route 404, wrong method 405", async () => {
  const { srv } = await start("x", { maxBodyBytes: 1000 });
  const malformed = await post(srv, "/v1/chat/completions", null, "{\"messages\": [");
  assert.equal(malformed.status, 400);
  const m = await malformed.json();
  assert.match(m.error.message, /^We could not parse the JSON body of your request: .*The body must be a JSON object\.$/);
  assert.deepEqual({ ...m.error, message: "" }, { message: "", type: "invalid_request_error", param: null, code: null });

  const big = await post(srv, "/v1/chat/completions", { messages: [{ role: "user", content: "x".repeat(5000) }] });
  assert.equal(big.status, 413);
  assert.equal((await big.json()).error.code, "413");

  const missing = await fetch(srv.url + "/v1/embeddings", { method: "POST", body: "{}" });
  assert.equal(missing.status, 404);
  assert.deepEqual(await missing.json(), { error: { message: "Unknown endpoint POST /v1/embeddings.", type: "invalid_request_error", param: null, code: "404" } });

  const method = await fetch(srv.url + "/v1/chat/completions");
  assert.equal(method.status, 405);
  assert.equal(method.headers.get("allow"), "POST");
  assert.deepEqual(await method.json(), {
    error: { message: "Method GET is not allowed on /v1/chat/completions.", type: "invalid_request_error", param: null, code: "405" },
  });
  assert.equal((await fetch(srv.url + "/health", { method: "POST" })).status, 405);
  // The server still answers after all that.
  assert.equal((await fetch(srv.url + "/health")).status, 200);
});

/** POST `body` and drop the connection once `n` response bytes arrived; resolves when dropped. */
function postThenDisconnect(srv: RunningServer, path: string, body: unknown, afterBytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(srv.url + path, { method: "POST", headers: { "content-type": "application/json" } }, (res) => {
      let got = 0;
      res.on("data", (c: Buffer) => {
        got += c.byteLength;
        if (got >= afterBytes) {
          req.destroy();
          resolve(res.statusCode ?? 0);
        }
      });
      res.on("end", () => reject(new Error("the response ended before the disconnect")));
    });
    req.on("error", () => undefined);
    req.end(JSON.stringify(body));
    if (afterBytes === 0) setTimeout(() => (req.destroy(), resolve(0)), 50);
  });
}

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 5));
  }
}

const LONG = "a b c ".repeat(40);

test("a client that disconnects mid-stream cancels its request", async () => {
  const { srv, engine, backend } = await start(LONG, {}, { context_window_size: 1024 });
  backend.delayMs = 10;
  const status = await postThenDisconnect(srv, "/v1/chat/completions", { messages: USER, stream: true, max_tokens: 200 }, 600);
  assert.equal(status, 200);
  assert.ok(backend.calls.some((c) => c.op === "decode"), "it was decoding");
  await until(() => engine.kvCacheStats().activeSequences === 0);
  await new Promise((r) => setTimeout(r, 50)); // a step already running may finish
  const decodes = backend.calls.filter((c) => c.op === "decode").length;
  assert.ok(decodes < 100, `stopped early (${decodes} decode steps)`);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(backend.calls.filter((c) => c.op === "decode").length, decodes, "no decoding after the cancel");
  // And the server goes on serving.
  const r = await (await post(srv, "/v1/completions", { prompt: "a", max_tokens: 2 })).json();
  assert.equal(r.choices[0].finish_reason, "length");
});

test("a client that disconnects while waiting for a JSON answer cancels its request too", async () => {
  const { srv, engine, backend } = await start(LONG, {}, { context_window_size: 1024 });
  backend.delayMs = 10;
  await postThenDisconnect(srv, "/v1/completions", { prompt: "a", max_tokens: 200 }, 0);
  await until(() => backend.calls.some((c) => c.op === "decode"));
  await until(() => engine.kvCacheStats().activeSequences === 0);
  const decodes = backend.calls.filter((c) => c.op === "decode").length;
  assert.ok(decodes < 100, `stopped early (${decodes} decode steps)`);
});

test("the official openai JS client: chat, streamed chat, completion, errors", async () => {
  const { srv } = await start();
  const client = new OpenAI({ baseURL: srv.url + "/v1", apiKey: "none", maxRetries: 0 });
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ["fake-model"]);
  const r = await client.chat.completions.create({ model: "fake-model", messages: [{ role: "user", content: "hello world" }] });
  assert.equal(r.choices[0]!.message.content, "the cat sat.");
  const stream = await client.chat.completions.create({ model: "fake-model", messages: [{ role: "user", content: "hello world" }], stream: true });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
  assert.equal(text, "the cat sat.");
  const c = await client.completions.create({ model: "fake-model", prompt: "a b", max_tokens: 3 });
  assert.equal(c.choices[0]!.text, "the cat");
  await assert.rejects(
    client.chat.completions.create({ model: "fake-model", messages: [{ role: "user", content: "hi" }], top_p: 7 }),
    (e: unknown) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.status, 400);
      assert.equal(e.param, "top_p");
      assert.equal(e.type, "invalid_request_error");
      return true;
    },
  );
});

// The official `openai` JS client (a devDependency) against an OpenAI-compatible server, e.g. the
// Node one (dist/node-server.js): lists the models, then runs one chat completion and the same
// request streamed, greedy. tests/test_web_node_server.py runs it; by hand:
//
//   node scripts/openai-client-check.mjs http://127.0.0.1:8000/v1 ["prompt"] [--max-tokens N]
//
// Prints one JSON object: {model, chat: {content, finish_reason, usage}, stream: {content,
// finish_reason, chunks, usage}}.
import OpenAI from "openai";

const args = process.argv.slice(2);
const i = args.indexOf("--max-tokens");
const maxTokens = i >= 0 ? Number(args.splice(i, 2)[1]) : 12;
const [baseURL, prompt = "Tell me a story."] = args;
if (!baseURL) {
  console.error("usage: node scripts/openai-client-check.mjs <base-url, e.g. http://127.0.0.1:8000/v1> [prompt] [--max-tokens N]");
  process.exit(2);
}

const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 600_000 });
const model = (await client.models.list()).data[0].id;
const request = { model, messages: [{ role: "user", content: prompt }], max_tokens: maxTokens, temperature: 0 };

const r = await client.chat.completions.create(request);
const chat = { content: r.choices[0].message.content, finish_reason: r.choices[0].finish_reason, usage: r.usage };

const stream = await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } });
const out = { content: "", finish_reason: null, chunks: 0, usage: null };
for await (const chunk of stream) {
  out.chunks++;
  out.content += chunk.choices[0]?.delta?.content ?? "";
  out.finish_reason = chunk.choices[0]?.finish_reason ?? out.finish_reason;
  if (chunk.usage) out.usage = chunk.usage;
}
console.log(JSON.stringify({ model, chat, stream: out }));

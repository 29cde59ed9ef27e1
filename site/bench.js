// Benchmark page: loads a model with the in-page engine and times load, prefill and decode.
//
// `aae-web bench` drives it step by step through window.aaeBench (so it can read the server's
// access log between steps); opened by hand, `bench.html?model=<id>[&adapter=compat][&device=wasm]
// [&max_tokens=N][&prompt=...]` runs every step and prints the result. device: the engine's
// EngineConfig.device ("wasm": the model's CPU library, "webgpu", default "auto").
//
// The engine runs on the page's thread, not in a worker: a benchmark page has no UI to keep
// responsive, and the adapter description is read straight from the engine.
import { Engine, GrammarCompiler } from "/web/dist/index.js";

const MODELS_JSON = new URL("/models/models.json", location.href);

const bench = {
  engine: null,
  modelId: null,
  log: [],

  /** Create the engine for `modelId` (listed in /models/models.json). */
  async configure({ modelId, requestAdapterOptions = null, device = null }) {
    const resp = await fetch(MODELS_JSON, { cache: "no-store" });
    if (!resp.ok) throw new Error(`${MODELS_JSON}: HTTP ${resp.status}`);
    const models = await resp.json();
    const model_list = models
      .filter((m) => !m.error)
      .map((m) => ({ ...m, model_url: new URL(m.model_url, MODELS_JSON).href }));
    if (!model_list.some((m) => m.model_id === modelId)) {
      throw new Error(`model ${modelId} is not in ${MODELS_JSON} (have: ${model_list.map((m) => m.model_id).join(", ")})`);
    }
    const config = { appConfig: { model_list }, logger: (m) => this.log.push(m) };
    if (requestAdapterOptions) config.requestAdapterOptions = requestAdapterOptions;
    if (device) config.device = device;
    this.engine = new Engine(config);
    this.modelId = modelId;
    return { userAgent: navigator.userAgent };
  },

  /** Load (or, after a first load, unload and load again); seconds until ready to generate. */
  async load() {
    if (this.engine.modelId) await this.engine.unload();
    const t0 = performance.now();
    await this.engine.reload(this.modelId);
    return { seconds: (performance.now() - t0) / 1000, adapter: this.engine.adapterInfo ?? "", device: this.engine.device ?? "" };
  },

  /**
   * One timed completion from an empty KV cache (so prefill covers the whole prompt), streamed so
   * the time to the first token is measured where a user would see it.
   */
  async generate({ prompt, maxTokens, temperature = 0, ignoreEos = true }) {
    await this.engine.resetChat();
    const t0 = performance.now();
    const stream = await this.engine.completions.create({
      prompt,
      max_tokens: maxTokens,
      temperature,
      ignore_eos: ignoreEos,
      stream: true,
      stream_options: { include_usage: true },
      return_token_ids: true,
    });
    let text = "";
    let firstTokenS = null;
    let promptIds = [];
    const ids = [];
    let usage = null;
    let finishReason = null;
    for await (const chunk of stream) {
      if (chunk.prompt_token_ids) promptIds = chunk.prompt_token_ids;
      const c = chunk.choices[0];
      if (c) {
        if (c.token_ids && c.token_ids.length && firstTokenS === null) firstTokenS = (performance.now() - t0) / 1000;
        ids.push(...(c.token_ids ?? []));
        text += c.text;
        if (c.finish_reason) finishReason = c.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    return { text, promptIds, ids, usage, finishReason, firstTokenS, seconds: (performance.now() - t0) / 1000 };
  },

  /**
   * What structured output costs per token: a seeded json_schema request, then its tokens replayed
   * through a fresh matcher of the same grammar, timing the mask and the accept of each (the work
   * the scheduler adds to a step), the fastest of three replays. As `sphere_aae bench --structured`.
   */
  async grammarCost({ schema, maxTokens }) {
    await this.engine.resetChat();
    const response_format = { type: "json_schema", json_schema: { name: "person", schema } };
    const r = await this.engine.chat.completions.create({
      messages: [{ role: "user", content: "Describe a person as JSON." }],
      temperature: 0.7, seed: 1, max_tokens: maxTokens, response_format, return_token_ids: true,
    });
    const config = this.engine.chatConfig;
    const record = (await (await fetch(MODELS_JSON, { cache: "no-store" })).json()).find((m) => m.model_id === this.modelId);
    const tokenizerJson = await (await fetch(new URL("tokenizer.json", new URL(record.model_url, MODELS_JSON)))).json();
    const grammars = new GrammarCompiler(tokenizerJson, config.model_config.vocab_size, config.eos_token_ids);
    const compiled = await grammars.compile({ kind: "json_schema", schema });
    const ids = r.choices[0].token_ids;
    let best = Infinity;
    for (let k = 0; k < 3; k++) {
      const matcher = await grammars.matcher(compiled);
      const t0 = performance.now();
      for (const t of ids) {
        await matcher.prepare();
        if (!config.eos_token_ids.includes(t)) matcher.accept(t);
      }
      best = Math.min(best, performance.now() - t0);
    }
    return { tokens: ids.length, finishReason: r.choices[0].finish_reason, grammarMsPerToken: best / ids.length, text: r.choices[0].message.content };
  },
};
window.aaeBench = bench;

async function runFromUrl() {
  const params = new URLSearchParams(location.search);
  const out = document.getElementById("out");
  const modelId = params.get("model");
  if (!modelId) {
    out.textContent = "Pass ?model=<model id> (see /models/models.json); &adapter=compat for a compatibility-mode adapter; &device=wasm for the CPU library.";
    return;
  }
  const say = (line) => (out.textContent += line + "\n");
  try {
    await bench.configure({
      modelId,
      requestAdapterOptions: params.get("adapter") === "compat" ? { featureLevel: "compatibility" } : null,
      device: params.get("device"),
    });
    const cold = await bench.load();
    say(`load ${cold.seconds.toFixed(2)} s on ${cold.device}: ${cold.adapter}`);
    const warm = await bench.load();
    say(`second load ${warm.seconds.toFixed(2)} s`);
    const prompt = params.get("prompt") || "Write a short poem about the sea.";
    const maxTokens = Number(params.get("max_tokens") || 32);
    await bench.generate({ prompt, maxTokens: 2 });
    const r = await bench.generate({ prompt, maxTokens });
    say(`time to first token ${r.usage.extra.time_to_first_token_s.toFixed(2)} s`);
    say(`prefill ${r.usage.prefill_tokens_per_s.toFixed(2)} tokens/s, decode ${r.usage.decode_tokens_per_s.toFixed(2)} tokens/s`);
    say(`\n${prompt}${r.text}`);
  } catch (e) {
    say(`${e && e.name ? e.name : "Error"}: ${e && e.message ? e.message : e}`);
  }
  document.body.dataset.state = "done";
}

// Driven by aae-web bench (?driven=1), the steps are called from outside.
if (!new URLSearchParams(location.search).has("driven")) runFromUrl();

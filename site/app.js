// Demo chat page. The engine lives in a module worker (worker.js); this file is only UI.
//
// URL parameters (handy for automation):
//   ?model=<id>      preselect a model        ?autoload=1   load it right away
//   ?adapter=compat  ask WebGPU for a compatibility-mode adapter (e.g. GLES/lavapipe)
//   ?device=wasm     run on the CPU library even where WebGPU works (?device=webgpu: never the CPU)
// document.body.dataset.state is idle | loading | ready | generating | error, and window.aae
// exposes the engine and chat state (window.aae.lastAnswer: the last reply's text, token ids,
// prompt token ids, finish reason and usage, for automation and debugging; window.aae.device:
// where the loaded model runs, "webgpu" or "wasm" (the CPU library), also shown after loading).
import {
  WebWorkerEngine,
  hasModelInCache,
  deleteModelFromCache,
} from "/web/dist/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  models: [],
  engine: null,
  worker: null,
  loadedId: null,
  messages: [],
  generating: false,
  lastAnswer: null,
  device: null,
  adapter: null,
};
window.aae = state;

function setState(s) {
  document.body.dataset.state = s;
  const ready = s === "ready";
  const busy = s === "loading" || s === "generating";
  $("model-select").disabled = busy || state.models.length === 0;
  $("load-btn").disabled = busy || state.models.length === 0;
  $("delete-cache-btn").disabled = busy || state.models.length === 0;
  $("prompt").disabled = !ready;
  $("send-btn").disabled = !ready;
  $("reset-btn").disabled = !ready;
  $("stop-btn").disabled = s !== "generating";
  $("prompt").placeholder = state.loadedId ? `Message ${state.loadedId}…  (Enter to send, Shift+Enter for a new line)` : "Load a model, then ask something…";
}

function showStatus(text) {
  $("status").textContent = text;
}

function describeError(e) {
  const name = e && e.name ? e.name : "Error";
  const hints = {
    WebGPUNotAvailableError: "This browser or device cannot run WebGPU.",
    FeatureNotSupportedError: "Your GPU lacks a feature this model build needs; pick another quantization.",
    QuotaExceededError: "Browser storage is full: delete cached models or free disk space.",
    NetworkError: "Downloading the model failed; check the server and try again.",
    DeviceLostError: "The GPU was reset; press Load to load the model again.",
    ContextWindowExceededError: "The conversation no longer fits in the model's context: start a new chat.",
    ModelNotFoundError: "The model folder was not found on the server.",
  };
  return `${name}: ${e && e.message ? e.message : String(e)}${hints[name] ? `\n${hints[name]}` : ""}`;
}

const mb = (bytes) => `${(bytes / 1048576).toFixed(bytes < 10 * 1048576 ? 1 : 0)} MB`;

const MODELS_JSON = new URL("/models/models.json", location.href);

function appConfig() {
  // models.json gives model_url relative to itself; make it absolute, since the worker would
  // resolve a relative URL against its own script.
  return {
    model_list: state.models
      .filter((m) => !m.error)
      .map((m) => ({ ...m, model_url: new URL(m.model_url, MODELS_JSON).href })),
  };
}

function engineOptions() {
  const opts = { appConfig: appConfig() };
  if (params.get("adapter") === "compat") opts.requestAdapterOptions = { featureLevel: "compatibility" };
  if (["auto", "webgpu", "wasm"].includes(params.get("device"))) opts.device = params.get("device");
  return opts;
}

async function refreshModelInfo() {
  const id = $("model-select").value;
  const m = state.models.find((x) => x.model_id === id);
  if (!m) {
    $("model-info").textContent = "";
    return;
  }
  const parts = [];
  if (m.quantization) parts.push(m.quantization);
  if (m.context_window_size) parts.push(`${m.context_window_size}-token context`);
  if (m.weights_bytes) parts.push(`${mb(m.weights_bytes)} of weights`);
  if (m.required_features && m.required_features.length) parts.push(`needs ${m.required_features.join(", ")}`);
  if (!m.has_chat_template) parts.push("base model (no chat format)");
  if (m.has_webgpu_lib === false) parts.push("no WebGPU library built yet");
  if (m.has_cpu_lib) parts.push("runs on the CPU without WebGPU (slower)");
  let cached = "";
  try {
    cached = (await hasModelInCache(id, appConfig())) ? "cached in this browser" : "not cached yet";
  } catch {
    cached = "";
  }
  if (cached) parts.push(cached);
  $("model-info").textContent = parts.join(" · ");
}

async function loadModelList() {
  const select = $("model-select");
  try {
    const resp = await fetch(MODELS_JSON, { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    state.models = await resp.json();
  } catch (e) {
    state.models = [];
    showStatus(`Could not read /models/models.json (${e.message}). Is aae-web serve running?`);
  }
  select.replaceChildren();
  for (const m of state.models) {
    const opt = document.createElement("option");
    opt.value = m.model_id;
    opt.textContent = m.error ? `${m.model_id} (unusable: ${m.error})` : m.model_id;
    opt.disabled = Boolean(m.error);
    select.append(opt);
  }
  if (state.models.length === 0) {
    const opt = document.createElement("option");
    opt.textContent = "no models built yet";
    select.append(opt);
  }
  const wanted = params.get("model");
  if (wanted && state.models.some((m) => m.model_id === wanted)) select.value = wanted;
  await refreshModelInfo();
}

function onProgress(report) {
  $("progress").value = report.progress;
  let text = report.text;
  if (report.phase === "ready" && report.device) {
    // The engine says where the model runs: WebGPU, or its CPU library where WebGPU cannot.
    state.device = report.device;
    state.adapter = report.adapter ?? null;
    // adapter for the CPU library: "CPU (WebAssembly, N threads)".
    const cpu = (report.adapter || "CPU (WebAssembly)").replace(/^CPU /, "");
    text += report.device === "wasm" ? ` · running on the CPU ${cpu}, slower than WebGPU` : ` · running on WebGPU (${report.adapter || "GPU"})`;
  }
  $("progress-text").textContent = text;
}

async function loadSelected() {
  const id = $("model-select").value;
  if (!id) return;
  setState("loading");
  showStatus("");
  $("progress").value = 0;
  state.device = null;
  state.adapter = null;
  try {
    if (!state.engine) {
      state.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
      state.engine = new WebWorkerEngine(state.worker, { initProgressCallback: onProgress });
    }
    await state.engine.configure(engineOptions());
    await state.engine.reload(id);
    state.loadedId = id;
    state.messages = [];
    $("chat-log").replaceChildren();
    $("stats").textContent = "";
    setState("ready");
    $("prompt").focus();
  } catch (e) {
    state.loadedId = null;
    showStatus(describeError(e));
    setState("error");
  }
  refreshModelInfo();
}

function addBubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("chat-log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function setBubbleText(bubble, text, meta) {
  bubble.textContent = text;
  if (meta) {
    const span = document.createElement("span");
    span.className = "meta";
    span.textContent = meta;
    bubble.append(span);
  }
  bubble.scrollIntoView({ block: "end" });
}

function readNumber(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

async function send(text) {
  if (!state.engine || state.generating || !text.trim()) return;
  const format = responseFormat();
  if (format === null) return;
  state.generating = true;
  setState("generating");
  showStatus("");
  state.messages.push({ role: "user", content: text });
  addBubble("user", text);
  const bubble = addBubble("assistant", "");
  bubble.classList.add("streaming");

  const system = $("system-prompt").value.trim();
  const request = {
    messages: system ? [{ role: "system", content: system }, ...state.messages] : [...state.messages],
    stream: true,
    stream_options: { include_usage: true },
    // Token ids ride along (window.aae.lastAnswer) so a test can compare ids, not only text.
    return_token_ids: true,
  };
  for (const [field, id] of [["temperature", "temperature"], ["top_p", "top-p"], ["max_tokens", "max-tokens"]]) {
    const v = readNumber(id);
    if (v !== undefined) request[field] = v;
  }
  if (format) request.response_format = format;

  let content = "";
  let finish = null;
  let usage = null;
  let promptIds = [];
  const ids = [];
  let pieces = 0;
  let firstAt = 0;
  try {
    const stream = await state.engine.chat.completions.create(request);
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (chunk.prompt_token_ids) promptIds = chunk.prompt_token_ids;
      if (choice && choice.token_ids) ids.push(...choice.token_ids);
      if (choice && choice.delta && choice.delta.content) {
        if (!firstAt) firstAt = performance.now();
        pieces++;
        content += choice.delta.content;
        setBubbleText(bubble, content);
        const secs = (performance.now() - firstAt) / 1000;
        if (secs > 0.5) $("stats").textContent = `~${(pieces / secs).toFixed(1)} tokens/s`;
      }
      if (choice && choice.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    state.messages.push({ role: "assistant", content });
    state.lastAnswer = { content, ids, promptIds, finish, usage };
    const notes = { length: "stopped: token limit reached", abort: "stopped" };
    setBubbleText(bubble, content, notes[finish] || "");
    if (usage) {
      $("stats").textContent =
        `${usage.completion_tokens} tokens · prefill ${usage.prefill_tokens_per_s.toFixed(1)} tok/s · ` +
        `decode ${usage.decode_tokens_per_s.toFixed(1)} tok/s`;
    }
  } catch (e) {
    // The user turn stays in the log but not in the history sent next time.
    state.messages.pop();
    setBubbleText(bubble, content, "failed");
    showStatus(describeError(e));
    if (e && e.name === "DeviceLostError") state.loadedId = null;
  } finally {
    bubble.classList.remove("streaming");
    state.generating = false;
    setState(state.loadedId ? "ready" : "error");
    if (state.loadedId) $("prompt").focus();
  }
}

/**
 * JSON mode: OpenAI's response_format, decoded under the schema's grammar (REQUESTS.md,
 * "Structured output"). undefined: off; null: the schema box is not valid JSON (said in the status).
 */
function responseFormat() {
  if (!$("json-mode").checked) return undefined;
  const text = $("json-schema").value.trim();
  if (!text) return { type: "json_object" };
  try {
    return { type: "json_schema", json_schema: { name: "page_schema", schema: JSON.parse(text), strict: true } };
  } catch (e) {
    showStatus(`The JSON Schema box is not valid JSON: ${e.message}`);
    return null;
  }
}

$("json-mode").addEventListener("change", () => {
  $("json-schema").disabled = !$("json-mode").checked;
});

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("chat-form").requestSubmit();
  }
});
$("stop-btn").addEventListener("click", () => state.engine && state.engine.interruptGenerate());
$("reset-btn").addEventListener("click", async () => {
  await state.engine.resetChat();
  state.messages = [];
  $("chat-log").replaceChildren();
  $("stats").textContent = "";
  showStatus("");
});
$("load-btn").addEventListener("click", loadSelected);
$("model-select").addEventListener("change", refreshModelInfo);
$("delete-cache-btn").addEventListener("click", async () => {
  const id = $("model-select").value;
  try {
    const n = await deleteModelFromCache(id, appConfig());
    showStatus("");
    $("progress-text").textContent = `Deleted ${n} cached file(s) of ${id}.`;
  } catch (e) {
    showStatus(describeError(e));
  }
  refreshModelInfo();
});

async function main() {
  setState("idle");
  if (!("gpu" in navigator)) {
    showStatus("This browser does not expose WebGPU (navigator.gpu): only models built with a CPU library can run here, slowly.");
  }
  await loadModelList();
  setState("idle");
  if (params.get("autoload") && state.models.length) await loadSelected();
}

main();

/**
 * Astro Agent Edge: run compiled LLMs in the browser on WebGPU, with an OpenAI-style API.
 *
 *     import { CreateEngine } from "/web/dist/index.js";
 *     const engine = await CreateEngine("SmolLM2-135M-Instruct-q4f32_1", { appConfig, initProgressCallback });
 *     const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: "Hi" }] });
 *
 * Everything here also works inside a module Web Worker (see worker.ts).
 */
export {
  CreateEngine,
  Engine,
  hasModelInCache,
  deleteModelFromCache,
  findModel,
  type AppConfig,
  type ModelRecord,
  type EngineConfig,
  type EngineInterface,
  type LoadedModel,
  type InitProgressReport,
  type InitProgressCallback,
  type RequestOptions,
} from "./engine.js";
export { ModelRuntime, TVMBackend, prefillChunkLength, kvCacheArgs, type ForwardBackend, type LibraryDevice } from "./model_runtime.js";
export { Scheduler, checkPrompts } from "./scheduler.js";
export { StopStringMatcher, TextStream } from "./text_stream.js";
export { GrammarCompiler, GrammarMatcher, checkResponseFormat, type ResponseFormat } from "./structured.js";
export { describeAdapter, deviceCandidates, type DevicePreference } from "./webgpu.js";
export {
  CreateWebWorkerEngine,
  WebWorkerEngine,
  WebWorkerEngineHandler,
  type WebWorkerEngineHandlerOptions,
  type WorkerEngineOptions,
  type WorkerLike,
} from "./worker.js";
export * from "./errors.js";
export * from "./protocol.js";
export {
  ArtifactLoader,
  CacheApiStore,
  IndexedDBStore,
  DEFAULT_CACHE_NAME,
  sha256Hex,
  type ByteStore,
  type EntryMeta,
  type LoadPhase,
  type LoadProgress,
  type LoaderOptions,
} from "./cache.js";
export {
  FORMAT_VERSION,
  CHAT_CONFIG_FILE,
  MANIFEST_FILE,
  parseChatConfig,
  parseManifest,
  type ChatConfig,
  type TensorManifest,
  type ShardEntry,
  type TensorEntry,
} from "./artifact.js";
export { Sampler, SplitMix64, type SampledToken, type SamplingParams } from "./sampling.js";
export { TextTokenizer, IncrementalDetokenizer } from "./tokenizer.js";
export { ChatTemplate } from "./template.js";
export { CreateServiceWorkerEngine, ServiceWorkerEngine, ServiceWorkerEngineHandler, type ServiceWorkerEngineOptions } from "./service_worker.js";
export { ToolCallParser, callFormat, type CallFormat, type ChatToolCall, type ToolCallDelta, type ToolPlan } from "./tools.js";

// WebLLM-compatible aliases, so existing pages port by changing the import line.
export { CreateEngine as CreateMLCEngine, Engine as MLCEngine } from "./engine.js";
export {
  CreateWebWorkerEngine as CreateWebWorkerMLCEngine,
  WebWorkerEngineHandler as WebWorkerMLCEngineHandler,
} from "./worker.js";

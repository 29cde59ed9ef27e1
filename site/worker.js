// The engine runs here, off the main thread: loading, tokenizing, sampling and GPU submission
// never freeze the page. The page talks to it through CreateWebWorkerEngine.
import { WebWorkerEngineHandler } from "/web/dist/index.js";

const handler = new WebWorkerEngineHandler();
self.onmessage = (msg) => handler.onmessage(msg);

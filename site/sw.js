// The engine as a service worker: a loaded model outlives page reloads and is shared by the
// origin's tabs. Pages connect with CreateServiceWorkerEngine (web/src/service_worker.ts).
import { ServiceWorkerEngineHandler } from "/web/dist/index.js";

new ServiceWorkerEngineHandler().listen(self);

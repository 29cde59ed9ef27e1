// The service worker engine: pages connect to one shared engine over MessageChannels, a second
// page reuses the loaded model, and a stopped worker is replaced (connect again, load again).
import assert from "node:assert/strict";
import { test } from "node:test";
import { ServiceWorkerEngine, ServiceWorkerEngineHandler } from "../src/service_worker.js";
import { fakeEngine } from "./helpers.js";

const USER = [{ role: "user" as const, content: "hello world" }];

/** A service worker instance: the handler over a fake engine whose reload counts and keeps the fake model. */
function worker(reply = "the cat sat.") {
  let reloads = 0;
  const handler = new ServiceWorkerEngineHandler({
    createEngine: (config) => {
      const { engine } = fakeEngine(reply);
      engine.updateConfig(config);
      engine.reload = async () => {
        reloads += 1;
      };
      return engine;
    },
  });
  const ports: MessagePort[] = [];
  const controller = {
    postMessage(data: unknown, transfer: MessagePort[]) {
      ports.push(transfer[0]!);
      handler.onmessage({ data, ports: transfer });
    },
  };
  /** The browser stops the worker: its ports stop answering. */
  const stop = () => ports.forEach((p) => p.close());
  return { handler, controller, stop, reloads: () => reloads };
}

function container(controller: unknown) {
  return { controller, ready: Promise.resolve() } as unknown as ServiceWorkerContainer;
}

test("a second page reuses the model the service worker holds; both pages are answered", async () => {
  const sw = worker();
  const modelId = sw.handler.engine.modelId!;
  const pageA = new ServiceWorkerEngine(container(sw.controller), { keepAliveMs: 60_000 });
  await pageA.configure();
  await pageA.reload(modelId);
  assert.deepEqual(pageA.lastLoad, { reused: false, loads: 1 });
  const pageB = new ServiceWorkerEngine(container(sw.controller), { keepAliveMs: 60_000 });
  await pageB.configure();
  await pageB.reload(modelId);
  assert.deepEqual(pageB.lastLoad, { reused: true, loads: 1 });
  assert.equal(sw.reloads(), 1, "one load for both pages");
  const [a, b] = await Promise.all([pageA, pageB].map((p) => p.chat.completions.create({ messages: USER, max_tokens: 4, temperature: 0 })));
  assert.equal(a!.choices[0]!.message.content, b!.choices[0]!.message.content);
  // Other options mean another load.
  const pageC = new ServiceWorkerEngine(container(sw.controller), { keepAliveMs: 60_000, maxBatchSize: 1 });
  await pageC.configure();
  await pageC.reload(modelId);
  assert.deepEqual(pageC.lastLoad, { reused: false, loads: 2 });
  [pageA, pageB, pageC].forEach((p) => p.close());
});

test("a stopped service worker is replaced: the page connects to the new one, which loads the model again", async () => {
  const first = worker();
  const modelId = first.handler.engine.modelId!;
  let controller: unknown = first.controller;
  const swContainer = { get controller() { return controller; }, ready: Promise.resolve() } as unknown as ServiceWorkerContainer;
  const page = new ServiceWorkerEngine(swContainer, { keepAliveMs: 60_000, pingTimeoutMs: 100 });
  await page.configure();
  await page.reload(modelId);
  assert.equal((await page.chat.completions.create({ messages: USER, max_tokens: 3, temperature: 0 })).choices.length, 1);

  first.stop();
  const second = worker();
  controller = second.controller; // the browser starts a new instance on the next message
  const r = await page.chat.completions.create({ messages: USER, max_tokens: 3, temperature: 0 });
  assert.equal(r.choices[0]!.finish_reason, "length");
  assert.equal(second.reloads(), 1, "the new instance loaded the model");
  assert.deepEqual(page.lastLoad, { reused: false, loads: 1 });
  page.close();
});

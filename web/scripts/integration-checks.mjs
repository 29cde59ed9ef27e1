// Request-level checks of the engine on a real compiled model, for any host that can load one:
// Node on Dawn (scripts/integration-node.mjs) and a browser page (tests/test_browser_integration.py
// adds this file to the page as a module script; it then sets window.aaeIntegrationChecks).
//
// What a fake backend cannot show: the reference continuation (stories260K), KV-cache reuse and
// popN back to a shared prefix on TVM's real paged cache (the same, a diverging and an extended
// prompt all give the text a fresh cache gives), chunked prefill, streaming, interrupt, seeds,
// concurrent requests decoded together (batch_decode) and cancelled one by one (AbortSignal,
// freeing their pages), and the context-window refusal. No imports: the host passes the package in, so the same file runs
// unbundled in Node and in a page.

// Reference from ../shared/fixtures/stories260K/README.md (transformers, fp32, greedy).
export const STORY_PROMPT = "Once upon a time";
export const STORY_40 =
  ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.";

class CheckFailed extends Error {}

const assert = {
  equal(actual, expected, what = "") {
    if (actual !== expected) {
      throw new CheckFailed(`${what ? what + ": " : ""}expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
    }
  },
  ok(value, what = "expected a truthy value") {
    if (!value) throw new CheckFailed(what);
  },
  async rejects(promise, errorClass) {
    try {
      await promise;
    } catch (e) {
      if (e instanceof errorClass) return;
      throw new CheckFailed(`expected ${errorClass.name}, got ${e && e.name}: ${e && e.message}`);
    }
    throw new CheckFailed(`expected ${errorClass.name}, but the call succeeded`);
  },
};

const greedy = (engine, prompt, max_tokens = 40, extra = {}) =>
  engine.completions.create({ prompt, max_tokens, temperature: 0, ...extra }).then((r) => r.choices[0].text);

/**
 * Run every check; returns the number of failures. `load(overrides)` must create an engine for
 * the model with `overrides` merged into its aae-chat-config.json (e.g. {prefill_chunk_size: 3});
 * `config` is the model's chat config; `log` receives one line per check.
 */
export async function runIntegrationChecks({ aae, load, config, log, quick = false }) {
  let failures = 0;
  const check = async (name, fn) => {
    const t = performance.now();
    try {
      await fn();
      log(`ok   ${name} (${((performance.now() - t) / 1000).toFixed(1)}s)`);
    } catch (e) {
      failures++;
      log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    }
  };
  const isStories = config.model_config.vocab_size === 512 && config.model_config.hidden_size === 64;
  log(`model ${config.model_id}${isStories ? " (stories260K reference checks on)" : ""}`);

  const engine = await load({});
  const fresh = await greedy(engine, STORY_PROMPT);

  await check("greedy output matches the reference", async () => {
    if (isStories) assert.equal(fresh, STORY_40);
    assert.ok(fresh.length > 0, "empty output");
  });
  if (quick) {
    await engine.unload();
    return failures;
  }

  await check("same prompt again (KV cache reused, one token re-run) gives the same text", async () => {
    assert.equal(await greedy(engine, STORY_PROMPT), fresh);
  });

  await check("a diverging prompt, then the original again, gives the fresh-cache text", async () => {
    await greedy(engine, "The dog", 10);
    assert.equal(await greedy(engine, STORY_PROMPT), fresh);
  });

  await check("an extended prompt continues like a fresh cache would", async () => {
    const head = STORY_PROMPT + fresh.slice(0, 20);
    const reused = await greedy(engine, head, 15);
    await engine.resetChat();
    assert.equal(await greedy(engine, head, 15), reused);
  });

  await check("streaming yields the same text and a usage chunk", async () => {
    const stream = await engine.completions.create({ prompt: STORY_PROMPT, max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let usage;
    for await (const c of stream) {
      text += c.choices[0]?.text ?? "";
      if (c.usage) usage = c.usage;
    }
    assert.equal(text, fresh);
    assert.equal(usage.completion_tokens, 40);
    assert.ok(usage.decode_tokens_per_s > 0 && usage.prefill_tokens_per_s > 0, "throughput missing from usage");
  });

  await check("chat API on a base model: the message is the prompt", async () => {
    const r = await engine.chat.completions.create({ messages: [{ role: "user", content: STORY_PROMPT }], max_tokens: 40, temperature: 0 });
    assert.equal(r.choices[0].message.content, fresh);
  });

  await check("interruptGenerate stops a stream with finish_reason abort", async () => {
    const stream = await engine.completions.create({ prompt: STORY_PROMPT, max_tokens: 200, temperature: 0, stream: true, ignore_eos: true });
    let n = 0;
    let finish;
    for await (const c of stream) {
      if (++n === 3) engine.interruptGenerate();
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(finish, "abort");
    assert.ok(n < 20, `${n} chunks after the interrupt`);
    assert.equal(await greedy(engine, STORY_PROMPT), fresh, "usable after an interrupt");
  });

  await check("seeded sampling is reproducible", async () => {
    const a = await greedy(engine, STORY_PROMPT, 20, { temperature: 1, seed: 7 });
    const b = await greedy(engine, STORY_PROMPT, 20, { temperature: 1, seed: 7 });
    assert.equal(a, b);
  });

  await check("a prompt over the context window is refused before running", async () => {
    const long = Array(config.context_window_size + 10).fill(3);
    await assert.rejects(engine.completions.create({ prompt: long, max_tokens: 1 }), aae.ContextWindowExceededError);
  });

  await check("a reused prefix spanning pages, then a prompt crossing a page edge, gives the fresh-cache text", async () => {
    const long = STORY_PROMPT + fresh; // ~45 tokens: three KV pages
    await engine.resetChat();
    await greedy(engine, long, 12);
    // Diverges after ~20 tokens (mid page 2), then ~25 new tokens cross into the next pages.
    const other = STORY_PROMPT + fresh.slice(0, 60) + " The dog was sad. It wanted to play with the big red ball in the park.";
    const reused = await greedy(engine, other, 12);
    await engine.resetChat();
    assert.equal(reused, await greedy(engine, other, 12));
  });

  await check("two concurrent requests (batch_decode) each equal their solo runs", async () => {
    const body = (prompt, seed) => ({ prompt, seed, max_tokens: 24, temperature: 1, top_p: 0.9, return_token_ids: true });
    const ids = (r) => JSON.stringify(r.choices[0].token_ids);
    await engine.resetChat();
    const soloA = ids(await engine.completions.create(body(STORY_PROMPT, 5)));
    await engine.resetChat();
    const soloB = ids(await engine.completions.create(body("The dog ran", 6)));
    await engine.resetChat();
    const [a, b] = await Promise.all([engine.completions.create(body(STORY_PROMPT, 5)), engine.completions.create(body("The dog ran", 6))]);
    assert.equal(ids(a), soloA, "request 1");
    assert.equal(ids(b), soloB, "request 2");
  });

  await check("aborting one request leaves the other unchanged and frees its KV pages", async () => {
    await engine.resetChat();
    const idle = engine.kvCacheStats();
    assert.ok(idle.freePages > 0 && idle.activeSequences === 0, `idle cache: ${JSON.stringify(idle)}`);
    const body = { prompt: "The dog ran", max_tokens: 30, temperature: 0, return_token_ids: true };
    const solo = JSON.stringify((await engine.completions.create(body)).choices[0].token_ids);
    await engine.resetChat();
    const controller = new AbortController();
    const doomed = await engine.completions.create({ prompt: STORY_PROMPT, max_tokens: 200, ignore_eos: true, temperature: 0, stream: true }, { signal: controller.signal });
    const other = engine.completions.create(body);
    let aborted = false;
    try {
      let n = 0;
      for await (const _ of doomed) if (++n === 4) controller.abort();
    } catch (e) {
      aborted = e.name === "AbortError";
    }
    assert.ok(aborted, "the aborted stream rejects with AbortError");
    assert.equal(JSON.stringify((await other).choices[0].token_ids), solo, "the other request");
    const after = engine.kvCacheStats();
    assert.equal(after.activeSequences, 0, "running sequences");
    await engine.resetChat();
    assert.equal(engine.kvCacheStats().freePages, idle.freePages, "free pages once the cache is dropped");
  });

  // Reference for the chunked-prefill check, from a fresh cache with full-size prefill chunks.
  const EXT = STORY_PROMPT + fresh.slice(0, 30);
  await engine.resetChat();
  const extRef = await greedy(engine, EXT, 10);
  await engine.unload();

  await check("chunked prefill (prefill_chunk_size 3) gives the same text", async () => {
    // The library takes the chunk size at run time (the KV cache is created with it), so only
    // the chat config changes.
    const e2 = await load({ prefill_chunk_size: 3 });
    try {
      assert.equal(await greedy(e2, STORY_PROMPT), fresh);
      await e2.resetChat();
      assert.equal(await greedy(e2, EXT, 10), extRef);
    } finally {
      await e2.unload();
    }
  });
  return failures;
}

/**
 * A fetch that answers like `base`, except that the model's aae-chat-config.json gets `overrides`
 * merged in: how both hosts load "the same folder with another chat config" without copying it.
 */
export function fetchWithConfigOverrides(base, overrides) {
  if (!overrides || Object.keys(overrides).length === 0) return base;
  return async (input, init) => {
    const url = typeof input === "string" ? input : input.url ?? String(input);
    const resp = await base(input, init);
    if (!url.endsWith("/aae-chat-config.json") || !resp.ok) return resp;
    const config = { ...(await resp.json()), ...overrides };
    return new Response(JSON.stringify(config), { status: 200, headers: { "content-type": "application/json" } });
  };
}

globalThis.aaeIntegrationChecks = { runIntegrationChecks, fetchWithConfigOverrides };

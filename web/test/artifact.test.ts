import assert from "node:assert/strict";
import { test } from "node:test";
import { ArtifactFormatError } from "../src/errors.js";
import {
  CHAT_CONFIG_FILE,
  FORMAT_VERSION,
  MANIFEST_FILE,
  checkRelativePath,
  modelLibFile,
  normalizeBaseUrl,
  parseChatConfig,
  parseManifest,
} from "../src/artifact.js";
import { chatConfig, fakeModelFolder } from "./helpers.js";

const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

function rejects(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ArtifactFormatError, `expected ArtifactFormatError, got ${String(e)}`);
    assert.match((e as Error).message, pattern);
    return true;
  });
}

test("constants come from the contract JSON", () => {
  assert.equal(FORMAT_VERSION, 1);
  assert.equal(CHAT_CONFIG_FILE, "aae-chat-config.json");
  assert.equal(MANIFEST_FILE, "tensor-manifest.json");
});

test("a valid manifest parses", () => {
  const { manifest } = fakeModelFolder("http://x/m/", 3);
  const m = parseManifest(clone(manifest));
  assert.equal(m.shards.length, 3);
  assert.equal(m.tensors[2]!.name, "w2");
});

test("manifest validation names the problem", () => {
  const { manifest } = fakeModelFolder("http://x/m/", 2);
  const cases: Array<[(m: any) => void, RegExp]> = [
    [(m) => (m.format_version = 2), /format_version 2.*reads format 1/],
    [(m) => delete m.tensors, /lacks tensors/],
    [(m) => (m.shards[0].sha256 = "abc"), /shards\[0\]\.sha256/],
    [(m) => (m.shards[1].file = "../../etc/passwd"), /shards\[1\]\.file.*"\.\."/],
    [(m) => (m.shards[1].file = "https://evil.example/x.bin"), /relative to the model folder/],
    [(m) => (m.shards[1].file = "/abs.bin"), /relative to the model folder/],
    [(m) => (m.total_bytes += 1), /total_bytes/],
    [(m) => (m.tensors[0].dtype = "float7"), /unknown dtype/],
    [(m) => (m.tensors[0].byte_offset = 4), /multiple of 64/],
    [(m) => (m.tensors[0].bytes = 12), /shape x dtype gives/],
    [(m) => (m.tensors[0].shard = 9), /not a shard index/],
    [(m) => ((m.tensors[1].shape = [128]), (m.tensors[1].bytes = 512)), /past the end/],
    [(m) => (m.tensors[1].name = "w0"), /duplicate tensor name/],
  ];
  for (const [mutate, pattern] of cases) {
    const m = clone(manifest);
    mutate(m);
    rejects(() => parseManifest(m, "tensor-manifest.json"), pattern);
  }
});

test("chat config validation", () => {
  const c = parseChatConfig(clone(chatConfig()));
  assert.equal(c.context_window_size, 64);
  rejects(() => parseChatConfig({ ...chatConfig(), format_version: 0 }), /format_version 0/);
  const missing: any = clone(chatConfig());
  delete missing.eos_token_ids;
  rejects(() => parseChatConfig(missing), /lacks eos_token_ids/);
  rejects(() => parseChatConfig({ ...chatConfig(), context_window_size: 0 }), /context_window_size/);
  rejects(() => parseChatConfig({ ...chatConfig(), model_lib: { webgpu: "../x.wasm" } }), /model_lib\.webgpu/);
  rejects(() => parseChatConfig([]), /JSON object/);
});

test("tensor_parallel_shards: absent or 1 loads, more is refused with the contract's message", () => {
  assert.equal(parseChatConfig(clone(chatConfig())).tensor_parallel_shards, undefined);
  assert.equal(parseChatConfig(clone(chatConfig({ tensor_parallel_shards: 1 }))).tensor_parallel_shards, 1);
  // The same text as the native engine (tests/test_conv_templates.py), from artifact_format.json.
  const expected =
    "aae-chat-config.json: this model was configured with tensor_parallel_shards=4, but AAE libraries run on one device; " +
    "regenerate it with `sphere_aae gen_config --tensor-parallel-shards 1`";
  assert.throws(
    () => parseChatConfig(clone(chatConfig({ tensor_parallel_shards: 4 }))),
    (e: unknown) => e instanceof ArtifactFormatError && (e as Error).message === expected,
  );
  for (const bad of [0, -1, 1.5, "2", true, null]) {
    rejects(() => parseChatConfig({ ...chatConfig(), tensor_parallel_shards: bad }), /tensor_parallel_shards must be an integer >= 1/);
  }
});

test("model lib file: config first, pattern as fallback", () => {
  assert.equal(modelLibFile(chatConfig()), "fake-model-webgpu.wasm");
  assert.equal(modelLibFile(chatConfig({ model_lib: {} })), "fake-model-webgpu.wasm");
  assert.equal(modelLibFile(chatConfig({ model_id: "M", model_lib: {} })), "M-webgpu.wasm");
});

test("base URLs get a trailing slash and resolve relative to the page", () => {
  assert.equal(normalizeBaseUrl("/models/a", "http://h:1/index.html"), "http://h:1/models/a/");
  assert.equal(normalizeBaseUrl("http://h/models/a/?x=1", "http://other/"), "http://h/models/a/");
  assert.equal(checkRelativePath("params/shard-00000.bin", "f", "s"), "params/shard-00000.bin");
});

// The CPU library's memory import (src/wasm_threads.ts): found in the binary, kept shared where
// compute threads can run, turned into a plain memory where they cannot. The modules here are
// written byte by byte: an import of env.memory and, for the instantiation check, nothing else.
// Real libraries with real threads: tests/test_wasm_cpu.py.
import assert from "node:assert/strict";
import { test } from "node:test";
import { canShareMemory, findMemoryImport, prepareCpuLibrary } from "../src/wasm_threads.js";

const HEADER = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
const name = (s: string): number[] => [s.length, ...Buffer.from(s)];

/** A module whose one import is env.memory with these limits bytes (flags, initial[, max]). */
function moduleImportingMemory(limits: number[], extraFirst: number[] = []): Uint8Array {
  const body = [...extraFirst, ...name("env"), ...name("memory"), 0x02, ...limits];
  const count = extraFirst.length ? 2 : 1;
  return new Uint8Array([...HEADER, 0x02, body.length + 1, count, ...body]);
}

test("the memory import is found, after a function import, with its limits and shared flag", () => {
  // A type section (one () -> () type) so the function import before it is valid.
  const types = [0x01, 0x04, 0x01, 0x60, 0x00, 0x00];
  const fnImport = [...name("env"), ...name("f"), 0x00, 0x00];
  const imports = moduleImportingMemory([0x03, 0x02, 0x10], fnImport).slice(HEADER.length);
  const bytes = new Uint8Array([...HEADER, ...types, ...imports]);
  const imp = findMemoryImport(bytes);
  assert.deepEqual(imp && { shared: imp.shared, initialPages: imp.initialPages, maximumPages: imp.maximumPages }, { shared: true, initialPages: 2, maximumPages: 16 });
  assert.equal(bytes[imp!.flagOffset], 0x03);
  assert.doesNotThrow(() => new WebAssembly.Module(bytes));
});

test("a module that defines its memory (a library from before threads) has no import", () => {
  const memorySection = [0x05, 0x03, 0x01, 0x00, 0x01];
  assert.equal(findMemoryImport(new Uint8Array([...HEADER, ...memorySection])), null);
  assert.equal(findMemoryImport(new Uint8Array(HEADER)), null);
});

test("threads where memory can be shared (Node): the shared memory is kept", async () => {
  assert.equal(canShareMemory(), null);
  const bytes = moduleImportingMemory([0x03, 0x01, 0x04]);
  const lib = await prepareCpuLibrary(bytes, 3);
  assert.equal(lib.threads, 3);
  assert.equal(lib.bytes, bytes);
  assert.ok(lib.memory && lib.memory.buffer instanceof SharedArrayBuffer);
  new WebAssembly.Instance(new WebAssembly.Module(lib.bytes as Uint8Array<ArrayBuffer>), { env: { memory: lib.memory } });
});

test("one thread: the import becomes a plain memory, on a copy, and the module accepts it", async () => {
  const bytes = moduleImportingMemory([0x03, 0x01, 0x04]);
  const lib = await prepareCpuLibrary(bytes, 1);
  assert.equal(lib.threads, 1);
  assert.equal(lib.singleThreadReason, null);
  assert.equal(bytes[findMemoryImport(bytes)!.flagOffset], 0x03, "the caller's bytes are left as they were");
  assert.equal(findMemoryImport(lib.bytes)!.shared, false);
  assert.ok(lib.memory && !(lib.memory.buffer instanceof SharedArrayBuffer));
  new WebAssembly.Instance(new WebAssembly.Module(lib.bytes as Uint8Array<ArrayBuffer>), { env: { memory: lib.memory } });
});

test("a page that is not cross-origin isolated gets one thread and the reason", async () => {
  const g = globalThis as { crossOriginIsolated?: boolean };
  g.crossOriginIsolated = false;
  try {
    assert.match(canShareMemory() ?? "", /not cross-origin isolated.*Cross-Origin-Embedder-Policy: require-corp/);
    const lib = await prepareCpuLibrary(moduleImportingMemory([0x03, 0x01, 0x04]), 4);
    assert.equal(lib.threads, 1);
    assert.match(lib.singleThreadReason ?? "", /not cross-origin isolated/);
    assert.equal(findMemoryImport(lib.bytes)!.shared, false);
  } finally {
    delete g.crossOriginIsolated;
  }
});

test("a library that defines its own memory runs as before, on one thread", async () => {
  const bytes = new Uint8Array([...HEADER, 0x05, 0x03, 0x01, 0x00, 0x01]);
  const lib = await prepareCpuLibrary(bytes, 2);
  assert.deepEqual({ threads: lib.threads, memory: lib.memory, same: lib.bytes === bytes }, { threads: 1, memory: null, same: true });
  assert.match(lib.singleThreadReason ?? "", /predates threads/);
});

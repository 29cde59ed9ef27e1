// web/src/artifact.ts against tests/fixtures/artifact_cases.json: each case is a small valid chat
// config or tensor manifest, a mutation and the error it must give (or "ok").
// tests/test_artifact_cases.py holds the native reader (sphere_aae.artifact) to the same file, so a
// malformed model folder fails the same way, with the same message, natively and in the browser.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import FORMAT from "../src/artifact_format.json" with { type: "json" };
import { CHAT_CONFIG_FILE, MANIFEST_FILE, parseChatConfig, parseManifest } from "../src/artifact.js";
import { ArtifactFormatError } from "../src/errors.js";

const FIXTURE = JSON.parse(readFileSync(new URL("../../../tests/fixtures/artifact_cases.json", import.meta.url), "utf8"));
const PARSERS: Record<string, [string, (raw: unknown) => unknown]> = {
  chat_config: [CHAT_CONFIG_FILE, (raw) => parseChatConfig(raw)],
  manifest: [MANIFEST_FILE, (raw) => parseManifest(raw)],
};

type Edit = { set?: Array<string | number>; delete?: Array<string | number>; to?: unknown };

/** base after the case's edits: {set: path, to: value} or {delete: path}; path [] is the whole document. */
function mutated(base: unknown, edits: Edit[]): unknown {
  let doc = structuredClone(base);
  for (const edit of edits) {
    const path = edit.set ?? edit.delete!;
    if (path.length === 0) {
      doc = structuredClone(edit.to);
      continue;
    }
    let parent: any = doc;
    for (const key of path.slice(0, -1)) parent = parent[key];
    const last = path[path.length - 1]!;
    if (edit.set) parent[last] = structuredClone(edit.to);
    else delete parent[last];
  }
  return doc;
}

/** The parser's error message for the case, "ok", or null for a case only the native reader can have. */
function runCase(c: any): string | null {
  const [file, parse] = PARSERS[c.file]!;
  if (c.absent) return null; // a missing file is the loader's fetch error, not the parser's
  if (c.text !== undefined) {
    // The native reader refuses the file's text; so must the browser's JSON.parse.
    assert.throws(() => JSON.parse(c.text), SyntaxError, c.name);
    return null;
  }
  try {
    parse(mutated(FIXTURE.base[c.file], c.mutate));
    return "ok";
  } catch (e) {
    assert.ok(e instanceof ArtifactFormatError, `${c.name}: expected an ArtifactFormatError, got ${String(e)}`);
    assert.ok(e.message.startsWith(`${file}: `), e.message);
    return e.message;
  }
}

test("artifact cases: the same acceptance and the same messages as the native reader", () => {
  let nativeOnly = 0;
  for (const c of FIXTURE.cases) {
    const got = runCase(c);
    if (got === null) nativeOnly += 1;
    else if (c.error === "ok") assert.equal(got, "ok", `${c.file}: ${c.name}`);
    else assert.ok(got.includes(c.error), `${c.file}: ${c.name}: ${JSON.stringify(got)} lacks ${JSON.stringify(c.error)}`);
  }
  assert.equal(nativeOnly, FIXTURE.cases.filter((c: any) => c.absent || c.text !== undefined).length);
});

test("artifact cases: every contract message has a case", () => {
  const got = FIXTURE.cases.map(runCase).filter((m: string | null): m is string => m !== null);
  for (const [key, template] of Object.entries(FORMAT.messages)) {
    const pattern = new RegExp(template.split(/\{\w+\}/).map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join(".+"));
    assert.ok(got.some((m: string) => pattern.test(m)), `no case of artifact_cases.json gives messages.${key}`);
  }
});

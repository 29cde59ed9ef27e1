// Copies the contracts' machine-readable halves, owned by the compiler, into src/: the artifact
// format (compiler/artifact_format.json, read by artifact.ts) and the request protocol + sampling
// pipeline (compiler/request_spec.json, read by request_spec.ts). Run before every build and test
// (npm pre-hooks): the copies are generated, never edited, and gitignored, so the two sides cannot
// drift silently.
import { copyFileSync, existsSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = resolve(here, "../../compiler/artifact_format.json");
const target = resolve(here, "../src/artifact_format.json");

if (!existsSync(source)) {
  if (existsSync(target)) {
    console.warn(`sync-artifact-format: ${source} not found; keeping the existing copy`);
    process.exit(0);
  }
  console.error(`sync-artifact-format: ${source} not found and no copy exists; cannot build`);
  process.exit(1);
}

// Fail the build here, with a readable message, if the contract lost a key artifact.ts reads.
const format = JSON.parse(readFileSync(source, "utf8"));
const needed = ["format_version", "files", "tensor_alignment", "kv_page_size", "dtype_bytes",
  "chat_config_required", "chat_config_optional", "messages", "manifest_required", "shard_required", "tensor_required",
  "kv_builtins", "model_lib_devices"];
const missing = needed.filter((k) => !(k in format));
for (const k of ["chat_config", "manifest", "model_lib_pattern"]) {
  if (!format.files || !(k in format.files)) missing.push(`files.${k}`);
}
// The KV-cache builtins engine.ts calls by these names.
for (const k of ["add_sequence", "begin_forward", "end_forward", "clear", "popn"]) {
  if (!format.kv_builtins || !(k in format.kv_builtins)) missing.push(`kv_builtins.${k}`);
}
if (missing.length) {
  console.error(`sync-artifact-format: ${source} lacks ${missing.join(", ")} (web/src/artifact.ts reads them)`);
  process.exit(1);
}
copyFileSync(source, target);

// The request spec: the keys request_spec.ts, protocol.ts and sampling.ts read.
const specSource = resolve(here, "../../compiler/request_spec.json");
const specTarget = resolve(here, "../src/request_spec.json");
if (existsSync(specSource)) {
  const spec = JSON.parse(readFileSync(specSource, "utf8"));
  const lacking = ["spec_version", "endpoints", "fields", "rules", "errors", "expected", "range_rules", "refused", "sampling",
    "context_window", "detokenizer", "structured_output", "tool_calling"].filter((k) => !(k in spec));
  for (const k of ["processors", "exp", "log", "prng", "greedy_below_temperature"]) {
    if (!spec.sampling || !(k in spec.sampling)) lacking.push(`sampling.${k}`);
  }
  if (lacking.length) {
    console.error(`sync-artifact-format: ${specSource} lacks ${lacking.join(", ")} (web/src/request_spec.ts reads them)`);
    process.exit(1);
  }
  copyFileSync(specSource, specTarget);
} else if (!existsSync(specTarget)) {
  console.error(`sync-artifact-format: ${specSource} not found and no copy exists; cannot build`);
  process.exit(1);
}

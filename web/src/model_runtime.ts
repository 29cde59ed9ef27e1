/**
 * The forward backend's rules, twins of compiler/runtime/model_runtime.py's functions of the same
 * names (tests/fixtures/runtime_cases.json holds both sides to the same answers).
 */
import { KV_PAGE_SIZE } from "./artifact.js";

// ---------------------------------------------------------------------------------------------
// Sliding-window rules (ARTIFACT.md, "Sliding-window models")
//
// The window is compiled into the kernels of the layers that have one (Gemma 2/3 alternate
// sliding and global layers; Mistral slides on all). The KV cache keeps every token, so it is
// created without TVM's evicting window (support_sliding_window = 0, never
// enable_sliding_window), the context window bounds a sequence as for any model, and popN may
// roll the cache back at any length. What remains is the prefill chunk rule below.

/**
 * Length of the next prefill chunk for a sequence that already holds `seqLen` tokens.
 *
 * TVM 0.27's windowed prefill kernels are exact only while no key of the chunk's queries has
 * left the window (its within-chunk kernel ignores the window). So while the sequence is shorter
 * than the window W, a chunk may only fill it up to W; past the edge, tokens go in one at a time
 * through the decode-shaped path, which is exact (only long prompts on sliding-window models ever
 * get there). Without a window (`slidingWindowSize` <= 0) the chunk is simply `prefillChunkSize`.
 */
export function prefillChunkLength(seqLen: number, prefillChunkSize: number, slidingWindowSize: number): number {
  if (slidingWindowSize <= 0) return prefillChunkSize;
  if (seqLen >= slidingWindowSize) return 1;
  return Math.min(prefillChunkSize, slidingWindowSize - seqLen);
}

/**
 * `create_tir_paged_kv_cache`'s arguments, in order (ARTIFACT.md): room for every sequence's whole
 * context window, and TVM's evicting sliding window off for every model.
 */
export function kvCacheArgs(contextWindowSize: number, prefillChunkSize: number, maxBatchSize: number): number[] {
  return [
    maxBatchSize,
    contextWindowSize * maxBatchSize, // max_total_seq_len: the cache keeps every token
    prefillChunkSize,
    KV_PAGE_SIZE,
    0, // support_sliding_window: windows live in the kernels
  ];
}


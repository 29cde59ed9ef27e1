"""Fixes applied to TVM 0.27's runtime sources when the wasm runtime is staged (wasm_runtime.py).

Each entry maps a staged file to a function that rewrites its text, and fails loudly when the
text it expects is not there (a newer wheel may have fixed or moved it: then drop the patch).

- src/runtime/vm/attn_utils.h: with per-layer sliding windows (Gemma 2/3) one forward copies a
  second page table, length info and k-rope offsets per depth (for the windowed layers). The
  plain auxiliary-data manager, which WebGPU uses, wrote both copies into the same device buffer,
  so the full-attention layers read the sliding window's page table and saw only the last window
  of tokens (browser ids diverged from native past ~32 tokens). The cached manager (CPU, CUDA) is
  correct. The patch gives the second copy of each array its own buffer.
- web/emcc/wasm_runtime.cc: its TVMBackendParallelLaunch runs every parallel loop as one task on
  the calling thread. Ours (wasm_runtime/src/thread_pool.cc) splits it across compute threads
  when the CPU library runs on a shared memory, so TVM's two definitions are removed.
- src/runtime/device_api.cc: TVMBackendAllocWorkspace/FreeWorkspace become ...Unlocked; the
  thread pool's versions call them under a lock, since kernels on compute threads call them too.
"""

from __future__ import annotations

from typing import Callable

def patch_attn_utils(text: str) -> str:
    """Two device buffers per depth for the arrays copied twice in one forward (see above)."""
    start = text.index("class PlainPagedKVCacheAuxDataManager")
    end = text.index("class CachedPagedKVCacheAuxDataManager")
    cls = text[start:end]
    orig = cls
    # 1. allocate two buffers per depth for the four arrays
    cls = cls.replace(
        """    for (int d = 0; d < kPagedKVCacheMaxBlockDepth; ++d) {
      qo_indptr_on_depths_device_.push_back(""",
        """    // Two slots per depth (see NextSlot): [0, kMax) first copy, [kMax, 2 kMax) second copy.
    for (int d = 0; d < 2 * kPagedKVCacheMaxBlockDepth; ++d) {
      page_indptr_on_depths_device_.push_back(
          Tensor::Empty({reserved_num_seqs + 1}, dtype_aux_, device));
      page_indices_on_depths_device_.push_back(
          Tensor::Empty({num_total_pages}, dtype_aux_, device));
      length_info_on_depths_device_.push_back(
          Tensor::Empty({3, reserved_num_seqs}, dtype_aux_, device));
      k_rope_pos_offset_on_depths_device_.push_back(
          Tensor::Empty({reserved_num_seqs}, dtype_aux_, device));
    }
    for (int d = 0; d < kPagedKVCacheMaxBlockDepth; ++d) {
      qo_indptr_on_depths_device_.push_back(""", 1)
    for name, shape in [("page_indptr_on_depths_device_", "{reserved_num_seqs + 1}"),
                        ("page_indices_on_depths_device_", "{num_total_pages}"),
                        ("length_info_on_depths_device_", "{3, reserved_num_seqs}"),
                        ("k_rope_pos_offset_on_depths_device_", "{reserved_num_seqs}")]:
        old = f"""      {name}.push_back(
          Tensor::Empty({shape}, dtype_aux_, device));
"""
        i = cls.index("      qo_indptr_on_depths_device_.push_back(")  # the original loop
        j = cls.index(old, i)
        cls = cls[:j] + cls[j + len(old):]
    # 2. reset the slot counters per forward
    cls = cls.replace("""  // The reset of the plain auxiliary data manager is no-op.
  void ResetAttnAuxDataCopy() final {}""", """  void ResetAttnAuxDataCopy() final {
    for (auto* c : {&page_indptr_slot_, &page_indices_slot_, &length_info_slot_, &k_rope_slot_}) {
      c->assign(kPagedKVCacheMaxBlockDepth, 0);
    }
  }""", 1)
    # 3. each copy takes the next slot of its depth
    for fn, arr, slot in [("CopyPageIndptrOnDepthAsync", "page_indptr_on_depths_device_", "page_indptr_slot_"),
                          ("CopyPageIndicesOnDepthAsync", "page_indices_on_depths_device_", "page_indices_slot_"),
                          ("CopyLastPageLenOnDepthAsync", "length_info_on_depths_device_", "length_info_slot_"),
                          ("CopyKRoPEPosOffsetOnDepthAsync", "k_rope_pos_offset_on_depths_device_", "k_rope_slot_")]:
        i = cls.index(f"Tensor {fn}(")
        j = cls.index(f"{arr}[depth]", i)
        cls = cls[:j] + f"{arr}[NextSlot(&{slot}, depth)]" + cls[j + len(f"{arr}[depth]"):]
    i = cls.index("Tensor CopyLengthInfoOnDepthAsync(")
    j = cls.index("length_info_on_depths_device_[depth]", i)
    cls = cls[:j] + "length_info_on_depths_device_[NextSlot(&length_info_slot_, depth)]" + cls[j + len("length_info_on_depths_device_[depth]"):]
    # 4. members + helper
    cls = cls.replace(""" private:
  /*!
   * \\brief Copy a vector of data to the input Tensor.""", """ private:
  /*! \\brief The buffer slot of `depth` for the next copy in this forward (at most two). */
  int NextSlot(std::vector<int>* slots, int depth) {
    if (slots->empty()) slots->assign(kPagedKVCacheMaxBlockDepth, 0);
    int s = (*slots)[depth]++;
    TVM_FFI_ICHECK_LT(s, 2) << "an auxiliary array was copied more than twice in one forward";
    return depth + s * kPagedKVCacheMaxBlockDepth;
  }
  std::vector<int> page_indptr_slot_, page_indices_slot_, length_info_slot_, k_rope_slot_;

  /*!
   * \\brief Copy a vector of data to the input Tensor.""", 1)
    if cls == orig or cls.count("NextSlot(&") != 5:
        raise RuntimeError("attn_utils.h is not the TVM 0.27 text this patch expects; review compiler/wasm_runtime_patches.py")
    return text[:start] + cls + text[end:]


_SERIAL_PARALLEL_LAUNCH = """int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  TVMParallelGroupEnv env;
  env.num_task = 1;
  flambda(0, &env, cdata);
  return 0;
}

int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) { return 0; }
"""


def patch_parallel_launch(text: str) -> str:
    """Drop the serial TVMBackendParallelLaunch/Barrier: thread_pool.cc defines them."""
    if text.count(_SERIAL_PARALLEL_LAUNCH) != 1:
        raise RuntimeError("wasm_runtime.cc is not the TVM 0.27 text this patch expects; review compiler/wasm_runtime_patches.py")
    return text.replace(_SERIAL_PARALLEL_LAUNCH, "// TVMBackendParallelLaunch/Barrier: AAE's wasm_runtime/src/thread_pool.cc\n")


# TVM's definition heads, and what they become (a C declaration first, as the originals have one
# in c_backend_api.h).
_WORKSPACE_RENAMES = (
    ("void* TVMBackendAllocWorkspace(int device_type,",
     'extern "C" void* TVMBackendAllocWorkspaceUnlocked(int, int, uint64_t, int, int);\n'
     "void* TVMBackendAllocWorkspaceUnlocked(int device_type,"),
    ("int TVMBackendFreeWorkspace(int device_type,",
     'extern "C" int TVMBackendFreeWorkspaceUnlocked(int, int, void*);\n'
     "int TVMBackendFreeWorkspaceUnlocked(int device_type,"),
)  # fmt: skip


def patch_workspace_functions(text: str) -> str:
    """Rename TVM's workspace entry points to ...Unlocked (thread_pool.cc wraps them in a lock)."""
    for old, new in _WORKSPACE_RENAMES:
        if text.count(old) != 1:
            raise RuntimeError("device_api.cc is not the TVM 0.27 text this patch expects; review compiler/wasm_runtime_patches.py")
        text = text.replace(old, new)
    return text


PATCHES: dict[str, Callable[[str], str]] = {
    "src/runtime/device_api.cc": patch_workspace_functions,
    "src/runtime/vm/attn_utils.h": patch_attn_utils,
    "web/emcc/wasm_runtime.cc": patch_parallel_launch,
}

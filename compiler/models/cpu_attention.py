"""Attention on the paged KV cache for the CPU, vectorised and parallel: replaces TVM's kernels.

TVM 0.27's CPU attention kernels are serial scalar code, one head and one key at a time: decode
costs ~20 us per context token per step on SmolLM2 (9 ms a token at 64 tokens of context, 27 ms
at 1,024), and prefill runs on one thread and visits every page of the cache for every query
(66 tokens/s prefilling 1,024 tokens). These kernels have the same signatures and semantics
(scores in log2 space, an online softmax, the log-sum-exp output that TVM merges chunks with) and:

- run one parallel task per (query token, query head);
- work 16 keys at a time (one page): 16 dot products with 16-lane partial sums over the head
  dimension, then one max and one rescale of the output per block instead of per key;
- accumulate the output row with 16-lane FMAs.

They replace the decode, paged-prefill and ragged-prefill kernels of layers without a window and
without inline rope (the cache applies rope before storing keys, RopeMode NORMAL, or the model
does: NONE). Windowed layers and Gemma 2's soft-capped kernels keep TVM's (models/softcap.py
rewrites those). Masking is TVM's `_causal_mask`: with `causal`, query i of a chunk of n sees the
first kv_len - n + i + 1 keys.
"""

from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T

# Their names in the exported module (the global symbols TVM gives them).
DECODE, PREFILL_PAGED, PREFILL_RAGGED = "batch_decode_paged_kv_cpu", "batch_prefill_paged_kv_cpu", "batch_prefill_ragged_kv"
LANES = 16
PAGE = 16  # the KV cache's page size (artifact_format.json kv_page_size)
LOG2E = math.log2(math.e)


@T.macro(hygienic=False)
def _attend(n_keys, paged, chunks, d_head):
    """Online softmax of q_row against the first n_keys keys of this task's sequence, in blocks
    of 16; leaves the unnormalised output in o_row, the max in state[0] and the sum in state[1].
    Keys come from `pages` through the page table (`paged`) or from the ragged `k` / `v` rows."""
    for blk in range((n_keys + PAGE - 1) // PAGE):
        rows: T.int32 = T.min(PAGE, n_keys - blk * PAGE)
        page: T.int32 = values[begin + blk] if paged else 0
        state[2] = state[0]
        for r in range(rows):
            for lane in T.vectorized(LANES):
                part[lane] = T.float32(0)
            for c in range(chunks):
                for lane in T.vectorized(LANES):
                    if paged:
                        part[lane] = part[lane] + q_row[c * LANES + lane] * T.Cast("float32", pages[page, 0, kv_head, r, c * LANES + lane])
                    else:
                        part[lane] = part[lane] + q_row[c * LANES + lane] * T.Cast("float32", k[kv_base + blk * PAGE + r, kv_head, c * LANES + lane])
            score[r] = T.float32(0)
            for lane in T.unroll(LANES):
                score[r] = score[r] + part[lane]
            state[2] = T.max(state[2], score[r])
        # Rescale what came before to this block's max once, then add the block's rows.
        state[1] = state[1] * T.exp2(state[0] - state[2])
        for d in T.vectorized(d_head):
            o_row[d] = o_row[d] * T.exp2(state[0] - state[2])
        state[0] = state[2]
        for r in range(rows):
            score[r] = T.exp2(score[r] - state[0])
            state[1] = state[1] + score[r]
            for d in T.vectorized(d_head):
                if paged:
                    o_row[d] = o_row[d] + score[r] * T.Cast("float32", pages[page, 1, kv_head, r, d])
                else:
                    o_row[d] = o_row[d] + score[r] * T.Cast("float32", v[kv_base + blk * PAGE + r, kv_head, d])


@T.macro(hygienic=False)
def _start(query, token, head, d_head):
    """This task's scaled query row, an empty output and an empty softmax state."""
    for d in T.vectorized(d_head):
        q_row[d] = T.Cast("float32", query[token, head, d]) * sm_scale * T.float32(LOG2E)
        o_row[d] = T.float32(0)
    state[0] = T.float32(-5e4)
    state[1] = T.float32(0)


@T.macro(hygienic=False)
def _finish(out, lse, token, head, d_head, dtype):
    for d in T.vectorized(d_head):
        out[token, head, d] = T.Cast(dtype, o_row[d] / T.max(state[1], T.float32(1e-30)))
    lse[token, head] = state[0] + T.log2(T.max(state[1], T.float32(1e-30)))


@T.macro(hygienic=False)
def _sequence_of(seq, token, q_indptr, b_size):
    """seq[0] = the sequence the query token belongs to (a linear scan: batches are small)."""
    seq[0] = 0
    for b in range(b_size):
        if q_indptr[b] <= token:
            seq[0] = b


def _visible(causal, kv_len, q_len, q_idx):
    """Keys query q_idx of a chunk of q_len sees (TVM's _causal_mask)."""
    return T.if_then_else(causal > 0, T.max(T.min(kv_len, kv_len - q_len + q_idx + 1), 0), kv_len)


def decode_kernel(num_kv_heads: int, num_qo_heads: int, head_dim: int, dtype: str) -> tvm.tirx.PrimFunc:
    h_qo, h_kv, d_head, group, chunks = num_qo_heads, num_kv_heads, head_dim, num_qo_heads // num_kv_heads, head_dim // LANES

    @T.prim_func(private=True)
    def batch_decode_paged_kv(
        q_handle: T.handle, pages_handle: T.handle, indptr_handle: T.handle, values_handle: T.handle,
        length_handle: T.handle, k_rope_handle: T.handle, q_rope_handle: T.handle, out_handle: T.handle,
        lse_handle: T.handle, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
    ):
        T.func_attr({"tir.is_scheduled": True, "tir.noalias": True})
        b_size, nnz_pages, max_pages = T.int32(), T.int32(), T.int32()
        indptr_off, values_off, length_off, k_rope_off, q_rope_off = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        q = T.match_buffer(q_handle, (b_size, h_qo, d_head), dtype)
        pages = T.match_buffer(pages_handle, (max_pages, 2, h_kv, PAGE, d_head), dtype)
        indptr = T.match_buffer(indptr_handle, (b_size + 1,), "int32", elem_offset=indptr_off)
        values = T.match_buffer(values_handle, (nnz_pages,), "int32", elem_offset=values_off)
        last_page_len = T.match_buffer(length_handle, (b_size,), "int32", elem_offset=length_off)
        T.match_buffer(k_rope_handle, (b_size,), "int32", elem_offset=k_rope_off)
        T.match_buffer(q_rope_handle, (b_size,), "int32", elem_offset=q_rope_off)
        out = T.match_buffer(out_handle, (b_size, h_qo, d_head), dtype)
        lse = T.match_buffer(lse_handle, (b_size, h_qo), "float32")
        assert rotary_mode == 0, "sphere_aae's CPU attention takes keys the cache already rotated"
        for task in T.parallel(b_size * h_qo):
            # "global" scope: allocas LLVM keeps in registers (see quantization/cpu_kernels.py).
            q_row, o_row = T.alloc_buffer((d_head,), "float32"), T.alloc_buffer((d_head,), "float32")
            part, score = T.alloc_buffer((LANES,), "float32"), T.alloc_buffer((PAGE,), "float32")
            state = T.alloc_buffer((3,), "float32")  # running max, running sum, this block's max
            seq: T.int32 = task // h_qo
            head: T.int32 = task % h_qo
            kv_head: T.int32 = head // group
            begin: T.int32 = indptr[seq]
            n_pages: T.int32 = indptr[seq + 1] - begin
            _start(q, seq, head, d_head)
            _attend(T.if_then_else(n_pages > 0, (n_pages - 1) * PAGE + last_page_len[seq], 0), True, chunks, d_head)
            _finish(out, lse, seq, head, d_head, dtype)

    return batch_decode_paged_kv


def prefill_paged_kernel(num_kv_heads: int, num_qo_heads: int, head_dim: int, dtype: str) -> tvm.tirx.PrimFunc:
    h_qo, h_kv, d_head, group, chunks = num_qo_heads, num_kv_heads, head_dim, num_qo_heads // num_kv_heads, head_dim // LANES

    @T.prim_func(private=True)
    def batch_prefill_paged_kv(
        q_handle: T.handle, q_indptr_handle: T.handle, pages_handle: T.handle, indptr_handle: T.handle,
        values_handle: T.handle, length_handle: T.handle, k_rope_handle: T.handle, q_rope_handle: T.handle,
        out_handle: T.handle, lse_handle: T.handle, causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32,
        rope_theta: T.float32, sm_scale: T.float32,
    ):
        T.func_attr({"tir.is_scheduled": True, "tir.noalias": True})
        b_size, total_len, nnz_pages, max_pages = T.int32(), T.int32(), T.int32(), T.int32()
        q_indptr_off, indptr_off, values_off, length_off, k_rope_off, q_rope_off = (
            T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32())
        q = T.match_buffer(q_handle, (total_len, h_qo, d_head), dtype)
        q_indptr = T.match_buffer(q_indptr_handle, (b_size + 1,), "int32", elem_offset=q_indptr_off)
        pages = T.match_buffer(pages_handle, (max_pages, 2, h_kv, PAGE, d_head), dtype)
        indptr = T.match_buffer(indptr_handle, (b_size + 1,), "int32", elem_offset=indptr_off)
        values = T.match_buffer(values_handle, (nnz_pages,), "int32", elem_offset=values_off)
        last_page_len = T.match_buffer(length_handle, (b_size,), "int32", elem_offset=length_off)
        T.match_buffer(k_rope_handle, (b_size,), "int32", elem_offset=k_rope_off)
        T.match_buffer(q_rope_handle, (total_len,), "int32", elem_offset=q_rope_off)
        out = T.match_buffer(out_handle, (total_len, h_qo, d_head), dtype)
        lse = T.match_buffer(lse_handle, (total_len, h_qo), "float32")
        assert rotary_mode == 0, "sphere_aae's CPU attention takes keys the cache already rotated"
        for task in T.parallel(total_len * h_qo):
            # "global" scope: allocas LLVM keeps in registers (see quantization/cpu_kernels.py).
            q_row, o_row = T.alloc_buffer((d_head,), "float32"), T.alloc_buffer((d_head,), "float32")
            part, score = T.alloc_buffer((LANES,), "float32"), T.alloc_buffer((PAGE,), "float32")
            state = T.alloc_buffer((3,), "float32")  # running max, running sum, this block's max
            token: T.int32 = task // h_qo
            head: T.int32 = task % h_qo
            kv_head: T.int32 = head // group
            seq = T.alloc_buffer((1,), "int32")
            _sequence_of(seq, token, q_indptr, b_size)
            begin: T.int32 = indptr[seq[0]]
            n_pages: T.int32 = indptr[seq[0] + 1] - begin
            kv_len: T.int32 = T.if_then_else(n_pages > 0, (n_pages - 1) * PAGE + last_page_len[seq[0]], 0)
            _start(q, token, head, d_head)
            _attend(_visible(causal, kv_len, q_indptr[seq[0] + 1] - q_indptr[seq[0]], token - q_indptr[seq[0]]), True, chunks, d_head)
            _finish(out, lse, token, head, d_head, dtype)

    return batch_prefill_paged_kv


def prefill_ragged_kernel(num_kv_heads: int, num_qo_heads: int, head_dim: int, dtype: str) -> tvm.tirx.PrimFunc:
    h_qo, h_kv, d_head, group, chunks = num_qo_heads, num_kv_heads, head_dim, num_qo_heads // num_kv_heads, head_dim // LANES

    @T.prim_func(private=True)
    def batch_prefill_ragged_kv(
        q_handle: T.handle, q_indptr_handle: T.handle, k_handle: T.handle, v_handle: T.handle,
        kv_indptr_handle: T.handle, q_rope_handle: T.handle, k_rope_handle: T.handle, out_handle: T.handle,
        lse_handle: T.handle, causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tir.is_scheduled": True, "tir.noalias": True})
        b_size, q_total, kv_total = T.int32(), T.int32(), T.int32()
        q_indptr_off, kv_indptr_off, q_rope_off, k_rope_off = T.int32(), T.int32(), T.int32(), T.int32()
        q = T.match_buffer(q_handle, (q_total, h_qo, d_head), dtype)
        q_indptr = T.match_buffer(q_indptr_handle, (b_size + 1,), "int32", elem_offset=q_indptr_off)
        k = T.match_buffer(k_handle, (kv_total, h_kv, d_head), dtype)
        v = T.match_buffer(v_handle, (kv_total, h_kv, d_head), dtype)
        kv_indptr = T.match_buffer(kv_indptr_handle, (b_size + 1,), "int32", elem_offset=kv_indptr_off)
        T.match_buffer(q_rope_handle, (q_total,), "int32", elem_offset=q_rope_off)
        T.match_buffer(k_rope_handle, (b_size,), "int32", elem_offset=k_rope_off)
        out = T.match_buffer(out_handle, (q_total, h_qo, d_head), dtype)
        lse = T.match_buffer(lse_handle, (q_total, h_qo), "float32")
        assert rotary_mode == 0, "sphere_aae's CPU attention takes keys the cache already rotated"
        for task in T.parallel(q_total * h_qo):
            # "global" scope: allocas LLVM keeps in registers (see quantization/cpu_kernels.py).
            q_row, o_row = T.alloc_buffer((d_head,), "float32"), T.alloc_buffer((d_head,), "float32")
            part, score = T.alloc_buffer((LANES,), "float32"), T.alloc_buffer((PAGE,), "float32")
            state = T.alloc_buffer((3,), "float32")  # running max, running sum, this block's max
            token: T.int32 = task // h_qo
            head: T.int32 = task % h_qo
            kv_head: T.int32 = head // group
            seq = T.alloc_buffer((1,), "int32")
            _sequence_of(seq, token, q_indptr, b_size)
            kv_base: T.int32 = kv_indptr[seq[0]]
            kv_len: T.int32 = kv_indptr[seq[0] + 1] - kv_base
            _start(q, token, head, d_head)
            _attend(_visible(causal, kv_len, q_indptr[seq[0] + 1] - q_indptr[seq[0]], token - q_indptr[seq[0]]), False, chunks, d_head)
            _finish(out, lse, token, head, d_head, dtype)

    return batch_prefill_ragged_kv


_KERNELS = {DECODE: decode_kernel, PREFILL_PAGED: prefill_paged_kernel, PREFILL_RAGGED: prefill_ragged_kernel}


def use_vectorized_attention(mod: tvm.IRModule, cfg, dtype: str) -> tvm.IRModule:
    """Swap TVM's CPU attention kernels in `mod` for these where they apply (see the module
    docstring); other modules are returned unchanged."""
    if cfg.attn_logit_softcap or cfg.head_dim % LANES:
        return mod
    names = {gv.name_hint: gv for gv in mod.get_global_vars()}
    for name, make in _KERNELS.items():
        if name in names:
            old = mod[names[name]]
            new = make(cfg.num_key_value_heads, cfg.num_attention_heads, cfg.head_dim, dtype)
            mod.update_func(names[name], new.with_attr("global_symbol", old.attrs["global_symbol"]))
    return mod

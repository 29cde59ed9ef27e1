"""Attention-logit soft-capping (Gemma 2) inside TVM's paged-KV-cache attention kernels.

Gemma 2 replaces every attention score s = q.k * sm_scale by cap * tanh(s / cap) before the
mask and the softmax. TVM's kernels (tvm.relax.frontend.nn.llm) have no such option, so
`apply_attention_softcap` rewrites the attention PrimFuncs the KV cache added to the exported
module, at the point where each kernel first holds a *full* score.

The kernels keep scores in log2 space (score = q.k * sm_scale * log2(e), then exp2), so the cap
is applied there as  score = C * tanh(score / C)  with  C = cap * log2(e), which equals
log2(e) * cap * tanh(s / cap).

Recognised score computations (all checked structurally; anything else is an error naming the
kernel, never a silent skip):

- "scale after dot" (CPU kernels): a scalar buffer holds the finished q.k sum and one store
  multiplies it by sm_scale and log2(e) (`S_val[0] = S_val[0] * (sm_scale * log2e)`, or
  `attention_score[0] = result[0] * log2e * sm_scale`). That store is capped.
- "scaled accumulation" (GPU prefill / ragged / tree kernels): the gemm accumulates
  `S_local[i, j] += q * k * sm_scale * log2e`; the tile is complete only after the reduction,
  where it is copied out (`S_smem[i, j] = S_local[i, j]`). The copy is capped.
- "lane products + allreduce" (GPU decode): each lane scales its products
  (`QK_local[v] = q * k * sm_scale * log2e`), sums them locally, and a tvm_thread_allreduce
  gives the full score, which is then copied (`S_local[j] = t0[0]`). The copy is capped.

Masking: scores that are masked are never capped. The CPU kernels overwrite masked scores with
a constant (-5e4, or -5e4 * log2e * sm_scale) after or instead of the scaling store, the GPU
decode kernel only copies the reduced score for in-range rows (masked rows keep -5e4), and the
GPU prefill kernels mask by predicate when they read S_smem. Stores of such constants contain no
load and are left alone, so a masked entry stays far below -cap and keeps its zero weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import tvm
import tvm_ffi
from tvm import ir, relax, tirx

LOG2E = math.log2(math.e)
# tanh(x) rounds to 1.0f for |x| > 9.1, so clamping the argument here changes no result; it keeps
# backends whose tanh is computed from exp(2x) (some WGSL/Metal paths) away from inf/inf = NaN.
_TANH_CLAMP = 10.0
_ATTR = "sphere_aae.attn_logit_softcap"
_KV_CACHE_CREATE = "paged_attention_kv_cache_create"

Load = ir.expr.TensorLoad


class SoftcapError(RuntimeError):
    """The module's attention kernels cannot be soft-capped (unknown structure)."""


@dataclass
class KernelPatch:
    """What was capped in one kernel (for reports and tests)."""

    name: str
    kind: str  # "scale-after-dot" | "scaled-accumulation" | "allreduce"
    stores: list[str] = field(default_factory=list)  # the capped stores, as `buffer[...]`


# -- small expression helpers -------------------------------------------------------------------
def _walk(node, typ, fn) -> None:
    tvm_ffi.structural_walk(node, (typ, fn), order="post")


def _loads(expr) -> list:
    out: list = []
    _walk(expr, Load, out.append)
    return out


def _uses_var(expr, var) -> bool:
    found = []
    _walk(expr, tirx.Var, lambda v: found.append(v) if v.same_as(var) else None)
    return bool(found)


def _strip_cast(expr):
    while isinstance(expr, tirx.Cast):
        expr = expr.value
    return expr


def _is_load_of(expr, buffer, indices=None) -> bool:
    if expr is None:
        return False
    expr = _strip_cast(expr)
    if not isinstance(expr, Load) or not expr.source.same_as(buffer):
        return False
    if indices is None:
        return True
    return len(expr.indices) == len(indices) and all(
        tvm_ffi.structural_equal(a, b) for a, b in zip(expr.indices, indices)
    )


def _factors(expr) -> list:
    """The operands of a (nested) product, casts stripped."""
    expr = _strip_cast(expr)
    if isinstance(expr, tirx.Mul):
        return _factors(expr.a) + _factors(expr.b)
    return [expr]


def _is_float_const(expr) -> bool:
    return isinstance(expr, (tirx.FloatImm, tirx.IntImm))


def _self_accumulation(store):
    """For `B[i] = B[i] + rest` (either order) return `rest`, else None."""
    v = store.value
    if not isinstance(v, tirx.Add):
        return None
    if _is_load_of(v.a, store.buffer, store.indices):
        return v.b
    if _is_load_of(v.b, store.buffer, store.indices):
        return v.a
    return None


def _is_dot_accumulator(stores, buffer) -> bool:
    """Some store accumulates products of two loads into `buffer` (a q.k dot product)."""
    for s in stores:
        if not s.buffer.same_as(buffer):
            continue
        rest = _self_accumulation(s)
        if rest is not None and sum(isinstance(f, Load) for f in _factors(rest)) >= 2:
            return True
    return False


def _store_str(store) -> str:
    return f"{store.buffer.name}[{', '.join(str(i) for i in store.indices)}]"


# -- the rewrite --------------------------------------------------------------------------------
def _capped(value, cap_log2: float):
    dtype = str(value.ty.dtype)
    if not dtype.startswith("float"):
        raise SoftcapError(f"attention score {value} has dtype {dtype}, not a float")
    c = tirx.const(cap_log2, dtype)
    x = value * tirx.const(1.0 / cap_log2, dtype)
    x = tirx.max(tirx.min(x, tirx.const(_TANH_CLAMP, dtype)), tirx.const(-_TANH_CLAMP, dtype))
    return c * tirx.tanh(x)


def _find_targets(name: str, func: tirx.PrimFunc) -> tuple[str, list]:
    """The stores of `func` where a full (uncapped) score is first written."""
    sm_scale = next((p for p in func.params if p.name == "sm_scale"), None)
    if sm_scale is None:
        raise SoftcapError(f"attention kernel {name!r} has no sm_scale parameter; cannot locate its score computation")
    stores: list = []
    _walk(func.body, tirx.BufferStore, stores.append)
    calls: list = []
    _walk(func.body, ir.expr.Call, calls.append)
    allreduce_op = ir.Op.get("tirx.tvm_thread_allreduce")
    allreduces = [c for c in calls if isinstance(c.op, ir.Op) and c.op.same_as(allreduce_op)]

    def readers(buffer, exclude=()):
        """Stores and allreduce calls that load `buffer`, except the given ones."""
        rs = [s for s in stores if not any(s.same_as(e) for e in exclude) and any(l.source.same_as(buffer) for l in _loads(s.value))]
        cs = [c for c in allreduces if not any(c.same_as(e) for e in exclude) and any(_is_load_of(a, buffer) for a in c.args)]
        return rs, cs

    def copies_of(buffer, exclude=()):
        """Every reader of `buffer` must be a plain copy `D[...] = buffer[...]`: those are returned."""
        rs, cs = readers(buffer, exclude)
        bad = [s for s in rs if not _is_load_of(s.value, buffer)]
        if cs or bad or not rs:
            what = ", ".join(_store_str(s) for s in bad) or ("an allreduce" if cs else "nothing")
            raise SoftcapError(
                f"attention kernel {name!r}: the full score in {buffer.name!r} is read by {what}, "
                "not only copied out; the soft-cap cannot be placed"
            )
        return rs

    scaled = [s for s in stores if _uses_var(s.value, sm_scale)]
    if not scaled:
        raise SoftcapError(f"attention kernel {name!r}: no store multiplies by sm_scale; no recognisable score computation")
    kinds: set[str] = set()
    targets: list = []
    for s in scaled:
        loads = _loads(s.value)
        if not loads:
            continue  # a masked constant such as -5e4 * log2(e) * sm_scale: stays masked
        rest = _self_accumulation(s)
        if rest is not None:
            # S[i, j] += q * k * sm_scale * log2e: full after the reduction, where it is copied out.
            kinds.add("scaled-accumulation")
            targets += copies_of(s.buffer, exclude=[x for x in stores if x.buffer.same_as(s.buffer)])
            continue
        factors = _factors(s.value)
        tensor_factors = [f for f in factors if isinstance(f, Load)]
        others = [f for f in factors if not isinstance(f, Load)]
        if not all(_is_float_const(f) or (isinstance(f, tirx.Var) and f.same_as(sm_scale)) for f in others):
            raise SoftcapError(f"attention kernel {name!r}: unrecognised score expression {s.value} in {_store_str(s)}")
        if len(tensor_factors) == 1 and _is_dot_accumulator(stores, tensor_factors[0].source):
            # S = dot * sm_scale * log2e with the dot product already summed.
            kinds.add("scale-after-dot")
            targets.append(s)
            continue
        if len(tensor_factors) >= 2:
            # Per-lane products: summed locally, then across threads by an allreduce.
            kinds.add("allreduce")
            partial = s.buffer
            sums = [r for r in stores if not r.same_as(s) and _is_load_of(_self_accumulation(r), partial)]
            if len(sums) != 1:
                raise SoftcapError(f"attention kernel {name!r}: the partial scores in {partial.name!r} are not summed by one local reduction")
            acc = sums[0].buffer
            reduce_calls = [c for c in allreduces if any(_is_load_of(a, acc) for a in c.args)]
            if len(reduce_calls) != 1:
                raise SoftcapError(f"attention kernel {name!r}: the local sum {acc.name!r} does not feed one tvm_thread_allreduce")
            call = reduce_calls[0]
            n = int(call.args[0].value)
            srcs, results = list(call.args[1 : 1 + n]), list(call.args[2 + n : 2 + 2 * n])
            pos = next(i for i, a in enumerate(srcs) if _is_load_of(a, acc))
            full = _strip_cast(results[pos])
            if not isinstance(full, Load):
                raise SoftcapError(f"attention kernel {name!r}: unexpected tvm_thread_allreduce result {results[pos]}")
            targets += copies_of(full.source, exclude=[call])
            continue
        raise SoftcapError(f"attention kernel {name!r}: unrecognised score computation {_store_str(s)} = {s.value}")
    if not targets:
        raise SoftcapError(f"attention kernel {name!r}: found sm_scale but no store of a real (unmasked) score")
    return "+".join(sorted(kinds)), targets


def _patch_kernel(name: str, func: tirx.PrimFunc, cap: float) -> tuple[tirx.PrimFunc, KernelPatch]:
    kind, targets = _find_targets(name, func)
    cap_log2 = cap * LOG2E
    done: list = []

    def rewrite(store):
        if any(store.same_as(t) for t in targets):
            done.append(store)
            return tirx.BufferStore(store.buffer, _capped(store.value, cap_log2), store.indices, store.span)
        return store

    body = tvm_ffi.structural_map(func.body, (tirx.BufferStore, rewrite), order="pre")
    if len(done) < len(targets):
        raise SoftcapError(f"attention kernel {name!r}: {len(targets) - len(done)} score store(s) could not be rewritten")
    patched = func.with_body(body).with_attr(_ATTR, float(cap))
    return patched, KernelPatch(name, kind, [_store_str(t) for t in targets])


# -- finding the kernels ------------------------------------------------------------------------
def _kv_cache_kernels(mod: tvm.IRModule) -> dict[str, ir.GlobalVar]:
    """Attention kernels the paged KV cache was created with: its ("tirx", kernel) arguments."""
    found: dict[str, ir.GlobalVar] = {}

    def on_call(call):
        args = list(call.args)
        if not args or not isinstance(args[0], relax.ExternFunc) or _KV_CACHE_CREATE not in str(args[0].global_symbol):
            return
        for a in args[1:]:
            if not isinstance(a, relax.Tuple) or not len(a.fields) or not isinstance(a.fields[0], ir.expr.StringImm):
                continue
            backend = a.fields[0].value
            if backend != "tirx":
                raise SoftcapError(
                    f"the KV cache attends through {backend!r} kernels, which this soft-cap rewrite cannot patch "
                    "(only TVM's own TIR kernels)"
                )
            for f in a.fields[1:]:
                if isinstance(f, ir.GlobalVar):
                    found[f.name_hint] = f
                else:
                    raise SoftcapError(f"the KV cache's tirx attention entry {f} is not a function of the module")

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            _walk(func, relax.Call, on_call)
    return found


def attention_kernels(mod: tvm.IRModule) -> dict[str, ir.GlobalVar]:
    """Every attention PrimFunc of the module: those the KV cache uses, and any with `sm_scale`."""
    kernels = _kv_cache_kernels(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and any(p.name == "sm_scale" for p in func.params):
            kernels.setdefault(gv.name_hint, gv)
    return dict(sorted(kernels.items()))


def patch_attention_softcap(mod: tvm.IRModule, cap: float) -> tuple[tvm.IRModule, list[KernelPatch]]:
    """`apply_attention_softcap`, also returning what was patched in each kernel."""
    cap = float(cap)
    if not math.isfinite(cap) or cap <= 0:
        raise SoftcapError(f"attention logit soft-cap must be a positive number, not {cap}")
    kernels = attention_kernels(mod)
    if not kernels:
        raise SoftcapError("the module has no attention kernels to soft-cap (no paged KV cache kernels found)")
    updates: dict[ir.GlobalVar, tirx.PrimFunc] = {}
    report: list[KernelPatch] = []
    for name, gv in kernels.items():
        func = mod[gv]
        if not isinstance(func, tirx.PrimFunc):
            raise SoftcapError(f"attention kernel {name!r} is not a TIR PrimFunc ({type(func).__name__})")
        prev = func.attrs.get(_ATTR) if func.attrs is not None else None
        if prev is not None:
            if abs(float(prev) - cap) > 1e-12 * cap:
                raise SoftcapError(f"attention kernel {name!r} is already soft-capped at {float(prev)}, not {cap}")
            continue  # applied twice with the same cap: nothing to do
        patched, info = _patch_kernel(name, func, cap)
        updates[gv] = patched
        report.append(info)
    out = mod.clone()  # shallow: the caller's module keeps its kernels
    for gv, func in updates.items():
        out.update_func(gv, func)
    return out, report


def apply_attention_softcap(mod: tvm.IRModule, cap: float) -> tvm.IRModule:
    """Return `mod` with every paged-KV-cache attention kernel computing scores as
    cap * tanh(q.k * sm_scale / cap). Raises SoftcapError for a kernel it cannot recognise."""
    return patch_attention_softcap(mod, cap)[0]

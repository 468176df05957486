"""Adapters of FlashInfer's attention wrappers: paged decode, paged prefill, ragged prefill.

``plan`` always runs the original (so the original ``run`` can take any call), then records
the page-table structure in a :class:`PlanContext` kept per wrapper instance: views of the
caller's own index tensors (so a CUDA graph captured over them stays valid when the engine
re-plans into the same buffers), the host copy of the indptr that sizes the key, and, when
tracing wants this bucket, host copies for the workload's blob (made here, outside any
graph capture). ``run`` looks the context up and dispatches: its first call per context and
call form decides (definition, resolution), later calls (the other layers) reuse that.
Anything the adapter does not understand (another layout, masks, soft-cap, RoPE, fp8 scales,
``out=``, another device) leaves the call to the original.
"""
from __future__ import annotations

import math
from typing import Any

from .base import REQUIRED, Adapter, Call, Unmapped, bind, dtype_name, flashinfer_own

# Heavy or optional dependencies, imported inside the functions that use them: torch.

_NONE = (None,)
_KINDS = ("float16", "bfloat16")


def _neutral(values):
    return lambda v: v in values


#: keyword arguments of plan that change nothing fibuild's definitions express differently,
#: with the values that are safe; any other keyword makes the call the original's.
_PLAN_NEUTRAL = {
    "pos_encoding_mode": _neutral(("NONE",)), "window_left": _neutral((-1, None)),
    "logits_soft_cap": _neutral((None, 0, 0.0)), "q_data_type": lambda v: True,
    "kv_data_type": lambda v: True, "o_data_type": lambda v: True, "data_type": lambda v: True,
    "sm_scale": lambda v: v is None or isinstance(v, (int, float)), "rope_scale": lambda v: True,
    "rope_theta": lambda v: True, "non_blocking": lambda v: True, "fixed_split_size": lambda v: True,
    "disable_split_kv": lambda v: True, "q_len_per_req": _neutral((None, 1)),
    "custom_mask": _neutral(_NONE), "packed_custom_mask": _neutral(_NONE),
    "use_fp16_qk_reduction": _neutral((False,)), "head_dim_vo": lambda v: True,
    "causal": lambda v: True, "seq_lens": _neutral(_NONE), "block_tables": _neutral(_NONE),
    "seq_lens_q": _neutral(_NONE), "prefix_len_ptr": _neutral(_NONE),
    "token_pos_in_items_ptr": _neutral(_NONE), "token_pos_in_items_len": _neutral((0,)),
    "max_item_len_ptr": _neutral(_NONE), "v_indptr": _neutral(_NONE),
    "max_token_per_sequence": lambda v: True, "max_sequence_kv": lambda v: True,
}
_RUN_NEUTRAL = {
    "q_scale": _neutral((None, 1.0)), "k_scale": _neutral((None, 1.0)), "v_scale": _neutral((None, 1.0)),
    "o_scale": _neutral((None, 1.0)), "out": _neutral(_NONE), "lse": _neutral(_NONE),
    "return_lse": lambda v: isinstance(v, bool), "enable_pdl": lambda v: True,
    "window_left": _neutral((None, -1)), "sinks": _neutral(_NONE), "q_len_per_req": _neutral((None, 1)),
    "skip_softmax_threshold_scale_factor": _neutral(_NONE), "kv_cache_sf": _neutral(_NONE),
    "use_fp16_softmax": _neutral((None, False)), "uses_spcompress": _neutral((None, False)),
}


def _check_neutral(call_kwargs, rules, what) -> None:
    for key, value in call_kwargs.items():
        rule = rules.get(key)
        if rule is None:
            raise Unmapped(f"{what}: unsupported keyword argument {key}")
        if not rule(value):
            raise Unmapped(f"{what}: {key}={value!r} is not supported")


def _bucket(n: float) -> int:
    """Power-of-two bucket of an average length (1, 2, 4, ...)."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


class PlanContext:
    """What one ``plan`` call set up: definition inputs taken from it, consts, and the memo
    of run decisions for it. ``reason`` is set when the plan cannot be substituted."""

    __slots__ = ("reason", "consts", "tensors", "counts", "blobs", "memo", "recorded", "sm_scale")

    def __init__(self):
        self.reason: str | None = None
        self.consts: dict[str, Any] = {}
        self.tensors: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.blobs: dict[str, Any] | None = None
        self.memo: dict[Any, Any] = {}
        self.recorded = False
        self.sm_scale: float | None = None


class WrapperAdapter(Adapter):
    """An adapter of a FlashInfer wrapper class's ``plan``/``run`` pair."""

    plan_parameters: tuple = ()
    run_parameters: tuple = ()
    paged = True
    index_inputs: tuple = ()  # the plan's index tensors among the definition's inputs, in order

    # -- plan --------------------------------------------------------------------------------
    def plan_context(self, inst, args: tuple, kwargs: dict) -> PlanContext:
        """The context of a plan call (never raises; doubts land in ``reason``)."""
        ctx = PlanContext()
        try:
            call = bind(self.plan_parameters, args, {k: v for k, v in kwargs.items()
                                                     if k in dict(self.plan_parameters)})
            _check_neutral({k: v for k, v in kwargs.items() if k not in dict(self.plan_parameters)},
                           _PLAN_NEUTRAL, "plan")
            if getattr(inst, "_kv_layout", "NHD") != "NHD":
                raise Unmapped(f"kv_layout {inst._kv_layout} (definitions use NHD)")
            self.read_plan(ctx, call, kwargs)
        except Unmapped as exc:
            ctx.reason = exc.reason
        return ctx

    def read_plan(self, ctx: PlanContext, call: Call, kwargs: dict) -> None:
        raise NotImplementedError

    def _indptr(self, ctx, name, value, key):
        """Record an int32 indptr (device view + host copy); returns the host list."""
        import torch

        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype != torch.int32:
            raise Unmapped(f"{name} is not a 1-D int32 tensor")
        host = value.to("cpu").tolist()  # FlashInfer's plan copies it to the host too
        ctx.tensors[key] = value
        return host

    def _heads(self, ctx, call, hd_name):
        h, kv, d = int(call["num_qo_heads"]), int(call["num_kv_heads"]), int(call[hd_name])
        if h % kv:
            raise Unmapped(f"{h} query heads are not a multiple of {kv} KV heads")
        ctx.consts.update(num_qo_heads=h, num_kv_heads=kv, head_dim=d)
        ctx.sm_scale = call.params.get("sm_scale")

    def _pages(self, ctx, call, indptr_name, indices_name, last_name):
        import torch

        ps = int(call["page_size"])
        ctx.consts["page_size"] = ps
        bounds = self._indptr(ctx, indptr_name, call[indptr_name], "kv_indptr")
        indices, last = call[indices_name], call[last_name]
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int32 or indices.dim() != 1:
            raise Unmapped(f"{indices_name} is not a 1-D int32 tensor")
        if indices.shape[0] < bounds[-1]:
            raise Unmapped(f"{indices_name} is shorter than {indptr_name}[-1]")
        batch = len(bounds) - 1
        ctx.tensors["kv_indices"] = indices[:bounds[-1]]  # a view: the caller's buffer
        if ps > 1:
            if not isinstance(last, torch.Tensor) or last.dtype != torch.int32 or last.shape[0] < batch:
                raise Unmapped(f"{last_name} is not an int32 tensor of batch_size entries")
            ctx.tensors["kv_last_page_len"] = last[:batch]
        ctx.counts.update(batch_size=batch, num_kv_indices=bounds[-1], len_indptr=batch + 1)
        return bounds

    def bucket_of(self, axes) -> tuple:
        raise NotImplementedError

    # -- run ---------------------------------------------------------------------------------
    def run_call(self, inst, ctx: PlanContext, args: tuple, kwargs: dict) -> tuple[Call, tuple]:
        """Check a run call against its plan: (call, definition inputs). Raises Unmapped."""
        raise NotImplementedError

    def template_params(self, call: Call) -> dict[str, Any]:
        ctx = call.instance
        return {**ctx.consts, "dtype": call.params["_dtype"]}

    def _paged_run(self, inst, ctx, args, kwargs, rows: str) -> tuple[Call, tuple]:
        """:meth:`run_call` on a paged KV cache: q (``ctx.counts[rows]`` rows), k, v, then
        :meth:`plan_inputs`. Raises Unmapped when q or the cache does not match the plan."""
        _check_neutral(kwargs, _RUN_NEUTRAL, "run")
        self._forward_state(inst)
        q = self._query(ctx, args[0], ctx.counts[rows])
        k, v = self._paged_cache(ctx, args[1])
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise Unmapped(f"cache dtype {dtype_name(k)} differs from q's {dtype_name(q)}")
        call = Call(args, kwargs, {"_dtype": dtype_name(q)}, ctx)
        return call, (q, k, v, *self.plan_inputs(inst, ctx))

    def plan_inputs(self, inst, ctx) -> tuple:
        """The definition inputs after q, k and v, all taken from the plan: ``index_inputs``,
        kv_last_page_len when a page holds more than one token, sm_scale."""
        tail = [ctx.tensors[name] for name in self.index_inputs]
        if self.paged and ctx.consts["page_size"] > 1:
            tail.append(ctx.tensors["kv_last_page_len"])
        tail.append(self._sm_scale(inst, ctx))
        return tuple(tail)

    def _sm_scale(self, inst, ctx) -> float:
        forward = getattr(inst, "_sm_scale", None)  # set by the deprecated forward()
        value = forward if forward is not None else ctx.sm_scale
        return float(value) if value is not None else 1.0 / math.sqrt(ctx.consts["head_dim"])

    def _forward_state(self, inst) -> None:
        if getattr(inst, "_pos_encoding_mode", "NONE") not in ("NONE", None):
            raise Unmapped(f"pos_encoding_mode {inst._pos_encoding_mode}")
        if getattr(inst, "_logits_soft_cap", None) not in (None, 0, 0.0):
            raise Unmapped("logits_soft_cap is set")
        if getattr(inst, "_window_left", -1) not in (-1, None):
            raise Unmapped("a sliding window is set")

    def _paged_cache(self, ctx, kv):
        """(k_cache, v_cache) as [pages, page_size, kv_heads, head_dim] views; Unmapped for a
        single 5-D tensor (its halves are strided) or another shape."""
        import torch

        if not isinstance(kv, (tuple, list)) or len(kv) != 2:
            raise Unmapped("paged_kv_cache is not a (k_cache, v_cache) pair")
        out = []
        for t in kv:
            if not isinstance(t, torch.Tensor):
                raise Unmapped("paged_kv_cache holds a non-tensor")
            if t.dim() == 3 and ctx.consts["page_size"] == 1:
                t = t.unsqueeze(1)
            if t.dim() != 4 or tuple(t.shape[1:]) != (ctx.consts["page_size"], ctx.consts["num_kv_heads"],
                                                      ctx.consts["head_dim"]):
                raise Unmapped(f"cache shape {tuple(t.shape)} is not [pages, page_size, kv_heads, head_dim]")
            out.append(t)
        return out[0], out[1]

    def _query(self, ctx, q, rows: int):
        import torch

        if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.shape[0] != rows or \
                tuple(q.shape[1:]) != (ctx.consts["num_qo_heads"], ctx.consts["head_dim"]):
            raise Unmapped("q does not match the plan")
        if dtype_name(q) not in _KINDS:
            raise Unmapped(f"q dtype {dtype_name(q)}")
        return q


#: FlashInfer's own decode solutions (by name) and whether each runs the tensor-core kernels.
OWN_DECODE_TENSOR_CORES = {"flashinfer": False, "flashinfer_tc": True}


class PagedDecode(WrapperAdapter):
    op = "gqa_paged_decode"
    api = "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper"
    module, attr = "flashinfer.decode", "BatchDecodeWithPagedKVCacheWrapper"
    plan_parameters = (("indptr", REQUIRED), ("indices", REQUIRED), ("last_page_len", REQUIRED),
                       ("num_qo_heads", REQUIRED), ("num_kv_heads", REQUIRED), ("head_dim", REQUIRED),
                       ("page_size", REQUIRED))
    run_parameters = (("q", REQUIRED), ("paged_kv_cache", REQUIRED))
    index_inputs = ("kv_indptr", "kv_indices")

    def read_plan(self, ctx, call, kwargs):
        self._heads(ctx, call, "head_dim")
        self._pages(ctx, call, "indptr", "indices", "last_page_len")

    def bucket_of(self, axes):
        return (axes["batch_size"], _bucket(axes["num_kv_indices"] / max(axes["batch_size"], 1)))

    def is_original(self, solution, instance: Any = None) -> bool:
        """FlashInfer's own decode solution that runs the kernels ``instance`` runs: the
        CUDA-core one for a wrapper made without tensor cores, ``flashinfer_tc`` for one made
        with them. The other one is FlashInfer too, but a different kernel: it is substituted."""
        if not flashinfer_own(solution):
            return False
        tensor_cores = OWN_DECODE_TENSOR_CORES.get(solution.name)
        return tensor_cores is not None and tensor_cores == bool(getattr(instance, "use_tensor_cores", False))

    def run_call(self, inst, ctx, args, kwargs):
        if len(args) != 2:
            raise Unmapped("run takes q, paged_kv_cache here")
        return self._paged_run(inst, ctx, args, kwargs, "batch_size")


class PagedPrefill(WrapperAdapter):
    op = "gqa_paged_prefill_causal"
    api = "flashinfer.prefill.BatchPrefillWithPagedKVCacheWrapper"
    module, attr = "flashinfer.prefill", "BatchPrefillWithPagedKVCacheWrapper"
    plan_parameters = (("qo_indptr", REQUIRED), ("paged_kv_indptr", REQUIRED), ("paged_kv_indices", REQUIRED),
                       ("paged_kv_last_page_len", REQUIRED), ("num_qo_heads", REQUIRED),
                       ("num_kv_heads", REQUIRED), ("head_dim_qk", REQUIRED), ("page_size", REQUIRED))
    run_parameters = (("q", REQUIRED), ("paged_kv_cache", REQUIRED))
    index_inputs = ("qo_indptr", "kv_indptr", "kv_indices")

    def read_plan(self, ctx, call, kwargs):
        _causal_same_dims(kwargs, call["head_dim_qk"])
        self._heads(ctx, call, "head_dim_qk")
        bounds = self._pages(ctx, call, "paged_kv_indptr", "paged_kv_indices", "paged_kv_last_page_len")
        q_bounds = self._indptr(ctx, "qo_indptr", call["qo_indptr"], "qo_indptr")
        if len(q_bounds) != len(bounds):
            raise Unmapped("qo_indptr and paged_kv_indptr differ in length")
        ctx.counts["total_q"] = q_bounds[-1]
        if ctx.consts["page_size"] == 1:
            del ctx.counts["batch_size"]

    def bucket_of(self, axes):
        batch = axes["len_indptr"] - 1
        return (batch, _bucket(axes["total_q"] / max(batch, 1)),
                _bucket(axes["num_kv_indices"] / max(batch, 1)))

    def run_call(self, inst, ctx, args, kwargs):
        if len(args) > 2:
            raise Unmapped("extra positional arguments to run")
        return self._paged_run(inst, ctx, args, kwargs, "total_q")


class RaggedPrefill(WrapperAdapter):
    op = "gqa_ragged_prefill_causal"
    api = "flashinfer.prefill.BatchPrefillWithRaggedKVCacheWrapper"
    module, attr = "flashinfer.prefill", "BatchPrefillWithRaggedKVCacheWrapper"
    plan_parameters = (("qo_indptr", REQUIRED), ("kv_indptr", REQUIRED), ("num_qo_heads", REQUIRED),
                       ("num_kv_heads", REQUIRED), ("head_dim_qk", REQUIRED))
    paged = False
    index_inputs = ("qo_indptr", "kv_indptr")

    def read_plan(self, ctx, call, kwargs):
        _causal_same_dims(kwargs, call["head_dim_qk"])
        self._heads(ctx, call, "head_dim_qk")
        q_bounds = self._indptr(ctx, "qo_indptr", call["qo_indptr"], "qo_indptr")
        kv_bounds = self._indptr(ctx, "kv_indptr", call["kv_indptr"], "kv_indptr")
        if len(q_bounds) != len(kv_bounds):
            raise Unmapped("qo_indptr and kv_indptr differ in length")
        ctx.counts.update(total_q=q_bounds[-1], total_kv=kv_bounds[-1], len_indptr=len(q_bounds))

    def bucket_of(self, axes):
        batch = axes["len_indptr"] - 1
        return (batch, _bucket(axes["total_q"] / max(batch, 1)), _bucket(axes["total_kv"] / max(batch, 1)))

    def run_call(self, inst, ctx, args, kwargs):
        import torch

        if len(args) != 3:
            raise Unmapped("run takes q, k, v here")
        _check_neutral(kwargs, _RUN_NEUTRAL, "run")
        self._forward_state(inst)
        q = self._query(ctx, args[0], ctx.counts["total_q"])
        k, v = args[1], args[2]
        want = (ctx.consts["num_kv_heads"], ctx.consts["head_dim"])
        for t in (k, v):
            if not isinstance(t, torch.Tensor) or t.dim() != 3 or tuple(t.shape[1:]) != want \
                    or t.shape[0] < ctx.counts["total_kv"] or t.dtype != q.dtype:
                raise Unmapped("k/v do not match the plan")
        k, v = k[:ctx.counts["total_kv"]], v[:ctx.counts["total_kv"]]
        call = Call(args, kwargs, {"_dtype": dtype_name(q)}, ctx)
        return call, (q, k, v, *self.plan_inputs(inst, ctx))


def _causal_same_dims(kwargs, head_dim_qk) -> None:
    if not kwargs.get("causal", False):
        raise Unmapped("causal=False (the definitions are causal)")
    vo = kwargs.get("head_dim_vo")
    if vo is not None and vo != head_dim_qk:
        raise Unmapped("head_dim_vo differs from head_dim_qk")


WRAPPER_ADAPTERS = (WrapperAdapter,)


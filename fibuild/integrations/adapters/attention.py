"""Adapters of FlashInfer's attention wrappers: paged decode, paged prefill, ragged prefill.

Each declares its seam (:mod:`.wrappers`): the entries that plan and run, the module
functions that plan it (``fast_decode_plan`` for decode), and the wrapper attributes that
hold the page table after any plan. ``plan`` always runs the original (so the original
``run`` can take any call); ``run`` dispatches on what the wrapper now holds.
"""
from __future__ import annotations

from typing import Any

from .base import REQUIRED, Call, Unmapped, dtype_name, flashinfer_own
from .wrappers import PlanContext, WrapperAdapter, bucket, check_neutral

__all__ = ["PagedDecode", "PagedPrefill", "RaggedPrefill", "PlanContext", "WrapperAdapter", "WRAPPER_ADAPTERS"]

#: FlashInfer's own decode solutions (by name) and whether each runs the tensor-core kernels.
OWN_DECODE_TENSOR_CORES = {"flashinfer": False, "flashinfer_tc": True}

_PAGED_STATE = {"kv_indptr": "_paged_kv_indptr_buf", "kv_indices": "_paged_kv_indices_buf",
                "kv_last_page_len": "_paged_kv_last_page_len_buf"}


class PagedDecode(WrapperAdapter):
    op = "gqa_paged_decode"
    api = "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper"
    module, attr = "flashinfer.decode", "BatchDecodeWithPagedKVCacheWrapper"
    # FlashInfer 0.7.2 flashinfer/decode.py: fast_decode_plan(self, indptr, indices, last_page_len, ...)
    planners = (("flashinfer.decode", "fast_decode_plan"),)
    state_buffers = _PAGED_STATE
    plan_parameters = (("indptr", REQUIRED), ("indices", REQUIRED), ("last_page_len", REQUIRED),
                       ("num_qo_heads", REQUIRED), ("num_kv_heads", REQUIRED), ("head_dim", REQUIRED),
                       ("page_size", REQUIRED))
    run_parameters = (("q", REQUIRED), ("paged_kv_cache", REQUIRED))
    index_inputs = ("kv_indptr", "kv_indices")

    def read_plan(self, ctx, call, kwargs):
        self._heads(ctx, call, "head_dim")
        self._pages(ctx, call, "indptr", "indices", "last_page_len", kwargs.get("global_override_indptr_cpu"))

    def bucket_of(self, axes):
        return (axes["batch_size"], bucket(axes["num_kv_indices"] / max(axes["batch_size"], 1)))

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


class _Causal(WrapperAdapter):
    """Prefill wrappers: the definitions are causal; ``forward(causal=...)`` may change it."""

    run_state = WrapperAdapter.run_state + ("_causal",)

    def _forward_state(self, inst) -> None:
        super()._forward_state(inst)
        if not getattr(inst, "_causal", True):
            raise Unmapped("causal=False (the definitions are causal)")


class PagedPrefill(_Causal):
    op = "gqa_paged_prefill_causal"
    api = "flashinfer.prefill.BatchPrefillWithPagedKVCacheWrapper"
    module, attr = "flashinfer.prefill", "BatchPrefillWithPagedKVCacheWrapper"
    state_buffers = {**_PAGED_STATE, "qo_indptr": "_qo_indptr_buf"}
    plan_parameters = (("qo_indptr", REQUIRED), ("paged_kv_indptr", REQUIRED), ("paged_kv_indices", REQUIRED),
                       ("paged_kv_last_page_len", REQUIRED), ("num_qo_heads", REQUIRED),
                       ("num_kv_heads", REQUIRED), ("head_dim_qk", REQUIRED), ("page_size", REQUIRED))
    run_parameters = (("q", REQUIRED), ("paged_kv_cache", REQUIRED))
    index_inputs = ("qo_indptr", "kv_indptr", "kv_indices")

    def read_plan(self, ctx, call, kwargs):
        _same_dims(kwargs, call["head_dim_qk"])
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
        return (batch, bucket(axes["total_q"] / max(batch, 1)),
                bucket(axes["num_kv_indices"] / max(batch, 1)))

    def run_call(self, inst, ctx, args, kwargs):
        if len(args) > 2:
            raise Unmapped("extra positional arguments to run")
        return self._paged_run(inst, ctx, args, kwargs, "total_q")


class RaggedPrefill(_Causal):
    op = "gqa_ragged_prefill_causal"
    api = "flashinfer.prefill.BatchPrefillWithRaggedKVCacheWrapper"
    module, attr = "flashinfer.prefill", "BatchPrefillWithRaggedKVCacheWrapper"
    state_buffers = {"qo_indptr": "_qo_indptr_buf", "kv_indptr": "_kv_indptr_buf"}
    plan_parameters = (("qo_indptr", REQUIRED), ("kv_indptr", REQUIRED), ("num_qo_heads", REQUIRED),
                       ("num_kv_heads", REQUIRED), ("head_dim_qk", REQUIRED))
    paged = False
    index_inputs = ("qo_indptr", "kv_indptr")

    def read_plan(self, ctx, call, kwargs):
        _same_dims(kwargs, call["head_dim_qk"])
        self._heads(ctx, call, "head_dim_qk")
        q_bounds = self._indptr(ctx, "qo_indptr", call["qo_indptr"], "qo_indptr")
        kv_bounds = self._indptr(ctx, "kv_indptr", call["kv_indptr"], "kv_indptr")
        if len(q_bounds) != len(kv_bounds):
            raise Unmapped("qo_indptr and kv_indptr differ in length")
        ctx.counts.update(total_q=q_bounds[-1], total_kv=kv_bounds[-1], len_indptr=len(q_bounds))

    def bucket_of(self, axes):
        batch = axes["len_indptr"] - 1
        return (batch, bucket(axes["total_q"] / max(batch, 1)), bucket(axes["total_kv"] / max(batch, 1)))

    def run_call(self, inst, ctx, args, kwargs):
        import torch

        if len(args) != 3:
            raise Unmapped("run takes q, k, v here")
        check_neutral(kwargs, self.run_neutral, "run")
        self._forward_state(inst)
        q = self._query(ctx, args[0], ctx.counts["total_q"])
        k, v = args[1], args[2]
        want = (ctx.consts["num_kv_heads"], ctx.consts["head_dim"])
        for t in (k, v):
            if not isinstance(t, torch.Tensor) or t.dim() != 3 or tuple(t.shape[1:]) != want \
                    or t.shape[0] < ctx.counts["total_kv"] or t.dtype != q.dtype:
                raise Unmapped("k/v do not match the plan")
        self._outputs(q, kwargs)
        k, v = k[:ctx.counts["total_kv"]], v[:ctx.counts["total_kv"]]
        call = Call(args, kwargs, {"_dtype": dtype_name(q)}, ctx)
        return call, (q, k, v, *self.plan_inputs(inst, ctx))


def _same_dims(kwargs, head_dim_qk) -> None:
    # causal is read from the wrapper at run: the deprecated forward(causal=...) sets it there.
    vo = kwargs.get("head_dim_vo")
    if vo is not None and vo != head_dim_qk:
        raise Unmapped("head_dim_vo differs from head_dim_qk")


WRAPPER_ADAPTERS = (WrapperAdapter,)

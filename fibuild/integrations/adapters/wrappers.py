"""The seam of FlashInfer's attention wrappers, as data, and what every wrapper adapter shares.

Written from the engines' calls (FlashInfer 0.7.2 ``flashinfer/decode.py`` and
``prefill.py``; SGLang 0.5.23 ``srt/layers/attention/flashinfer_backend.py``; vLLM v1
``v1/attention/backends/flashinfer.py``):

- planning happens through ``plan``, its class alias ``begin_forward`` (bound at class
  creation, so patching ``plan`` does not patch it), and module functions that plan a
  wrapper passed first (FlashInfer's ``fast_decode_plan``, which engines also bind as
  ``functools.partial(fast_decode_plan, wrapper)`` on the instance's ``begin_forward``);
- running happens through ``run``, its ``functools.partialmethod`` alias ``run_return_lse``
  (bound to the original ``run`` at class creation), and the deprecated ``forward`` /
  ``forward_return_lse``, which store sm_scale, causal, soft-cap... on the instance and call
  ``self.run``;
- whoever planned, the wrapper's own attributes (``_paged_kv_indptr_buf``,
  ``_paged_kv_indices_buf``, ``_paged_kv_last_page_len_buf``, ``_qo_indptr_buf``,
  ``_kv_indptr_buf``, ``_sm_scale``, ``_causal``...) hold the current page table, and
  ``_plan_info`` is a new object after every plan: a run whose ``_plan_info`` is not the
  one the last plan fibuild saw left was planned by a path fibuild did not see.

A :class:`WrapperAdapter` declares those as class attributes (``plan_entries``,
``run_entries``, ``run_partials``, ``planners``, ``state_buffers``, ``run_state``,
``plan_neutral``, ``run_neutral``); :mod:`fibuild.integrations.wrapper_sites` patches
whatever they name. A plan is read into a :class:`PlanContext`: the constants and host-side
counts from the plan call (FlashInfer's plan copies the indptr to the host too), the
definition's index tensors from the wrapper's state (views of the engine's own buffers, so
a CUDA graph captured over them stays valid when the engine re-plans into them). Anything
the adapter does not understand (another layout, masks, soft-cap, RoPE, fp8 scales, another
device) leaves the call to the original, with the reason counted.
"""
from __future__ import annotations

import math
from typing import Any

from .base import Adapter, Call, Unmapped, bind, dtype_name

# Heavy or optional dependencies, imported inside the functions that use them: torch.

_NONE = (None,)
_KINDS = ("float16", "bfloat16")


def _neutral(values):
    return lambda v: v in values


def _any(v) -> bool:
    return True


def _tensor_or_none(v) -> bool:
    return v is None or hasattr(v, "data_ptr")


#: keyword arguments of plan (and fast_decode_plan) that change nothing fibuild's definitions
#: express differently, with the values that are safe; any other keyword makes the call the original's.
PLAN_NEUTRAL = {
    "pos_encoding_mode": _neutral(("NONE",)), "window_left": _neutral((-1, None)),
    "logits_soft_cap": _neutral((None, 0, 0.0)), "q_data_type": _any, "kv_data_type": _any,
    "o_data_type": _any, "data_type": _any,
    "sm_scale": lambda v: v is None or isinstance(v, (int, float)), "rope_scale": _any,
    "rope_theta": _any, "non_blocking": _any, "fixed_split_size": _any,
    "disable_split_kv": _any, "q_len_per_req": _neutral((None, 1)),
    "custom_mask": _neutral(_NONE), "packed_custom_mask": _neutral(_NONE),
    "use_fp16_qk_reduction": _neutral((False,)), "head_dim_vo": _any,
    "causal": _any, "block_tables": _neutral(_NONE),
    # vLLM passes the per-sequence lengths it derived from indptr and last_page_len.
    "seq_lens": _tensor_or_none, "seq_lens_q": _neutral(_NONE), "prefix_len_ptr": _neutral(_NONE),
    "token_pos_in_items_ptr": _neutral(_NONE), "token_pos_in_items_len": _neutral((0,)),
    "max_item_len_ptr": _neutral(_NONE), "v_indptr": _neutral(_NONE),
    "max_token_per_sequence": _any, "max_sequence_kv": _any,
    # fast_decode_plan: SGLang's host copy of the indptr (read instead of a device copy).
    "global_override_indptr_cpu": _tensor_or_none,
}
#: keyword arguments of run: ``out``/``lse`` are written, ``enable_pdl`` only orders launches.
RUN_NEUTRAL = {
    "q_scale": _neutral((None, 1.0)), "k_scale": _neutral((None, 1.0)), "v_scale": _neutral((None, 1.0)),
    "o_scale": _neutral((None, 1.0)), "out": _tensor_or_none, "lse": _tensor_or_none,
    "return_lse": lambda v: isinstance(v, bool), "enable_pdl": _any,
    "window_left": _neutral((None, -1)), "sinks": _neutral(_NONE), "q_len_per_req": _neutral((None, 1)),
    "skip_softmax_threshold_scale_factor": _neutral(_NONE), "kv_cache_sf": _neutral(_NONE),
    "use_fp16_softmax": _neutral((None, False)), "uses_spcompress": _neutral((None, False)),
}


def check_neutral(call_kwargs, rules, what) -> None:
    for key, value in call_kwargs.items():
        rule = rules.get(key)
        if rule is None:
            raise Unmapped(f"{what}: unsupported keyword argument {key}")
        if not rule(value):
            raise Unmapped(f"{what}: {key}={value!r} is not supported")


def bucket(n: float) -> int:
    """Power-of-two bucket of an average length (1, 2, 4, ...)."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


_MISSING = object()


class NeedsDoubledIndices(Exception):
    """A run passes one combined KV tensor and the plan's page indices are not doubled yet:
    the caller makes them (see :func:`combined_halves`) and asks again."""


def combined_halves(kv):
    """K and V of one contiguous [pages, 2, page_size, heads, dim] tensor (vLLM's layout) as
    two dense [2 * pages - 1, page_size, heads, dim] views of it, never a copy: page p's K is
    row 2p of the first and its V row 2p of the second, so the page indices are doubled."""
    flat = kv.view(kv.shape[0] * 2, *kv.shape[2:])
    return flat[:-1], flat[1:]


class PlanContext:
    """What one plan left on a wrapper: definition inputs read from it, consts, host counts,
    the ``_plan_info`` it made, and the memo of run decisions for it. ``reason`` is set when
    the plan cannot be substituted."""

    __slots__ = ("reason", "consts", "tensors", "counts", "blobs", "memo", "recorded", "sm_scale",
                 "plan_info", "entry", "doubled")

    def __init__(self, reason: str | None = None):
        self.reason = reason
        self.consts: dict[str, Any] = {}
        self.tensors: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.blobs: dict[str, Any] | None = None
        self.memo: dict[Any, Any] = {}
        self.recorded = False
        self.sm_scale: float | None = None
        self.plan_info: Any = _MISSING
        self.entry = ""
        self.doubled = False  # kv_indices holds the doubled page indices of a combined KV tensor

    def stale(self, inst) -> bool:
        """True when ``inst`` was planned again since this context was read, by a path that
        did not read a new one (its ``_plan_info`` is another object)."""
        return self.plan_info is not _MISSING and getattr(inst, "_plan_info", self.plan_info) is not self.plan_info


class WrapperAdapter(Adapter):
    """An adapter of a FlashInfer wrapper class: its seam as data, then the mapping."""

    kind = "wrapper"
    #: class attributes that plan (``begin_forward = plan`` is bound at class creation)
    plan_entries: tuple[str, ...] = ("plan", "begin_forward")
    #: class attributes that run (``forward`` and ``forward_return_lse`` call ``self.run``)
    run_entries: tuple[str, ...] = ("run",)
    #: ``functools.partialmethod`` aliases of run bound at class creation, with their keywords
    run_partials: dict[str, dict[str, Any]] = {"run_return_lse": {"return_lse": True}}
    #: module functions planning the wrapper passed as their first argument: (module, attr)
    planners: tuple[tuple[str, str], ...] = ()
    #: definition input -> the wrapper attribute holding it after any plan
    state_buffers: dict[str, str] = {}
    #: wrapper attributes that ``forward`` sets and ``run`` reads; part of the run memo key
    run_state: tuple[str, ...] = ("_sm_scale", "_logits_soft_cap", "_window_left", "_pos_encoding_mode")
    plan_neutral = PLAN_NEUTRAL
    run_neutral = RUN_NEUTRAL

    plan_parameters: tuple = ()
    run_parameters: tuple = ()
    paged = True
    index_inputs: tuple = ()  # the plan's index tensors among the definition's inputs, in order

    # -- plan --------------------------------------------------------------------------------
    def plan_context(self, inst, args: tuple, kwargs: dict, entry: str = "plan") -> PlanContext:
        """The context the plan that just ran (``args``/``kwargs``, through ``entry``) left on
        ``inst``. Never raises; doubts land in ``reason``. Cost: one host copy of the indptr
        when the call did not pass one (FlashInfer's plan makes one too)."""
        ctx = PlanContext()
        ctx.entry = entry
        ctx.plan_info = getattr(inst, "_plan_info", _MISSING)
        try:
            known = dict(self.plan_parameters)
            call = bind(self.plan_parameters, args, {k: v for k, v in kwargs.items() if k in known})
            call.kwargs = kwargs
            check_neutral({k: v for k, v in kwargs.items() if k not in known}, self.plan_neutral, "plan")
            if getattr(inst, "_kv_layout", "NHD") != "NHD":
                raise Unmapped(f"kv_layout {inst._kv_layout} (definitions use NHD)")
            self.read_plan(ctx, call, kwargs)
            self._read_state(inst, ctx)
        except Unmapped as exc:
            ctx.reason = exc.reason
        return ctx

    def read_plan(self, ctx: PlanContext, call: Call, kwargs: dict) -> None:
        raise NotImplementedError

    def _read_state(self, inst, ctx: PlanContext) -> None:
        """Replace the plan call's index tensors by the wrapper's own buffers (cut to the
        plan's lengths: a CUDA-graph wrapper's buffers are max-sized)."""
        import torch

        lengths = {"kv_indices": ctx.counts.get("num_kv_indices"),
                   "kv_last_page_len": ctx.counts.get("batch_size", ctx.counts.get("len_indptr", 1) - 1)}
        for name, attr in self.state_buffers.items():
            if name not in ctx.tensors:
                continue
            value = getattr(inst, attr, None)
            if not isinstance(value, torch.Tensor):
                continue  # a FlashInfer without this attribute: the plan call's tensor stays
            if value.dtype != torch.int32 or value.dim() != 1:
                raise Unmapped(f"the wrapper's {attr} is not a 1-D int32 tensor")
            want = lengths.get(name, ctx.tensors[name].shape[0])
            if value.shape[0] < want:
                raise Unmapped(f"the wrapper's {attr} holds {value.shape[0]} entries, the plan {want}")
            ctx.tensors[name] = value[:want]

    def _indptr(self, ctx, name, value, key, host=None):
        """Record an int32 indptr; returns its host list (from ``host`` when given)."""
        import torch

        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype != torch.int32:
            raise Unmapped(f"{name} is not a 1-D int32 tensor")
        bounds = (host if host is not None else value).to("cpu").tolist()
        if len(bounds) != value.shape[0]:
            raise Unmapped(f"{name} and its host copy differ in length")
        ctx.tensors[key] = value
        return bounds

    def _heads(self, ctx, call, hd_name):
        h, kv, d = int(call["num_qo_heads"]), int(call["num_kv_heads"]), int(call[hd_name])
        if h % kv:
            raise Unmapped(f"{h} query heads are not a multiple of {kv} KV heads")
        ctx.consts.update(num_qo_heads=h, num_kv_heads=kv, head_dim=d)
        ctx.sm_scale = call.kwargs.get("sm_scale")  # None: the plan call passed none

    def _pages(self, ctx, call, indptr_name, indices_name, last_name, host=None):
        import torch

        ps = int(call["page_size"])
        ctx.consts["page_size"] = ps
        bounds = self._indptr(ctx, indptr_name, call[indptr_name], "kv_indptr", host)
        indices, last = call[indices_name], call[last_name]
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int32 or indices.dim() != 1:
            raise Unmapped(f"{indices_name} is not a 1-D int32 tensor")
        if indices.shape[0] < bounds[-1]:
            raise Unmapped(f"{indices_name} is shorter than {indptr_name}[-1]")
        batch = len(bounds) - 1
        ctx.tensors["kv_indices"] = indices[:bounds[-1]]  # max-sized buffers: indptr[-1] is the length
        if ps > 1:
            if not isinstance(last, torch.Tensor) or last.dtype != torch.int32 or last.shape[0] < batch:
                raise Unmapped(f"{last_name} is not an int32 tensor of batch_size entries")
            ctx.tensors["kv_last_page_len"] = last[:batch]
        ctx.counts.update(batch_size=batch, num_kv_indices=bounds[-1], len_indptr=batch + 1)
        return bounds

    def bucket_of(self, axes) -> tuple:
        raise NotImplementedError

    # -- run ---------------------------------------------------------------------------------
    def run_form(self, inst, args: tuple, kwargs: dict) -> tuple:
        """The memo key of a run call: argument count, the KV cache's type (a pair or one
        tensor), keywords (tensors by shape and dtype: ``out=`` is a new view each step), q's
        shape and dtype, and the state ``forward`` sets."""
        q = args[0]
        form = tuple((k, (v.shape, v.dtype) if hasattr(v, "data_ptr") else v) for k, v in kwargs.items()) \
            if kwargs else ()
        return (len(args), type(args[1]), form, q.shape, q.dtype,
                tuple(getattr(inst, a, None) for a in self.run_state))

    def run_call(self, inst, ctx: PlanContext, args: tuple, kwargs: dict) -> tuple[Call, tuple]:
        """Check a run call against its plan: (call, definition inputs). Raises Unmapped."""
        raise NotImplementedError

    def template_params(self, call: Call) -> dict[str, Any]:
        ctx = call.instance
        return {**ctx.consts, "dtype": call.params["_dtype"]}

    def _paged_run(self, inst, ctx, args, kwargs, rows: str) -> tuple[Call, tuple]:
        """:meth:`run_call` on a paged KV cache: q (``ctx.counts[rows]`` rows), k, v, then
        :meth:`plan_inputs`. Raises Unmapped when q or the cache does not match the plan."""
        check_neutral(kwargs, self.run_neutral, "run")
        self._forward_state(inst)
        q = self._query(ctx, args[0], ctx.counts[rows])
        k, v, combined = self._paged_cache(ctx, args[1])
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise Unmapped(f"cache dtype {dtype_name(k)} differs from q's {dtype_name(q)}")
        if combined != ctx.doubled:
            if ctx.doubled:
                raise Unmapped("this plan's runs mix a combined KV tensor and a (k, v) pair")
            raise NeedsDoubledIndices()
        self._outputs(q, kwargs)
        call = Call(args, kwargs, {"_dtype": dtype_name(q)}, ctx)
        return call, (q, k, v, *self.plan_inputs(inst, ctx))

    def plan_inputs(self, inst, ctx) -> tuple:
        """The definition inputs after q, k and v, all from the plan: ``index_inputs``,
        kv_last_page_len when a page holds more than one token, sm_scale."""
        tail = [ctx.tensors[name] for name in self.index_inputs]
        if self.paged and ctx.consts["page_size"] > 1:
            tail.append(ctx.tensors["kv_last_page_len"])
        tail.append(self._sm_scale(inst, ctx))
        return tuple(tail)

    def _sm_scale(self, inst, ctx) -> float:
        # The wrapper's _sm_scale, set by plan, fast_decode_plan and the deprecated forward().
        value = getattr(inst, "_sm_scale", ctx.sm_scale)
        return float(value) if value is not None else 1.0 / math.sqrt(ctx.consts["head_dim"])

    def _forward_state(self, inst) -> None:
        if getattr(inst, "_pos_encoding_mode", "NONE") not in ("NONE", None):
            raise Unmapped(f"pos_encoding_mode {inst._pos_encoding_mode}")
        if getattr(inst, "_logits_soft_cap", None) not in (None, 0, 0.0):
            raise Unmapped("logits_soft_cap is set")
        if getattr(inst, "_window_left", -1) not in (-1, None):
            raise Unmapped("a sliding window is set")

    def _outputs(self, q, kwargs) -> None:
        out, lse = kwargs.get("out"), kwargs.get("lse")
        if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device):
            raise Unmapped("out= does not have q's shape, dtype and device")
        if lse is not None and (tuple(lse.shape) != tuple(q.shape[:2]) or lse.device != q.device):
            raise Unmapped("lse= is not [rows, heads] on q's device")

    def _paged_cache(self, ctx, kv):
        """(k_cache, v_cache) as [pages, page_size, kv_heads, head_dim] views, never copies, and
        whether they came from one combined tensor (see :func:`combined_halves`)."""
        import torch

        want = (ctx.consts["page_size"], ctx.consts["num_kv_heads"], ctx.consts["head_dim"])
        if isinstance(kv, torch.Tensor):
            if kv.dim() != 5 or kv.shape[1] != 2 or tuple(kv.shape[2:]) != want:
                raise Unmapped(f"paged_kv_cache of shape {tuple(kv.shape)} is not [pages, 2, page_size, "
                               "kv_heads, head_dim]")
            if not kv.is_contiguous():
                raise Unmapped("the combined KV tensor is not contiguous: its K and V halves are strided "
                               "views, and fibuild never copies the cache")
            return (*combined_halves(kv), True)
        if not isinstance(kv, (tuple, list)) or len(kv) != 2:
            raise Unmapped("paged_kv_cache is not a (k_cache, v_cache) pair")
        out = []
        for t in kv:
            if not isinstance(t, torch.Tensor):
                raise Unmapped("paged_kv_cache holds a non-tensor")
            if t.dim() == 3 and ctx.consts["page_size"] == 1:
                t = t.unsqueeze(1)
            if t.dim() != 4 or tuple(t.shape[1:]) != want:
                raise Unmapped(f"cache shape {tuple(t.shape)} is not [pages, page_size, kv_heads, head_dim]")
            out.append(t)
        return out[0], out[1], False

    def _query(self, ctx, q, rows: int):
        import torch

        if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.shape[0] != rows or \
                tuple(q.shape[1:]) != (ctx.consts["num_qo_heads"], ctx.consts["head_dim"]):
            raise Unmapped("q does not match the plan")
        if dtype_name(q) not in _KINDS:
            raise Unmapped(f"q dtype {dtype_name(q)}")
        return q

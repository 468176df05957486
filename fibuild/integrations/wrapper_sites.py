"""The patched ``plan`` and ``run`` of FlashInfer's attention wrappers.

``plan``: the original plan, then the :class:`PlanContext` (and, when the trace wants this
bucket, host copies of the index tensors for its blob: plan runs outside graph capture and
syncs anyway). ``run``: the context's memo, keyed by the call form (q shape and dtype,
keywords), holds the handler: the original ``run``, a counter around it, or the substitute,
which per call only unpacks the KV cache into views, checks contiguity and shapes, and calls
the Kernel with the inputs fixed at decision time. Per call on a seen form: one weak-dict
lookup, one tuple key, one dict lookup. Plan/run solutions inside CUDA graph capture, and the
refill of their captured plans at each later ``plan``: :mod:`.graph_plans`.
"""
from __future__ import annotations

import functools
import logging
import weakref
from typing import Any, Callable

from fibuild.compile.plans import PlannedEntry
from fibuild.errors import InputError
from fibuild.spec.templates import definition_name

from .adapters.attention import PlanContext, WrapperAdapter
from .graph_plans import GraphPlans
from .session import var_axes
from .sites import ran_a_solution

# Heavy or optional dependencies, imported inside the functions that use them: torch.

log = logging.getLogger("fibuild.integrations")


def patched_plan(session, adapter: WrapperAdapter, plan: Callable, contexts, graphs: GraphPlans) -> Callable:
    def fibuild_plan(self, *args, **kwargs):
        result = plan(self, *args, **kwargs)
        try:
            ctx = adapter.plan_context(self, args, kwargs)
            if ctx.reason is None and session.recorder is not None:
                _prepare_blobs(session, adapter, ctx, kwargs)
        except Exception as exc:  # noqa: BLE001 - never break the engine's plan
            ctx = PlanContext()
            ctx.reason = f"adapter error in plan: {type(exc).__name__}: {exc}"
            log.warning("fibuild: %s: %s", adapter.api, ctx.reason)
        contexts[self] = ctx
        graphs.replan(self, adapter, ctx)  # raises GraphReplanError when a captured graph would be stale
        return result

    return fibuild_plan


def _prepare_blobs(session, adapter, ctx: PlanContext, kwargs) -> None:
    """Copy the index tensors to the host when the trace still wants this bucket."""
    dtype = _dtype_name(kwargs.get("q_data_type", kwargs.get("data_type")))
    name = definition_name(adapter.op, {**ctx.consts, "dtype": dtype})
    if session.recorder.wants(name, ctx.counts, adapter.bucket_of):
        ctx.blobs = {k: t.to("cpu").clone() for k, t in ctx.tensors.items()}


def _dtype_name(value) -> str:
    text = str(value).removeprefix("torch.") if value is not None else "float16"
    return {"half": "float16", "float": "float32"}.get(text, text)


def patched_run(session, adapter: WrapperAdapter, run: Callable, contexts, graphs: GraphPlans) -> Callable:
    def decide(inst, ctx: PlanContext, args, kwargs) -> Callable:
        if ctx.reason is not None:
            return session.unmapped_handler(adapter, run, ctx.reason)

        def prepare():
            call, inputs = adapter.run_call(inst, ctx, args, kwargs)
            record = None
            if ctx.blobs is not None and not ctx.recorded:
                ctx.recorded = True
                record = ({"sm_scale": {"type": "scalar", "value": float(inputs[-1])}}, ctx.blobs,
                          adapter.bucket_of)
            return adapter.template_params(call), inputs, record

        return session.decide(adapter, run, lambda kernel, defn, inputs: substitute(
            session, adapter, run, graphs, kernel, defn, inputs, bool(kwargs.get("return_lse", False))), prepare,
            inst)

    def fibuild_run(self, *args, **kwargs):
        ctx = contexts.get(self)
        if ctx is None:
            return run(self, *args, **kwargs)
        try:
            q = args[0]
            key = (len(args), tuple(kwargs.items()) if kwargs else (), q.shape, q.dtype)
            handler = ctx.memo[key]
        except KeyError:
            handler = ctx.memo[key] = decide(self, ctx, args, kwargs)
        except Exception:  # noqa: BLE001 - a form the key cannot read: the original decides
            return run(self, *args, **kwargs)
        return handler(self, *args, **kwargs)

    return fibuild_run


def substitute(session, adapter: WrapperAdapter, run: Callable, graphs: GraphPlans, kernel, defn,
               inputs: tuple, want_lse: bool) -> Callable:
    """The run handler calling ``kernel`` with the plan's index tensors (``inputs[3:]``).

    During CUDA graph capture a plan/run solution runs only with a plan made before the
    capture that can be refilled when the engine plans again (:mod:`.graph_plans`); otherwise
    the original run is captured. A query that is not contiguous (a view of a fused QKV
    output) is copied, it is small; KV caches that are not send the call to the original.
    """
    guard = session.guard
    tail = inputs[3:]
    k0 = inputs[1]
    cache_shape = tuple(k0.shape[1:])
    paged = adapter.paged
    rows = k0.shape[0]
    settled: list[bool | None] = [None]
    planned: list[bool | None] = [None]  # whether the solution is a plan/run one (known once run)

    def fibuild_run_substitute(inst, *args, **kwargs):
        if settled[0] is False or getattr(guard, "active", False):
            return run(inst, *args, **kwargs)
        q = args[0]
        if paged:
            k, v = args[1]
            if k.dim() == 3:
                k, v = k.unsqueeze(1), v.unsqueeze(1)
        else:
            k, v = args[1][:rows], args[2][:rows]
        if tuple(k.shape[1:]) != cache_shape or v.shape != k.shape or not (k.is_contiguous() and v.is_contiguous()):
            return run(inst, *args, **kwargs)
        if not q.is_contiguous():  # e.g. a view of the fused QKV output: a small copy, not a fallback
            q = q.contiguous()
        call = (q, k, v, *tail)
        if planned[0] is not False and _capturing() and not graphs.capture(inst, kernel, defn, call):
            return run(inst, *args, **kwargs)
        guard.active = True
        try:
            out, lse = kernel(*call)
        except InputError:  # raised before anything ran: the original takes the call
            return run(inst, *args, **kwargs)
        finally:
            guard.active = False
        if settled[0] is None:
            key = defn.apply_key(var_axes(defn, call))
            resolution = kernel.resolution(key)
            settled[0] = ran_a_solution(adapter, defn, resolution, inst)
            entry = kernel.entry(key)
            planned[0] = isinstance(entry, PlannedEntry)
            if planned[0] and settled[0]:
                graphs.remember(inst, kernel, entry, call, resolution.solution_name)
        return (out, lse) if want_lse else out

    return fibuild_run_substitute


def _capturing() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def context_of(wrapper_instance) -> Any:
    """The PlanContext of a wrapper instance's last plan (None before any plan); for tests."""
    run = type(wrapper_instance).run
    contexts = getattr(run, "fibuild_contexts", None)
    return contexts.get(wrapper_instance) if contexts is not None else None


def captured_solution(wrapper_instance) -> str | None:
    """The fibuild solution a wrapper instance's runs captured in CUDA graphs, or None when
    no fibuild plan was captured (the original run was, or nothing was)."""
    graphs = getattr(type(wrapper_instance).run, "fibuild_graphs", None)
    return graphs.captured_solution(wrapper_instance) if graphs is not None else None


def release_graphs(wrapper_instance) -> None:
    """Unpin the plans a wrapper instance's runs captured in CUDA graphs, once the engine
    dropped those graphs (its next ``plan`` then no longer refills them)."""
    graphs = getattr(type(wrapper_instance).run, "fibuild_graphs", None)
    if graphs is not None:
        graphs.release(wrapper_instance)


def patch_wrapper_class(integration, adapter: WrapperAdapter, cls) -> bool:
    """Replace ``cls.plan`` and ``cls.run``; see the module docstring."""
    plan, run = getattr(cls, "plan", None), getattr(cls, "run", None)
    if plan is None or run is None or hasattr(run, "fibuild_contexts"):
        return False
    contexts: "weakref.WeakKeyDictionary[Any, PlanContext]" = weakref.WeakKeyDictionary()
    graphs = GraphPlans(adapter.api)
    new_plan = functools.update_wrapper(patched_plan(integration.session, adapter, plan, contexts, graphs), plan)
    new_run = functools.update_wrapper(patched_run(integration.session, adapter, run, contexts, graphs), run)
    new_run.fibuild_contexts = contexts
    new_run.fibuild_graphs = graphs
    integration.patcher.replace(cls, "plan", new_plan)
    integration.patcher.replace(cls, "run", new_run)
    return True

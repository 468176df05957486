"""The patched entries of FlashInfer's attention wrappers, one :class:`WrapperSite` per class.

What gets patched is the adapter's seam data (:mod:`.adapters.wrappers`): every plan entry
(``plan``, ``begin_forward``) and planner function (``fast_decode_plan``, replaced in every
loaded module that bound it, so ``partial(fast_decode_plan, wrapper)`` made afterwards plans
through it) calls the original, then :meth:`WrapperSite.planned`: the :class:`PlanContext`
read from the wrapper's state, kept per instance, and the refill of the plans its runs
captured in CUDA graphs (:mod:`.graph_plans`). Every run entry (``run``, the
``run_return_lse`` partialmethod rebound to it; ``forward``/``forward_return_lse`` call
``self.run``) goes to :meth:`WrapperSite.run`: the context's memo, keyed by the call form
and the state ``forward`` sets, holds the handler: the original ``run`` counted, or the
substitute, which per call only unpacks the KV cache into views, checks contiguity and
shapes, calls the Kernel with the inputs fixed at decision time and writes ``out=``/``lse=``.

A run whose wrapper was planned by a path fibuild did not see (``_plan_info`` is not the
one the last seen plan left) is the original's, counted as planned by ``unseen``; if that
wrapper's runs had captured a fibuild plan in a CUDA graph, the graph is stale and
:class:`~fibuild.errors.GraphReplanError` is raised. Per call on a seen form: one weak-dict
lookup, one identity check, one tuple key, one dict lookup, the handler.
"""
from __future__ import annotations

import functools
import importlib
import logging
import weakref
from typing import Any, Callable

from fibuild.compile.plans import PlannedEntry
from fibuild.errors import GraphReplanError, InputError
from fibuild.spec.templates import definition_name

from .adapters.attention import PlanContext, WrapperAdapter
from .adapters.base import Unmapped
from .adapters.wrappers import NeedsDoubledIndices, combined_halves
from .graph_plans import GraphPlans
from .session import var_axes
from .sites import ran_a_solution

# Heavy or optional dependencies, imported inside the functions that use them: torch.

log = logging.getLogger("fibuild.integrations")


class WrapperSite:
    """One patched wrapper class: its session, adapter, original run, per-instance contexts,
    CUDA-graph plans and counters."""

    def __init__(self, session, adapter: WrapperAdapter, cls, run: Callable):
        self.session = session
        self.cls = cls
        self.adapter = adapter
        self.original_run = run
        self.contexts: "weakref.WeakKeyDictionary[Any, PlanContext]" = weakref.WeakKeyDictionary()
        self.graphs = GraphPlans(adapter.api)
        self.counters = session.stats.of(adapter.api)
        # per instance whose runs pass one combined KV tensor: its doubled page indices
        self.doubled: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
        self._no_plan = self.counters.cell("fallback", "run before any plan fibuild saw")
        self._unkeyed = self.counters.cell("fallback", "a run call fibuild cannot key")

    # -- plans -------------------------------------------------------------------------
    def unseen_before(self, inst) -> bool:
        """Before a seen plan of ``inst``: whether a plan fibuild did not see ran since the last one."""
        ctx = self.contexts.get(inst)
        return ctx is not None and ctx.stale(inst)

    def planned(self, inst, args: tuple, kwargs: dict, entry: str, unseen_before: bool = False) -> None:
        """After the original ``entry`` planned ``inst``: read and keep its context, refill
        captured plans. Raises GraphReplanError when a captured graph would be stale."""
        self.counters.cell("plan", entry)[0] += 1
        try:
            ctx = self.adapter.plan_context(inst, args, kwargs, entry)
            if ctx.reason is None and self.session.recorder is not None:
                self._prepare_blobs(ctx, kwargs)
        except Exception as exc:  # noqa: BLE001 - never break the engine's plan
            ctx = PlanContext(f"adapter error in {entry}: {type(exc).__name__}: {exc}")
            log.warning("fibuild: %s: %s", self.adapter.api, ctx.reason)
        if ctx.reason is None and inst in self.doubled:
            try:
                self._double(inst, ctx)
            except Exception as exc:  # noqa: BLE001 - never break the engine's plan
                ctx.reason = f"doubling the page indices failed: {type(exc).__name__}: {exc}"
        self.contexts[inst] = ctx
        if unseen_before and self.graphs.captured_solution(inst):
            self.counters.cell("plan", "unseen")[0] += 1
            ctx.reason = "a plan fibuild did not see ran before this one"
            self._stale(inst, "a plan fibuild did not see ran since the capture (replays in between used the old plan)")
        self.graphs.replan(inst, self.adapter, ctx)

    def _prepare_blobs(self, ctx: PlanContext, kwargs) -> None:
        """Copy the index tensors to the host when the trace still wants this bucket."""
        dtype = _dtype_name(kwargs.get("q_data_type", kwargs.get("data_type")))
        name = definition_name(self.adapter.op, {**ctx.consts, "dtype": dtype})
        if self.session.recorder.wants(name, ctx.counts, self.adapter.bucket_of):
            ctx.blobs = {k: t.to("cpu").clone() for k, t in ctx.tensors.items()}

    def _double(self, inst, ctx: PlanContext) -> None:
        """Make ``ctx``'s kv_indices the doubled page indices that :func:`combined_halves`
        views need, in a buffer kept per instance (as large as the wrapper's index buffer, so
        a CUDA graph reads one address); the write is queued on the current stream, outside
        any capture (a plan, or a run's first call of its form)."""
        import torch

        indices = ctx.tensors["kv_indices"]
        n = indices.shape[0]
        own = getattr(inst, "_paged_kv_indices_buf", None)
        buf = self.doubled.get(inst)
        if buf is None or buf.shape[0] < n or buf.device != indices.device:
            size = max(n, own.shape[0] if isinstance(own, torch.Tensor) else 0)
            buf = self.doubled[inst] = torch.empty(size, dtype=torch.int32, device=indices.device)
        torch.mul(indices, 2, out=buf[:n])
        ctx.tensors["kv_indices"] = buf[:n]
        ctx.doubled = True

    def _stale(self, inst, why: str) -> None:
        raise GraphReplanError(
            f"{self.adapter.api}: this wrapper's run was captured in a CUDA graph with fibuild's "
            f"{self.graphs.captured_solution(inst)}, and {why}; replaying that graph would use the "
            "old plan. Plan only through plan(), begin_forward() or flashinfer's fast_decode_plan "
            "(patched in every module that bound it), or run without FIBUILD_APPLY.")

    # -- runs --------------------------------------------------------------------------
    def run(self, inst, args: tuple, kwargs: dict):
        ctx = self.contexts.get(inst)
        if ctx is None:
            self._no_plan[0] += 1
            return self.original_run(inst, *args, **kwargs)
        if ctx.stale(inst):
            ctx = self._unseen_plan(inst)
        try:
            key = self.adapter.run_form(inst, args, kwargs)
            handler = ctx.memo[key]
        except KeyError:
            handler = ctx.memo[key] = self._decide(inst, ctx, args, kwargs)
        except Exception:  # noqa: BLE001 - a form the key cannot read: the original decides
            self._unkeyed[0] += 1
            return self.original_run(inst, *args, **kwargs)
        return handler(inst, *args, **kwargs)

    def _unseen_plan(self, inst) -> PlanContext:
        """``inst`` was planned by a path that did not call :meth:`planned`: its runs go to
        the original until a seen plan (raises GraphReplanError if a graph holds a fibuild plan)."""
        self.counters.cell("plan", "unseen")[0] += 1
        if self.graphs.captured_solution(inst):
            self._stale(inst, "it was planned again by a path fibuild does not see")
        ctx = PlanContext("planned by a path fibuild does not see (an engine's own planner bound "
                          "before fibuild was enabled?)")
        ctx.plan_info = getattr(inst, "_plan_info", None)
        self.contexts[inst] = ctx
        return ctx

    def _decide(self, inst, ctx: PlanContext, args, kwargs) -> Callable:
        adapter, session = self.adapter, self.session
        if ctx.reason is not None:
            return session.unmapped_handler(adapter, self.original_run, ctx.reason)

        def prepare():
            try:
                call, inputs = adapter.run_call(inst, ctx, args, kwargs)
            except NeedsDoubledIndices:
                if _capturing():
                    raise Unmapped("a combined KV tensor's first run is inside a CUDA graph capture (its "
                                   "doubled page indices are made outside one)") from None
                self._double(inst, ctx)
                call, inputs = adapter.run_call(inst, ctx, args, kwargs)
            record = None
            if ctx.blobs is not None and not ctx.recorded:
                ctx.recorded = True
                record = ({"sm_scale": {"type": "scalar", "value": float(inputs[-1])}}, ctx.blobs,
                          adapter.bucket_of)
            return adapter.template_params(call), inputs, record

        return session.decide(adapter, self.original_run,
                              lambda kernel, defn, inputs: self._substitute(kernel, defn, inputs), prepare, inst)

    def _substitute(self, kernel, defn, inputs: tuple) -> Callable:
        """The run handler calling ``kernel`` with the plan's index tensors (``inputs[3:]``).

        During CUDA graph capture a plan/run solution runs only with a plan made before the
        capture that can be refilled at each seen plan, and only while every planner the
        instance can reach is one fibuild sees (:mod:`.graph_plans`); otherwise the original
        run is captured. A query that is not contiguous (a view of a fused QKV output) is
        copied, it is small; KV caches that are not send the call to the original.
        """
        run, graphs, guard, adapter = self.original_run, self.graphs, self.session.guard, self.adapter
        tail, k0 = inputs[3:], inputs[1]
        cache_shape, paged, rows = tuple(k0.shape[1:]), adapter.paged, k0.shape[0]
        counters = self.counters
        done = counters.cell("substituted")
        nested = counters.cell("fallback", "called from inside a fibuild solution")
        settled_off = counters.cell("fallback", "the solution fell back at its first call")
        strided = counters.cell("fallback", "KV cache not contiguous")
        rejected = counters.cell("fallback", "the solution rejected the inputs")
        in_graph = counters.cell("fallback", "CUDA graph capture: the original was captured")
        settled: list[bool | None] = [None]
        planned: list[bool | None] = [None]  # whether the solution is a plan/run one (known once run)

        def fibuild_run_substitute(inst, *args, **kwargs):
            if settled[0] is False:
                settled_off[0] += 1
                return run(inst, *args, **kwargs)
            if getattr(guard, "active", False):
                nested[0] += 1
                return run(inst, *args, **kwargs)
            q = args[0]
            if paged:
                kv = args[1]
                if isinstance(kv, (tuple, list)):
                    k, v = kv
                    if k.dim() == 3:
                        k, v = k.unsqueeze(1), v.unsqueeze(1)
                elif kv.is_contiguous():  # one combined tensor: dense views, indices doubled at plan
                    k, v = combined_halves(kv)
                else:
                    strided[0] += 1
                    return run(inst, *args, **kwargs)
            else:
                k, v = args[1][:rows], args[2][:rows]
            if tuple(k.shape[1:]) != cache_shape or v.shape != k.shape or not (k.is_contiguous() and v.is_contiguous()):
                strided[0] += 1
                return run(inst, *args, **kwargs)
            if not q.is_contiguous():  # e.g. a view of the fused QKV output: a small copy, not a fallback
                q = q.contiguous()
            call = (q, k, v, *tail)
            if planned[0] is not False and _capturing() and \
                    not graphs.capture(inst, kernel, defn, call, adapter.plan_entries):
                in_graph[0] += 1
                return run(inst, *args, **kwargs)
            guard.active = True
            try:
                out, lse = kernel(*call)
            except InputError:  # raised before anything ran: the original takes the call
                rejected[0] += 1
                return run(inst, *args, **kwargs)
            finally:
                guard.active = False
            done[0] += 1
            if settled[0] is None:
                key = defn.apply_key(var_axes(defn, call))
                resolution = kernel.resolution(key)
                settled[0] = ran_a_solution(adapter, defn, resolution, inst)
                entry = kernel.entry(key)
                planned[0] = isinstance(entry, PlannedEntry)
                if planned[0] and settled[0]:
                    graphs.remember(inst, kernel, entry, call, resolution.solution_name)
            if kwargs:
                out, lse = _into(kwargs, out, lse)
                if kwargs.get("return_lse", False):
                    return out, lse
            return out

        return fibuild_run_substitute


def _into(kwargs, out, lse):
    """Write the results into the caller's ``out=``/``lse=`` tensors when given."""
    given = kwargs.get("out")
    if given is not None:
        given.copy_(out)
        out = given
    given = kwargs.get("lse")
    if given is not None:
        given.copy_(lse)
        lse = given
    return out, lse


def _dtype_name(value) -> str:
    text = str(value).removeprefix("torch.") if value is not None else "float16"
    return {"half": "float16", "float": "float32"}.get(text, text)


def _capturing() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


# -- patching ------------------------------------------------------------------------------

def _plan_entry(site: WrapperSite, plan: Callable, entry: str) -> Callable:
    def fibuild_plan(self, *args, **kwargs):
        unseen = site.unseen_before(self)
        result = plan(self, *args, **kwargs)
        site.planned(self, args, kwargs, entry, unseen)
        return result

    functools.update_wrapper(fibuild_plan, plan)
    fibuild_plan.fibuild_plan_hook = True
    return fibuild_plan


def _run_entry(site: WrapperSite) -> Callable:
    def fibuild_run(self, *args, **kwargs):
        return site.run(self, args, kwargs)

    functools.update_wrapper(fibuild_run, site.original_run)
    fibuild_run.fibuild_site = site
    fibuild_run.fibuild_contexts = site.contexts
    fibuild_run.fibuild_graphs = site.graphs
    return fibuild_run


def _planner(site: WrapperSite, planner: Callable, entry: str) -> Callable:
    def fibuild_planner(wrapper, *args, **kwargs):
        mine = isinstance(wrapper, site.cls)
        unseen = mine and site.unseen_before(wrapper)
        result = planner(wrapper, *args, **kwargs)
        if mine:
            site.planned(wrapper, args, kwargs, entry, unseen)
        return result

    functools.update_wrapper(fibuild_planner, planner)
    fibuild_planner.fibuild_plan_hook = True
    return fibuild_planner


def patch_wrapper_class(integration, adapter: WrapperAdapter, cls) -> bool:
    """Patch the seam ``adapter`` declares on ``cls`` (see the module docstring)."""
    run = getattr(cls, adapter.run_entries[0], None)
    if run is None or hasattr(run, "fibuild_site") or not all(hasattr(cls, e) for e in adapter.plan_entries[:1]):
        return False
    site = WrapperSite(integration.session, adapter, cls, run)
    new_run = _run_entry(site)
    for entry in adapter.run_entries:
        if getattr(cls, entry, None) is not None:
            integration.patcher.replace(cls, entry, new_run)
    for entry, keywords in adapter.run_partials.items():
        if entry in vars(cls):  # bound to the original run at class creation: rebind it
            integration.patcher.replace(cls, entry, functools.partialmethod(new_run, **keywords))
    for entry in adapter.plan_entries:
        plan = getattr(cls, entry, None)
        if plan is not None:
            integration.patcher.replace(cls, entry, _plan_entry(site, plan, entry))
    for module_name, attr in adapter.planners:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        planner = getattr(module, attr, None)
        if planner is None or hasattr(planner, "fibuild_plan_hook"):
            continue
        new = _planner(site, planner, attr)
        integration.patcher.replace(module, attr, new)
        integration.patcher.replace_aliases(planner, new, None)
    return True


def site_of(wrapper_instance) -> WrapperSite | None:
    return getattr(type(wrapper_instance).run, "fibuild_site", None)


def context_of(wrapper_instance) -> Any:
    """The PlanContext of a wrapper instance's last plan (None before any plan); for tests."""
    site = site_of(wrapper_instance)
    return site.contexts.get(wrapper_instance) if site is not None else None


def captured_solution(wrapper_instance) -> str | None:
    """The fibuild solution a wrapper instance's runs captured in CUDA graphs, or None when
    no fibuild plan was captured (the original run was, or nothing was)."""
    site = site_of(wrapper_instance)
    return site.graphs.captured_solution(wrapper_instance) if site is not None else None


def release_graphs(wrapper_instance) -> None:
    """Unpin the plans a wrapper instance's runs captured in CUDA graphs, once the engine
    dropped those graphs (its next ``plan`` then no longer refills them)."""
    site = site_of(wrapper_instance)
    if site is not None:
        site.graphs.release(wrapper_instance)

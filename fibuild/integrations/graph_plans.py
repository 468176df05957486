"""Plan/run solutions inside CUDA graphs captured over FlashInfer's attention wrappers.

An engine plans outside the capture and runs inside it (SGLang, vLLM); a replay runs no
Python, so every replay launches with the plan the captured run had. Per wrapper instance,
:class:`GraphPlans` keeps

- the plan/run entry its substituted runs use (:meth:`~GraphPlans.remember`, at the first
  run of a plan), so that the next ``plan`` of the wrapper, outside any capture, makes and
  pins the plan of the new page table, which a run during capture then finds;
- the plans captured in graphs (:meth:`~GraphPlans.capture`, at a run during capture):
  pinned, and at every later ``plan`` of the wrapper refilled in place with the new
  structural inputs (:meth:`~GraphPlans.replan`; device copies queued on the current stream
  before the replay, as FlashInfer's own CUDA-graph wrapper refreshes its buffers). When a
  captured plan cannot follow (its plan has no ``refill`` or declines, e.g. another batch
  size; an index tensor moved to another buffer; another sm_scale; a plan call fibuild
  cannot take) ``plan`` raises :class:`~fibuild.errors.GraphReplanError`: a replay would
  be wrong.

A plan/run solution whose plans have no ``refill`` is never captured: the original run is
(correct, not faster). Cost outside capture: nothing per run; per ``plan`` of a wrapper
that ran a plan/run solution, one plan made (or refilled) by the solution.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any

from fibuild.compile.plans import PlannedEntry
from fibuild.errors import GraphReplanError

from .session import var_axes

log = logging.getLogger("fibuild.integrations")


class _Wrapper:
    """One wrapper instance's state (holds no reference to the instance)."""

    __slots__ = ("kernel", "entry", "solution", "inputs", "prepared", "captured")

    def __init__(self):
        self.kernel = self.entry = self.solution = None
        self.inputs: tuple = ()          # a substituted run's definition inputs (q, k, v reused)
        self.prepared: tuple | None = None  # (entry, plan) pinned for the current plan
        self.captured: dict[int, tuple] = {}  # id(plan) -> (entry, plan, inputs at capture, names)

    def release(self) -> None:
        """Unpin every plan this wrapper holds."""
        if self.prepared is not None:
            self.prepared[0].unpin(self.prepared[1])
            self.prepared = None
        for entry, plan, *_ in self.captured.values():
            entry.unpin(plan)
        self.captured.clear()


class GraphPlans:
    """The CUDA-graph state of one patched wrapper class's instances; see the module docstring."""

    def __init__(self, api: str):
        self.api = api
        self._states: "weakref.WeakKeyDictionary[Any, _Wrapper]" = weakref.WeakKeyDictionary()

    def _state(self, inst) -> _Wrapper:
        state = self._states.get(inst)
        if state is None:
            state = self._states[inst] = _Wrapper()
            weakref.finalize(inst, state.release)  # a dead wrapper's graphs are gone too
        return state

    def captured(self, inst) -> list[tuple]:
        """``(plan, inputs)`` of each plan captured by ``inst``'s runs, with the definition
        inputs the captured launch holds (a replay reads those buffers)."""
        state = self._states.get(inst)
        return [(cap[1], cap[2]) for cap in state.captured.values()] if state is not None else []

    def captured_solution(self, inst) -> str | None:
        """The fibuild solution whose plans ``inst``'s runs captured in CUDA graphs (None:
        none; the original run was captured, or nothing was)."""
        state = self._states.get(inst)
        return state.solution if state is not None and state.captured else None

    def release(self, inst) -> None:
        """Forget ``inst``'s captured plans (after the engine dropped the graphs holding them)."""
        state = self._states.pop(inst, None)
        if state is not None:
            state.release()

    # -- runs --------------------------------------------------------------------------
    def remember(self, inst, kernel, entry, inputs: tuple, solution: str) -> None:
        """``inst``'s runs went to plan/run ``entry`` (solution ``solution`` of ``kernel``)."""
        state = self._state(inst)
        state.kernel, state.entry, state.inputs, state.solution = kernel, entry, tuple(inputs), solution

    def capture(self, inst, kernel, defn, inputs: tuple, plan_entries: tuple = ()) -> bool:
        """During capture, before ``kernel(*inputs)``: True when the kernel may be captured
        (not a plan/run solution, or its plan is made, refillable and now pinned as captured
        by ``inst``, and every planner ``inst`` holds in ``plan_entries`` of its own is one
        fibuild sees), False when the original run must be captured instead. Makes nothing."""
        key = defn.apply_key(var_axes(defn, inputs))
        entry = kernel.entry(key)
        state = self._states.get(inst)
        if entry is None:  # the key's first call: the entry of the wrapper's earlier runs, if it is its
            if state is None or state.kernel is not kernel or \
                    kernel.resolution(key).solution_name != state.solution:
                return False
            entry = state.entry
        if not isinstance(entry, PlannedEntry):
            return True
        unseen = unseen_planner(inst, plan_entries)
        if unseen:
            log.info("fibuild: %s: %s captured as the original (the wrapper plans through %s, which "
                     "fibuild does not see: a refill would be missed)", self.api, defn.name, unseen)
            return False
        plan = entry.find(inputs)
        if plan is None or getattr(plan, "refill", None) is None:
            log.info("fibuild: %s: %s captured as the original (%s)", self.api, defn.name,
                     "no plan made before capture" if plan is None else "its plan cannot be refilled")
            return False
        state = self._state(inst)
        if id(plan) in state.captured:
            return True
        own = 1 if state.prepared is not None and state.prepared[1] is plan else 0
        if entry.pins(plan) > own:  # another wrapper's graph holds it: refills would collide
            return False
        entry.pin(inputs, make=False)
        state.captured[id(plan)] = (entry, plan, tuple(inputs), tuple(s.name for s in defn.inputs))
        return True

    # -- plans -------------------------------------------------------------------------
    def replan(self, inst, adapter, ctx) -> None:
        """After ``inst``'s ``plan`` made ``ctx`` (outside capture): refill the captured plans
        for it, else make and pin the plan of its structural inputs. Raises GraphReplanError
        when a captured plan cannot follow (``ctx`` then sends runs to the original)."""
        state = self._states.get(inst)
        if state is None:
            return
        if state.prepared is not None:
            state.prepared[0].unpin(state.prepared[1])
            state.prepared = None
        if state.captured:
            self._refill(inst, state, adapter, ctx)
        elif state.entry is not None and ctx.reason is None:
            try:
                args = _plan_args(adapter, inst, ctx, state.inputs)
                state.prepared = (state.entry, state.entry.pin(args))
            except Exception as exc:  # noqa: BLE001 - the run will plan (or fall back) itself
                log.warning("fibuild: %s: planning %s ahead failed: %s: %s", self.api, state.solution,
                            type(exc).__name__, exc)

    def _refill(self, inst, state: _Wrapper, adapter, ctx) -> None:
        for entry, plan, old, names in state.captured.values():
            why = ctx.reason and f"fibuild cannot take the new plan ({ctx.reason})"
            if not why:
                new = _plan_args(adapter, inst, ctx, old)
                why = _moved(entry, names, old, new) or (
                    not entry.refill(plan, new) and f"{entry.name}'s plan cannot be refilled for the new "
                    f"page table (its refill declined: another batch size? now {ctx.counts.get('batch_size')})")
            if why:
                ctx.reason = f"a captured plan could not be refilled: {why}"
                raise GraphReplanError(
                    f"{self.api}: this wrapper's run was captured in a CUDA graph with fibuild's "
                    f"{entry.name}, and plan() was called again but {why}; replaying that graph "
                    "would use the old plan. Capture the graph again after such a plan (calling "
                    "fibuild.integrations.wrapper_sites.release_graphs(wrapper) first), or run "
                    "without FIBUILD_APPLY.")


def _plan_args(adapter, inst, ctx, runs: tuple) -> tuple:
    """The definition inputs of the next runs after a plan: q, k, v of ``runs`` (a run's
    inputs), the plan's index tensors, and its sm_scale, or, when the plan call passed none,
    the one ``runs`` used (SGLang plans without it and passes it to each ``forward``)."""
    tail = adapter.plan_inputs(inst, ctx)
    if ctx.sm_scale is None:
        tail = (*tail[:-1], runs[-1])
    return (*runs[:3], *tail)


def unseen_planner(inst, plan_entries: tuple) -> str:
    """The name of a planner ``inst`` holds as its own attribute (an engine's
    ``wrapper.begin_forward = partial(f, wrapper)``) that does not plan through fibuild's
    hooks ("" when every one does): after a capture, plans through it would leave the
    captured plan stale."""
    own = getattr(inst, "__dict__", {})
    for name in plan_entries:
        fn = own.get(name)
        if fn is None:
            continue
        target = getattr(fn, "func", None) or getattr(fn, "__func__", None) or fn
        if not getattr(target, "fibuild_plan_hook", False):
            return f"{name} = {getattr(target, '__qualname__', repr(target))}"
    return ""


def _moved(entry, names: tuple, old: tuple, new: tuple) -> str:
    """Why a run captured with ``old`` cannot be replayed over ``new`` whatever the plan
    holds ("" when it can): a structural tensor in another buffer, a changed scalar."""
    for i in entry.positions:
        a, b = old[i], new[i]
        if hasattr(a, "data_ptr") != hasattr(b, "data_ptr"):
            return f"{names[i]} changed from a tensor to a scalar or back"
        if hasattr(a, "data_ptr"):  # an empty tensor (address 0) is read by no launch
            if a.device != b.device or (b.numel() and a.data_ptr() != b.data_ptr()):
                return f"{names[i]} moved to another buffer (the graph reads the old one)"
        elif a != b:
            return f"{names[i]} changed from {a!r} to {b!r} (the graph launches with the old value)"
    return ""

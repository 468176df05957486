"""Plan/run solutions: a host-side plan made once per distinct structural input, a launch-only run.

A solution that declares ``plan: file.py::function`` is loaded as a :class:`PlannedEntry`:
a callable with the definition's inputs (DPS outputs after them, as for any solution)
that finds or makes the plan for the call's *structural* inputs (those the definition
marks ``structural: true``: page tables, indptrs, and scalars a plan bakes in) and calls
``run(plan, *inputs)``. The contract a serving engine keeps, kept here:

- ``plan(*structural_inputs)`` (declaration order) may synchronize, copy to the host and
  allocate; it returns any object (the plan) that ``run`` takes first.
- ``run(plan, *inputs[, *outputs])`` only launches work: no host<->device copy, no
  synchronization, so it can be captured in a CUDA graph (plan before capturing).
- A plan is reused while every structural tensor is the *same object* with the same
  ``_version`` (torch bumps it on every in-place write) and every structural scalar has
  the same value. A new tensor, or new contents written in place, makes a new plan.
  The last :data:`PLAN_SLOTS` plans made are kept (a bench rotating input sets, a server
  alternating buffers), each holding its tensors by weak reference. Inference-mode
  tensors carry no version counter: a call with one as a structural input plans afresh
  (correct, not fast; make page tables outside ``torch.inference_mode``).

Plans refreshed in place (a run captured in a CUDA graph, replayed after the engine re-plans
new contents into the same buffers): a plan object may provide

- ``plan.refill(*structural_inputs) -> bool``: rewrite the plan's own device buffers for new
  structural inputs, keeping every launch parameter (grid, constexprs, buffer shapes and
  addresses), so that a run captured with the plan's earlier inputs and replayed over the
  new ones (the same buffers, new contents) computes the result for the new ones. Device
  writes are queued on the current stream (ordered before a replay issued after it); host
  work may synchronize (it runs where ``plan`` would). Returns False, having changed
  nothing, when it cannot (another batch size, a shape the launch baked in); raises only
  before writing anything.

:meth:`PlannedEntry.pin` keeps a plan (never evicted while pinned: a graph holds its
buffers), :meth:`PlannedEntry.refill` refills one and files it under the new inputs' key.
A plan without ``refill`` cannot be refreshed: callers capture something else.

Cost per call on a hit: one key tuple (``id`` and ``_version`` of each structural tensor),
one dict lookup, one weak-reference check per tensor.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Sequence

#: Plans kept per entry (least recently used dropped first).
PLAN_SLOTS = 8


def _is_tensor(value: Any) -> bool:
    # On the type: reading an inference tensor's _version raises.
    return hasattr(type(value), "_version")


def _token(value: Any) -> tuple:
    """What identifies ``value`` for plan reuse: (id, version) of a tensor, else the value."""
    if not _is_tensor(value):
        return ("value", value)
    try:
        return (id(value), value._version)
    except RuntimeError:  # an inference tensor: no version counter, so never reused
        return (id(value), object())


class PlannedEntry:
    """``entry(*inputs)`` = ``run(plan_for(inputs), *inputs)``, plans made once per structural input.

    ``positions`` are the indices of the structural inputs among the call's arguments.
    ``plans_made`` counts the calls of ``plan`` (tests and the bench read it).
    """

    def __init__(self, run: Callable, plan: Callable, positions: Sequence[int], *,
                 slots: int = PLAN_SLOTS, name: str = ""):
        if not positions:
            raise ValueError(f"{name or 'a plan/run solution'}: no structural inputs to plan from")
        self.run = run
        self.plan = plan
        self.positions = tuple(int(p) for p in positions)
        self.slots = max(1, int(slots))
        self.name = name
        self.plans_made = 0
        # key -> (weak references or values, plan); oldest first.
        self._plans: OrderedDict[tuple, tuple[tuple, Any]] = OrderedDict()
        self._pins: dict[int, list] = {}  # id(plan) -> [plan, pin count]; pinned plans stay
        self._lock = threading.Lock()
        self.__name__ = getattr(run, "__name__", "run")

    def __repr__(self) -> str:
        return f"PlannedEntry({self.name or self.__name__!r}, plans={len(self._plans)})"

    def __call__(self, *args):
        return self.run(self.plan_for(args), *args)

    def structural(self, args: Sequence[Any]) -> tuple:
        """The structural inputs among ``args`` (the arguments ``plan`` takes)."""
        return tuple(args[i] for i in self.positions)

    def plan_for(self, args: Sequence[Any]) -> Any:
        """The plan of ``args``' structural inputs: the kept one if they are unchanged, else a
        new one (``plan`` raises whatever it raises; nothing is kept then)."""
        values = [args[i] for i in self.positions]
        key = tuple(_token(v) for v in values)
        hit = self._plans.get(key)
        if hit is not None and all(r() is v if isinstance(r, weakref.ref) else True
                                   for r, v in zip(hit[0], values)):
            return hit[1]
        return self._make(key, values)

    def _key(self, args: Sequence[Any]) -> tuple[list, tuple]:
        values = [args[i] for i in self.positions]
        return values, tuple(_token(v) for v in values)

    def find(self, args: Sequence[Any]) -> Any:
        """The kept plan of ``args``' structural inputs, or None; never makes one (so it may
        be called during graph capture)."""
        values, key = self._key(args)
        hit = self._plans.get(key)
        if hit is not None and all(r() is v if isinstance(r, weakref.ref) else True
                                   for r, v in zip(hit[0], values)):
            return hit[1]
        return None

    def _make(self, key: tuple, values: list) -> Any:
        plan = self.plan(*values)
        with self._lock:
            self.plans_made += 1
            self._file(key, values, plan)
        return plan

    def _file(self, key: tuple, values: list, plan: Any) -> None:
        """Keep ``plan`` under ``key`` (lock held), dropping the oldest unpinned plans past
        :attr:`slots`."""
        refs = tuple(weakref.ref(v) if _is_tensor(v) else v for v in values)
        self._plans.pop(key, None)
        self._plans[key] = (refs, plan)
        excess = len(self._plans) - self.slots - len(self._pins)
        if excess > 0:
            old = [k for k, (_, p) in self._plans.items() if id(p) not in self._pins][:excess]
            for k in old:
                del self._plans[k]

    def prepare(self, args: Sequence[Any]) -> Any:
        """Make (or find) the plan of ``args`` now, e.g. before timing or graph capture."""
        return self.plan_for(args)

    def pin(self, args: Sequence[Any], *, make: bool = True) -> Any:
        """The plan of ``args`` (made if missing and ``make``; None if missing otherwise),
        kept until as many :meth:`unpin` calls: a CUDA graph that captured a run with it
        reads its buffers at every replay. Making a plan may synchronize: not during capture."""
        plan = self.find(args)
        if plan is None:
            if not make:
                return None
            plan = self.plan_for(args)
        with self._lock:
            self._pins.setdefault(id(plan), [plan, 0])[1] += 1
        return plan

    def unpin(self, plan: Any) -> None:
        """Undo one :meth:`pin` of ``plan`` (it is then evicted like any other)."""
        with self._lock:
            pin = self._pins.get(id(plan))
            if pin is not None:
                pin[1] -= 1
                if pin[1] <= 0:
                    del self._pins[id(plan)]

    def pins(self, plan: Any) -> int:
        """How many times ``plan`` is pinned (0: not pinned)."""
        pin = self._pins.get(id(plan))
        return pin[1] if pin is not None else 0

    def refill(self, plan: Any, args: Sequence[Any]) -> bool:
        """Refresh ``plan`` in place for ``args``' structural inputs (``plan.refill``, see the
        module docstring) and keep it under their key, no longer under any earlier one (its
        contents changed). False, nothing changed, when the plan has no ``refill`` or it
        declines."""
        refill = getattr(plan, "refill", None)
        values, key = self._key(args)
        if refill is None or not refill(*values):
            return False
        with self._lock:
            for k in [k for k, (_, p) in self._plans.items() if p is plan]:
                del self._plans[k]
            self._file(key, values, plan)
        return True

    def clear(self) -> None:
        """Forget every unpinned plan (their buffers are freed when nothing else holds them)."""
        with self._lock:
            for k in [k for k, (_, p) in self._plans.items() if id(p) not in self._pins]:
                del self._plans[k]

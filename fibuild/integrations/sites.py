"""The patched functions: a memo from the adapter's fast key to a handler.

Per call (the hot path): the adapter's fast key (shapes, dtypes, argument values), one dict
lookup, the handler. A handler is the original function behind its counter when fibuild has
nothing better (so the added cost is the key, the lookup and one integer add), or the
substitute: bind the arguments, check contiguity and device, run the definition's Kernel,
write back, count. A key seen the first time goes through :meth:`Session.decide`.
Inside a CUDA graph none of this runs at replay: the handler ran once, at capture.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from fibuild.errors import InputError

from .adapters.base import Unmapped, bind
from .adapters.functions import FunctionAdapter
from .session import var_axes

log = logging.getLogger("fibuild.integrations")


def patched_function(session, adapter: FunctionAdapter, original: Callable) -> Callable:
    """The replacement of ``original`` (``adapter.module.adapter.attr``) for ``session``."""
    memo: dict[Any, Callable] = {}
    fast_key = adapter.fast_key

    def slow(args, kwargs):
        try:
            key = fast_key(args, kwargs)
            hash(key)
        except Exception:  # noqa: BLE001 - an odd call (no tensors, unhashable value): decide per call
            key = None
        try:
            call = bind(adapter.parameters, args, kwargs)
        except Unmapped as exc:
            handler = session.unmapped_handler(adapter, original, exc.reason)
        else:
            handler = session.decide(
                adapter, original, lambda kernel, defn, _: substitute(session, adapter, original, kernel, defn),
                lambda: (adapter.template_params(call), adapter.to_inputs(call),
                         (adapter.trace_inputs(call), None, None)))
        if key is not None:
            memo[key] = handler
        return handler(*args, **kwargs)

    def fibuild_patched(*args, **kwargs):
        try:
            handler = memo[fast_key(args, kwargs)]
        except Exception:  # noqa: BLE001 - KeyError (new key) or a call the key cannot read
            return slow(args, kwargs)
        return handler(*args, **kwargs)

    functools.update_wrapper(fibuild_patched, original)
    fibuild_patched.fibuild_memo = memo
    return fibuild_patched


def substitute(session, adapter: FunctionAdapter, original: Callable, kernel, defn) -> Callable:
    """The handler running ``kernel`` (definition ``defn``) in place of ``original``.

    Per call it falls back to ``original`` when the inputs (or the caller's output tensor,
    ``adapter.out_of``) are not contiguous or not on the kernel's device type, or when called
    from inside a substituted solution (a Python solution that calls the patched API itself).
    After the first call it checks what the Kernel really ran: a solution that failed to
    build left it on its fallback, and the original is used from then on.
    """
    guard = session.guard
    want_cuda = str(kernel.device).startswith("cuda")
    settled: list[bool | None] = [None]  # None: not checked yet; True: kernel; False: original
    counters = session.stats.of(adapter.api)
    done = counters.cell("substituted")
    settled_off = counters.cell("fallback", "the solution fell back at its first call")
    nested = counters.cell("fallback", "called from inside a fibuild solution")
    layout = counters.cell("fallback", "an input is not contiguous or not on the kernel's device")
    rejected = counters.cell("fallback", "the solution rejected the inputs")

    def fibuild_substitute(*args, **kwargs):
        if settled[0] is False:
            settled_off[0] += 1
            return original(*args, **kwargs)
        if getattr(guard, "active", False):
            nested[0] += 1
            return original(*args, **kwargs)
        call = bind(adapter.parameters, args, kwargs)
        inputs = adapter.to_inputs(call)
        out = adapter.out_of(call)
        for value in (*inputs, out):
            if hasattr(value, "is_contiguous") and (not value.is_contiguous() or value.is_cuda != want_cuda):
                layout[0] += 1
                return original(*args, **kwargs)
        guard.active = True
        try:
            outputs = kernel(*inputs) if out is None else kernel(*inputs, out=out)
        except InputError:  # raised before anything ran: the original takes the call
            rejected[0] += 1
            return original(*args, **kwargs)
        finally:
            guard.active = False
        done[0] += 1
        if settled[0] is None:
            settled[0] = ran_a_solution(adapter, defn, kernel.resolution(defn.apply_key(var_axes(defn, inputs))))
        return adapter.write_back(call, outputs)

    return fibuild_substitute


def ran_a_solution(adapter, defn, res, instance=None) -> bool:
    """After a kernel's first call, given the Resolution of its key: True when it ran a
    fibuild solution (not its fallback or the API itself, as ``instance`` is configured);
    logs the fallback otherwise."""
    if res.solution is not None and not adapter.is_original(res.solution, instance):
        return True
    log.warning("fibuild: %s: %s fell back to %s; the original runs from now on",
                adapter.api, defn.name, res.solution_name)
    return False

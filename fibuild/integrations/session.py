"""One enabled integration: its workspace, kernels, recorder, and the per-call decisions.

A :class:`Session` decides, once per distinct call shape (the adapter's fast key), what a
patched API does: call the original (unmapped, or fibuild resolves to the reference or to
the API itself), or run the definition's resolved solution through ``fibuild.load``
(one Kernel per definition, cached). When tracing, the first calls of each shape are
recorded and counted per definition and axes. Every handler it returns counts its calls in
:attr:`Session.stats` (one integer add: substituted, original, or fallback by reason).
Decisions are memoized by the patched function; this module is only on the first call of a
shape.
"""
from __future__ import annotations

import ast
import dataclasses
import logging
import threading
from typing import Any, Callable

from fibuild.bench.compare import EAGER
from fibuild.config import Settings
from fibuild.errors import FibuildError
from fibuild.registry import Registry
from fibuild.runtime.api import load
from fibuild.runtime.dispatch import AUTO, current_mode
from fibuild.spec.templates import definition_document, definition_name, write_definition
from fibuild.spec.workspace import Workspace

from .adapters.base import Adapter, Unmapped
from .counters import Stats, counted
from .tracing import TraceRecorder, axes_bucket

log = logging.getLogger("fibuild.integrations")


class Session:
    """State of one ``enable()``; see the module docstring. Thread-safe."""

    def __init__(self, settings: Settings, *, trace: bool, apply: bool, per_key: int = 2,
                 flush_every: int = 64, policy: str = "nearest", mode: str = AUTO):
        # The serving path never waits unboundedly: locks and the index, FIBUILD_SERVING_WAIT.
        settings = dataclasses.replace(settings, wait_s=settings.serving_wait_s)
        self.settings = settings
        self.trace = trace
        self.apply = apply
        self.policy = policy
        self.mode = mode
        self.workspace = Workspace.discover(settings)
        self.recorder = (TraceRecorder(Registry(self.workspace.registry_dir), per_key=per_key,
                                       flush_every=flush_every) if trace else None)
        self.guard = threading.local()  # .active while a substituted solution runs
        self.traced = threading.local()  # .inside while a traced call runs (nested calls not recorded)
        self._lock = threading.RLock()
        self._definitions: dict[str, Any] = {}  # name -> Definition | Unmapped
        self._kernels: dict[str, Any] = {}      # name -> Kernel | Unmapped
        self.substituted: dict[str, int] = {}   # definition -> keys sent to a fibuild solution
        # definition -> {key: the solution it resolved to}, for every key chosen in this process
        self.picks: dict[str, dict[str, str]] = {}
        # definition -> keys whose choice rests on another device's evaluations (same compute
        # capability; see Resolution.borrowed), whatever was chosen
        self.borrowed: dict[str, int] = {}
        self.stats = Stats()
        self._said: set[tuple[str, str]] = set()

    def first_time(self, api: str, what: str) -> bool:
        """True the first time ``(api, what)`` is asked in this session (to log a thing once)."""
        with self._lock:
            if (api, what) in self._said:
                return False
            self._said.add((api, what))
            return True

    # -- definitions and kernels -----------------------------------------------------------
    def definition(self, adapter: Adapter, name: str, params: dict[str, Any]):
        """The workspace's definition ``name``, checked against the call's constants; made from
        the op template when tracing and it does not exist. Raises Unmapped."""
        with self._lock:
            found = self._definitions.get(name)
            if found is None:
                found = self._definitions[name] = self._find_definition(adapter, name, params)
        if isinstance(found, Unmapped):
            raise found
        mismatch = _mismatch(found, adapter.op, params)
        if mismatch:
            raise Unmapped(f"definition {name} differs from the call: {mismatch}")
        return found

    def _find_definition(self, adapter: Adapter, name: str, params: dict[str, Any]):
        try:
            return self.workspace.definition(name)
        except FibuildError as exc:
            if not self.trace or not str(exc).startswith("unknown definition"):
                return Unmapped(f"definition {name}: {str(exc).splitlines()[0]}")
        try:
            path = write_definition(self.workspace.defs_dir, definition_document(adapter.op, params))
        except FibuildError as exc:
            return Unmapped(f"definition {name} cannot be made from the {adapter.op} template: {exc}")
        log.info("fibuild: made definition %s from a traced %s call (%s)", name, adapter.api, path)
        self.workspace = self.workspace.reloaded()  # see the new file
        return self.workspace.definition(name)

    def kernel(self, name: str, mode: str = EAGER):
        """``fibuild.load(name, mode=mode)`` for this session (cached per name and mode); raises
        Unmapped if it cannot load."""
        with self._lock:
            found = self._kernels.get((name, mode))
            if found is None:
                try:
                    found = load(name, policy=self.policy, settings=self.settings, mode=mode)
                except FibuildError as exc:
                    found = Unmapped(f"fibuild.load({name!r}) failed: {str(exc).splitlines()[0]}")
                self._kernels[(name, mode)] = found
        if isinstance(found, Unmapped):
            raise found
        return found

    # -- decisions -------------------------------------------------------------------------
    def decide(self, adapter: Adapter, original: Callable, substitute: Callable[[Any, Any, tuple], Callable],
               prepare: Callable[[], tuple], instance: Any = None) -> Callable:
        """The handler for calls of one fast key.

        ``prepare()`` returns ``(template params, definition inputs, record)``: ``record`` is
        ``(input specs, blobs, bucket)`` for the trace, or None to record nothing.
        ``substitute(kernel, definition, inputs)`` builds the handler that runs the kernel;
        ``instance`` is the wrapper object of a method call (see ``Adapter.is_original``).
        The substitute handler counts its own calls in :attr:`stats`; ``original`` is wrapped
        in the API's "original" counter. Tracing records the call (first ``per_key`` per
        bucket) and adds a counter per definition and axes. Never raises for a call it cannot
        take: that call gets ``original``, counted under the reason.
        """
        handler = counted(original, self.stats.of(adapter.api).cell("original"))
        try:
            params, inputs, record = prepare()
            name = definition_name(adapter.op, params)
            defn = self.definition(adapter, name, params)
            axes = var_axes(defn, inputs)
            if self.recorder is not None and record is not None and not getattr(self.traced, "inside", False):
                specs, blobs, bucket = record
                self.recorder.add(name, axes, specs, blobs, bucket or axes_bucket)
            if self.apply:
                handler = self.choose(adapter, name, defn, axes, original,
                                      lambda kernel, d: substitute(kernel, d, inputs), instance)
        except Unmapped as exc:
            return self.unmapped_handler(adapter, original, exc.reason)
        except Exception as exc:  # noqa: BLE001 - never break the caller for fibuild's sake
            reason = f"adapter error: {type(exc).__name__}: {exc}"
            log.warning("fibuild: %s: %s; calling the original", adapter.api, reason)
            return self.unmapped_handler(adapter, original, reason)
        if self.recorder is None:
            return handler
        return self.trace_counted(handler, self.recorder.counter(name, adapter.op, axes))

    def unmapped_handler(self, adapter: Adapter, original: Callable, reason: str) -> Callable:
        """``original``, counted as a fallback under ``reason`` (and in the trace when tracing)."""
        log.debug("fibuild: %s not taken: %s", adapter.api, reason)
        handler = counted(original, self.stats.of(adapter.api).cell("fallback", reason))
        if self.recorder is None:
            return handler
        return self.trace_counted(handler, self.recorder.counter(None, adapter.op, reason=reason))

    def trace_counted(self, handler: Callable, cell: list[int]) -> Callable:
        """``handler`` counting its calls in the trace's ``cell``, unless it runs inside another
        traced call: sgl_kernel's norms forward to ``flashinfer.norm`` (both patched), and one
        call of the engine is one call of the definition, recorded once."""
        state = self.traced

        def handler_traced(*args, **kwargs):
            if getattr(state, "inside", False):
                return handler(*args, **kwargs)
            cell[0] += 1
            state.inside = True
            try:
                return handler(*args, **kwargs)
            finally:
                state.inside = False

        return handler_traced

    def choose(self, adapter: Adapter, name: str, defn, axes: dict[str, int], original: Callable,
               substitute: Callable[[Any, Any], Callable], instance: Any = None) -> Callable:
        """``original`` (counted) unless the kernel of ``name`` resolves ``axes`` to a solution
        that is not the API itself; then the substitute handler. The session's mode, or under
        ``auto`` the mode of this first call (``graph`` while capturing), picks the kernel."""
        kernel = self.kernel(name, self.mode if self.mode != AUTO else current_mode())
        resolution = kernel.resolution(defn.apply_key(axes))
        sol = resolution.solution
        with self._lock:
            self.picks.setdefault(name, {})[str(resolution.key)] = resolution.solution_name
        if sol is None or adapter.is_original(sol, instance):
            handler = counted(original, self.stats.of(adapter.api).cell("original"))
        else:
            with self._lock:
                self.substituted[name] = self.substituted.get(name, 0) + 1
            handler = substitute(kernel, defn)
        if resolution.borrowed:  # counted apart: the user should bench on this device
            with self._lock:
                self.borrowed[name] = self.borrowed.get(name, 0) + 1
            handler = counted(handler, self.stats.of(adapter.api).cell("borrowed"))
        return handler


def var_axes(defn, inputs: tuple) -> dict[str, int]:
    """Var-axis values read off ``inputs`` (definition order). Raises Unmapped when an input
    does not have the rank the definition declares."""
    out: dict[str, int] = {}
    for spec, value in zip(defn.inputs, inputs):
        if spec.shape is None:
            continue
        shape = getattr(value, "shape", None)
        if shape is None or len(shape) != len(spec.shape):
            raise Unmapped(f"input {spec.name} does not have the definition's rank {len(spec.shape)}")
        for axis, size in zip(spec.shape, shape):
            kind = defn.axes[axis]
            if kind.kind == "const" and kind.value != size:
                raise Unmapped(f"{spec.name}: axis {axis} is {size}, the definition fixes {kind.value}")
            if kind.kind == "var" and out.setdefault(axis, int(size)) != int(size):
                raise Unmapped(f"axis {axis} is {out[axis]} and {size} in one call")
    return out


def _mismatch(defn, op: str, params: dict[str, Any]) -> str:
    """What makes ``defn`` a different operator than the template would make for ``params``
    ("" when none): dtypes, input/output names and shapes, const axes, EPS."""
    doc = definition_document(op, params)
    want_in = [(n, tuple(s["shape"] or ()), s["dtype"]) for n, s in doc["inputs"].items()]
    have_in = [(s.name, tuple(s.shape or ()), s.dtype) for s in defn.inputs]
    if want_in != have_in:
        return f"inputs {have_in} (the call needs {want_in})"
    want_out = [(n, s["dtype"]) for n, s in doc["outputs"].items()]
    have_out = [(s.name, s.dtype) for s in defn.outputs]
    if want_out != have_out:
        return f"outputs {have_out} (the call needs {want_out})"
    consts = {n: a["value"] for n, a in doc["axes"].items() if a["type"] == "const"}
    if defn.const_axes != consts:
        return f"const axes {defn.const_axes} (the call needs {consts})"
    if "eps" in params:
        eps = reference_constant(defn.reference, "EPS")
        if eps is None:
            return "its reference declares no EPS constant to compare the call's eps with"
        if float(eps) != float(params["eps"]):
            return f"EPS {eps} (the call passes eps={params['eps']})"
    return ""


def reference_constant(source: str, name: str) -> Any:
    """The value of a top-level ``NAME = <number>`` in reference source (parsed, not run)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None

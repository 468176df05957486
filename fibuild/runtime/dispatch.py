"""The callable ``fibuild.load`` returns: shapes -> tuple key -> dict hit -> checked kernel.

Per call (the hot path): read each var axis off the argument that carries it (positions
precomputed from the definition), one ``dict.get``, then the key's generated function:
the input checks of :mod:`fibuild.runtime.input_checks` (dtype, shape, layout, device of
every tensor) and the call. No I/O or hashing. A key seen for the first time is resolved
once (loading, or building, the chosen solution) and memoized; later calls with that key
never resolve again.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any, Callable, Mapping

from fibuild.bench.compare import EAGER, GRAPH
from fibuild.compile import store
from fibuild.compile.cache import BuildCache, load_committed
from fibuild.config import Settings
from fibuild.errors import BuildError, FibuildError, ResolveError
from fibuild.spec.calling import axis_sources, load_reference, make_caller, solution_caller
from fibuild.spec.model import ApplyKey, Definition

from .custom_op import register_op
from .decisions import REFERENCE, Rejected, Resolution, format_key
from .input_checks import guarded, mismatch, out_check
from .resolve import Resolver, check_mode, policy_chain
from .table import ApplyTable

# Heavy or optional dependencies, imported inside the functions that use them: torch.

log = logging.getLogger("fibuild.runtime")

FALLBACK = "fallback"
#: ``mode`` of a Kernel that picks per key at its first call (see :meth:`Kernel.mode_now`).
AUTO = "auto"


def key_from_axes(defn: Definition, axes: Mapping[str, Any]) -> ApplyKey:
    """The ApplyKey for user-given axis values (names -> integers).

    Const axes may be given if they match. Raises ResolveError naming an unknown axis, a
    missing var axis, a const axis with another value, or a value that is not a
    non-negative integer.
    """
    known = defn.axes
    for name, value in axes.items():
        if name not in known:
            raise ResolveError(f"{defn.name}: unknown axis {name!r} (axes: {', '.join(known)})")
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ResolveError(f"{defn.name}: axis {name}={value!r} is not an integer")
        try:
            number = int(value.strip()) if isinstance(value, str) else int(value)
        except ValueError:
            raise ResolveError(f"{defn.name}: axis {name}={value!r} is not an integer") from None
        if number < 0:
            raise ResolveError(f"{defn.name}: axis {name}={number} is negative")
        axis = known[name]
        if axis.kind == "const" and number != axis.value:
            raise ResolveError(f"{defn.name}: axis {name} is const {axis.value}, got {number}")
    missing = [a for a in defn.var_axes if a not in axes]
    if missing:
        raise ResolveError(f"{defn.name}: missing value for var axis {', '.join(missing)} "
                           f"(give {', '.join(f'{a}=N' for a in defn.var_axes)})")
    return tuple(int(str(axes[a]).strip()) for a in defn.var_axes)


class Kernel:
    """A definition's dispatching callable: ``kernel(*inputs, out=None) -> outputs``.

    Inputs in the definition's order (tensors, scalars as numbers); outputs value-returned
    (one tensor or a tuple), whatever the chosen solution's style. ``out=`` receives the
    non-in-place outputs. ``mode``: ``eager``, ``graph`` or ``auto`` (each key's mode is
    decided at its first call: ``graph`` while a CUDA graph is being captured). Cost per
    call on a seen key: the shape reads, one dict hit, the call. Thread-safe: a miss is resolved under a lock.
    """

    def __init__(self, definition: Definition, table: ApplyTable, *, settings: Settings,
                 policy: str = "nearest", strict: bool = False, device: str = "cpu",
                 fallback: Callable | None = None, mode: str = AUTO):
        policy_chain(policy, strict=strict)  # unknown policy -> ResolveError now, not per key
        if mode != AUTO:
            check_mode(mode)
        self.definition = definition
        self.table = table
        self.settings = settings
        self.policy = policy
        self.strict = strict
        self.device = device
        self.fallback = fallback
        self.mode = mode
        self._cuda = device.startswith("cuda")
        self._resolver = Resolver(table, reference_label=FALLBACK if fallback else REFERENCE)
        sources = axis_sources(definition)
        group_axis = definition.distributed.world_size_axis if definition.distributed else None
        missing = [a for a in definition.var_axes if a not in sources and a != group_axis]
        if missing:
            raise ResolveError(f"{definition.name}: var axis {', '.join(missing)} appears in no "
                               "input shape, so calls cannot be keyed")
        # The world-size axis is read from the process group (see _ProcessGroupKernel).
        self._sources = tuple(sources.get(a, GROUP_SIZE) for a in definition.var_axes)
        self._fast: dict[ApplyKey, Callable] = {}      # key -> value-returning callable
        self._callers: dict[ApplyKey, Callable] = {}   # key -> callable accepting out=
        self._checks: dict[ApplyKey, Callable] = {}    # key -> input check alone (out= calls)
        self._out_checks: dict[ApplyKey, Callable] = {}  # key -> check of an out= argument
        self._resolutions: dict[ApplyKey, Resolution] = {}
        self._loaded: dict[str, tuple[Callable, Callable]] = {}  # solution -> (fast, caller)
        self._entries: dict[str, Callable] = {}        # solution -> raw entry point (introspection)
        self._excluded: dict[str, str] = {}            # solution -> why it failed to load
        self._lock = threading.RLock()
        self._op = None
        # Outputs come back from the entry as they are when no reshaping is needed.
        self._entry_is_value = not any(o.inplace for o in definition.outputs)

    @property
    def name(self) -> str:
        return self.definition.name

    def __repr__(self) -> str:
        return (f"Kernel({self.name!r}, device={self.table.device!r}, policy={self.policy!r}, "
                f"keys={len(self._fast)})")

    def __call__(self, *args, out=None):
        try:
            key = tuple([args[i].shape[d] for i, d in self._sources])
        except (IndexError, AttributeError, TypeError, RuntimeError):  # RuntimeError: a nested tensor's shape
            raise self._bad_args(args) from None
        if out is None:
            fn = self._fast.get(key)
            if fn is not None:
                return fn(*args)
        return self._slow(key, args, out)

    # Kernel.__call__ and _OneAxisKernel.__call__ spell this tail out: there it is the whole
    # per-call cost, and a shared method would add a Python call to every dispatch.
    def _call_key(self, key: ApplyKey, args: tuple, out):
        """The dispatch of ``args`` once their key is read: the fast entry, else :meth:`_slow`."""
        if out is None:
            fn = self._fast.get(key)
            if fn is not None:
                return fn(*args)
        return self._slow(key, args, out)

    # -- misses ------------------------------------------------------------------------
    def _slow(self, key: ApplyKey, args: tuple, out):
        caller = self._callers.get(key)
        if caller is None:
            if len(args) != len(self.definition.inputs):
                raise self._bad_args(args)
            with self._lock:
                if key not in self._callers:
                    self._memoize(key)
                caller = self._callers[key]
        if out is None:
            return self._fast[key](*args)
        self._checks[key](*args)
        self._out_checks[key](out)
        return caller(*args, out=out)

    def _memoize(self, key: ApplyKey) -> None:
        resolution, fast, caller = self._resolve_and_load(key)
        self._resolutions[key] = resolution

        def on_mismatch(args: tuple) -> Exception:
            return mismatch(self.definition, args, key, cuda=self._cuda, device=self.device)

        sol = resolution.solution
        reads_memory = sol is not None and sol.language != "python"  # native, Triton: raw pointers
        self._checks[key] = guarded(self.definition, key, _nothing, cuda=self._cuda,
                                    on_mismatch=on_mismatch, reads_memory=reads_memory)
        self._out_checks[key] = out_check(self.definition, key, cuda=self._cuda, device=self.device)
        self._callers[key] = caller  # after the checks: _slow reads it without the lock
        # Last: the hot path reads this one without the lock.
        self._fast[key] = guarded(self.definition, key, fast, cuda=self._cuda, on_mismatch=on_mismatch,
                                  reads_memory=reads_memory)

    def mode_now(self) -> str:
        """The mode a key resolved now gets: the fixed one, or under ``auto`` ``graph`` while the
        current CUDA stream is capturing a graph and ``eager`` otherwise."""
        if self.mode != AUTO:
            return self.mode
        return current_mode() if self._cuda else EAGER

    def _resolve_and_load(self, key: ApplyKey) -> tuple[Resolution, Callable, Callable]:
        """Resolve ``key``; a solution that fails to build is excluded and the key resolved
        again, so the chain ends at the baseline, then the reference (or raises ResolveError)."""
        mode = self.mode_now()
        while True:
            res = self._resolver.resolve(key, self.policy, strict=self.strict, exclude=self._excluded,
                                         mode=mode)
            if res.solution is None:
                return (res, *self._last_resort(res))
            try:
                fast, caller, build_key = self._load_solution(res.solution.name)
            except BuildError as exc:
                first = str(exc).splitlines()[0]
                log.warning("%s: %s cannot be loaded (%s); resolving %s again without it",
                            self.name, res.solution.name, first, format_key(key))
                self._excluded[res.solution.name] = f"failed to build or load: {first}"
                continue
            if build_key and build_key != res.build_key:
                res = replace(res, build_key=build_key)
            return res, fast, caller

    def _load_solution(self, name: str) -> tuple[Callable, Callable, str]:
        if name in self._loaded:
            fast, caller = self._loaded[name]
            return fast, caller, self.table.candidates[name].build_key
        cand = self.table.candidates[name]
        entry = None
        build_key = cand.build_key
        if build_key:  # its directory follows from the key: a committed build loads without a probe
            directory = store.build_dir(self.settings.cache_dir, build_key, cand.solution.qualified_name)
            try:
                entry = load_committed(directory)
            except BuildError as exc:  # not built yet, or removed or damaged since: build it
                log.debug("%s: no usable committed build at %s (%s)", name, directory, exc)
        if entry is None:
            loaded = BuildCache(self.settings).get_or_build(self.definition, cand.solution)
            entry, build_key = loaded.entry, loaded.build_key
        caller = solution_caller(self.definition, cand.solution, entry)
        fast = entry if self._entry_is_value and not cand.solution.destination_passing_style else caller
        self._loaded[name] = (fast, caller)
        self._entries[name] = entry
        return fast, caller, build_key

    def _last_resort(self, res: Resolution) -> tuple[Callable, Callable]:
        """The user's fallback, or the definition's reference; ResolveError if it cannot load."""
        if self.fallback is not None:
            caller = make_caller(self.definition, self.fallback, destination_passing_style=False)
            return (self.fallback if self._entry_is_value else caller), caller
        if REFERENCE in self._loaded:
            return self._loaded[REFERENCE]

        try:
            run = load_reference(self.definition)["run"]
        except Exception as exc:  # noqa: BLE001 - any failure of workspace code ends the chain
            why = f"the reference cannot be loaded: {type(exc).__name__}: {exc}"
            raise ResolveError(f"{self.name}: nothing can run {format_key(res.key)} on "
                               f"{res.device}", (*res.decisions, Rejected(REFERENCE, why))) from exc
        caller = make_caller(self.definition, run, destination_passing_style=False)
        self._loaded[REFERENCE] = (run if self._entry_is_value else caller), caller
        self._entries[REFERENCE] = run
        return self._loaded[REFERENCE]

    def _bad_args(self, args: tuple) -> FibuildError:
        """The InputError of a call whose key cannot even be read off its arguments."""
        return mismatch(self.definition, args, None, cuda=self._cuda, device=self.device)

    # -- introspection -----------------------------------------------------------------
    def resolution(self, key: ApplyKey) -> Resolution:
        """What runs ``key``: the memoized resolution, else a fresh one (nothing is loaded)."""
        key = tuple(key)
        if key in self._resolutions:
            return self._resolutions[key]
        return self._resolver.resolve(key, self.policy, strict=self.strict, exclude=self._excluded,
                                      mode=self.mode_now())

    def explain(self, **axes: int) -> Resolution:
        """The Resolution for var-axis values given by name, e.g. ``explain(batch_size=32)``.

        Raises ResolveError for unknown or missing axes (and, under ``strict``, when the
        policy has no answer).
        """
        return self.resolution(key_from_axes(self.definition, axes))

    def entry(self, key: ApplyKey) -> Callable | None:
        """The raw entry point memoized for ``key`` (None before its first call)."""
        res = self._resolutions.get(tuple(key))
        if res is None:
            return None
        if res.solution is None:
            return self.fallback or self._entries.get(REFERENCE)
        return self._entries.get(res.solution.name)

    @property
    def keys(self) -> list[ApplyKey]:
        """Keys memoized so far."""
        return list(self._fast)

    @property
    def op(self):
        """This kernel as a ``torch.library`` custom op (registered on first access).

        Same inputs; returns the non-in-place outputs and mutates in-place ones, so it
        works under ``torch.compile`` and CUDA graph capture. Raises ResolveError when
        the definition cannot be expressed as a custom op (see
        :func:`fibuild.runtime.custom_op.op_schema`).
        """
        if self._op is None:
            self._op = register_op(self)
        return self._op


class _OneAxisKernel(Kernel):
    """A Kernel keyed by one var axis (most definitions): the key read without a loop."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        (self._i0, self._d0), = self._sources

    def __call__(self, *args, out=None):
        try:
            key = (args[self._i0].shape[self._d0],)
        except (IndexError, AttributeError, TypeError, RuntimeError):  # RuntimeError: a nested tensor's shape
            raise self._bad_args(args) from None
        if out is None:
            fn = self._fast.get(key)
            if fn is not None:
                return fn(*args)
        return self._slow(key, args, out)


def current_mode() -> str:
    """``graph`` while the current CUDA stream captures a graph, else ``eager``. Cost: a CUDA
    runtime query (call it when a key is resolved, never per call)."""
    import torch

    if not torch.cuda.is_available():
        return EAGER
    return GRAPH if torch.cuda.is_current_stream_capturing() else EAGER


def _nothing(*args) -> None:
    """The call behind an input check made on its own (``out=`` calls check, then call)."""


#: Placeholder source of the world-size axis of a distributed definition.
GROUP_SIZE = (-1, -1)


def process_group_size() -> int:
    """``torch.distributed.get_world_size()`` of the default group; 1 outside a group."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _ProcessGroupKernel(Kernel):
    """A Kernel of a distributed definition whose world-size axis is a var axis: that key
    value is the default process group's size (1 outside a group), read per call until a
    group exists and then kept (a process's default group does not change size)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._group_size: int | None = None

    def __call__(self, *args, out=None):
        size = self._group_size
        if size is None:
            size = process_group_size()
            if size > 1:
                self._group_size = size
        try:
            key = tuple([size if i < 0 else args[i].shape[d] for i, d in self._sources])
        except (IndexError, AttributeError, TypeError, RuntimeError):  # RuntimeError: a nested tensor's shape
            raise self._bad_args(args) from None
        return self._call_key(key, args, out)


def make_kernel(definition: Definition, table: ApplyTable, **kwargs) -> Kernel:
    """A Kernel for ``definition``: the one-axis variant when it has one var axis, the
    process-group variant when a var axis is a distributed definition's world size.

    Keyword arguments as :class:`Kernel`. Raises ResolveError for an unknown policy or a
    var axis no input carries.
    """
    dist = definition.distributed
    if dist is not None and dist.world_size_axis in definition.var_axes:
        cls = _ProcessGroupKernel
    else:
        cls = _OneAxisKernel if len(definition.var_axes) == 1 else Kernel
    return cls(definition, table, **kwargs)

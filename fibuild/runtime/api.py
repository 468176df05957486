"""The public verbs: ``load``, ``apply``, ``resolve``.

Each reads settings at call time (``Settings.from_env()`` unless ``settings`` is given)
and finds the workspace with ``Workspace.discover``. On a warm cache, ``load`` reads the
ApplyTable from the build index (no YAML, no schema, no registry parse) and a call loads
the chosen build from its ``meta.json`` alone.

Example (runs on the shipped workspace, CPU)::

    import torch, fibuild
    k = fibuild.load("rmsnorm_h4096", device="cpu")
    y = k(torch.randn(8, 4096, dtype=torch.bfloat16), torch.ones(4096, dtype=torch.bfloat16))
    print(k.explain(batch_size=8))
"""
from __future__ import annotations

import functools
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from fibuild.bench.compare import EAGER
from fibuild.config import Settings
from fibuild.devices import device_named
from fibuild.errors import InputError
from fibuild.spec.workspace import Workspace

from .collect import target_device
from .decisions import BaseReporter, Resolution
from .dispatch import AUTO, Kernel, key_from_axes, make_kernel
from .resolve import Resolver, check_mode, policy_chain
from .table import ApplyTable, usable_keys
from .table_cache import load_table

log = logging.getLogger("fibuild.runtime")


def _workspace(settings: Settings):
    return Workspace.discover(settings)


def _settings(settings: Settings | None, root: str | Path | None) -> Settings:
    """``settings`` (default: read from the environment), with ``root`` as the workspace."""
    settings = settings or Settings.from_env()
    return settings if root is None else replace(settings, root=Path(root).expanduser().resolve())


def load(name: str, *, policy: str = "nearest", device: str | None = None, strict: bool = False,
         settings: Settings | None = None, fallback: Callable | None = None,
         mode: str | None = None, root: str | Path | None = None) -> Kernel:
    """The dispatching callable of definition ``name`` on this machine.

    ``policy``: the first policy tried (``exact``, ``nearest``, ``def_best``, ``baseline``,
    ``reference``); the chain goes on after it unless ``strict``. ``device``: ``cpu``,
    ``cuda``, ``cuda:N`` or the slug of one of this machine's devices (default
    ``FIBUILD_DEVICE``, else cuda when available). ``mode``: how you call it, which decides
    the cost ranked: ``eager`` (max of host and GPU time per call), ``graph`` (GPU time,
    for calls captured in a CUDA graph) or ``auto`` (per key at its first call, ``graph``
    while a CUDA graph is being captured, else ``eager``; a key first called outside the
    capture keeps its eager choice, so pass ``graph`` for kernels you capture); default
    ``FIBUILD_MODE``, else ``auto``.
    ``fallback``: a value-returning function used instead of the reference. ``root``: the
    workspace (default ``FIBUILD_ROOT``, else the one found from the current directory).
    Reads ``FIBUILD_ROOT``, ``FIBUILD_CACHE_DIR``, ``FIBUILD_DEVICE``, ``FIBUILD_MODE``
    (through Settings). With no usable evaluation on this device, keys run the definition's
    baseline (or borrow the evaluations of a device of the same compute capability), and a
    warning says so once, naming ``fibuild bench NAME``.

    Raises FibuildError for an unknown definition or device, ManifestError(s) for
    invalid manifests (only when the table is not cached), ResolveError for an unknown
    policy or mode. Building happens on the first call of a key, not here.
    """
    settings = _settings(settings, root)
    policy_chain(policy, strict=strict)
    mode = mode or settings.mode
    if mode != AUTO:
        check_mode(mode)
    dev = device_named(device, settings)  # a slug must name a device of this machine: load runs kernels here
    defn, table, _ = load_table(_workspace(settings), settings, name, dev.slug, here=True)
    warn_unmeasured(table)
    return make_kernel(defn, table, settings=settings, policy=policy, strict=strict, device=dev.torch_device,
                       fallback=fallback, mode=mode)


def resolve(name: str, axes: Mapping[str, Any], *, policy: str = "nearest",
            device: str | None = None, strict: bool = False, settings: Settings | None = None,
            reporter: BaseReporter | None = None, mode: str = EAGER,
            root: str | Path | None = None) -> Resolution:
    """Which solution runs ``name`` at ``axes`` (var-axis values by name), and why.

    ``mode``: ``eager`` (default) or ``graph``, as for :func:`load`.

    ``device``: a kind (``cpu``, ``cuda``) or a device slug; a slug of another machine
    answers from that device's committed records without checking what builds here (the
    resolution's ``notes`` say so). ``root`` as :func:`load`. Nothing is built or loaded.

    Raises FibuildError for an unknown definition, ResolveError for unknown, missing or
    non-integer axes, an unknown policy, or (``strict``) no answer.
    """
    settings = _settings(settings, root)
    policy_chain(policy, strict=strict)
    slug, here = target_device(settings, device)
    defn, table, _ = load_table(_workspace(settings), settings, name, slug, here=here)
    key = key_from_axes(defn, axes)
    res = Resolver(table).resolve(key, policy, strict=strict, reporter=reporter, mode=check_mode(mode))
    if not here:
        res = replace(res, notes=(f"{slug} is not this machine: answered from its committed "
                                  "records; whether each solution can build here was not checked",))
    return res


_APPLIED: dict[tuple, Kernel] = {}
_APPLIED_LOCK = threading.Lock()


def _applied_kernel(name: str, fallback: Callable | None, policy: str, device: str | None,
                    settings: Settings | None, strict: bool = False, mode: str | None = None) -> Kernel:
    """One Kernel per (name, fallback, policy, strict, device, settings, mode) for the process.

    A memo on purpose: ``apply(name, args=...)`` is called per invocation, and loading a
    table per call would cost milliseconds. ``fibuild.load`` gives a fresh Kernel instead.
    """
    settings = settings or Settings.from_env()
    memo_key = (name, fallback, policy, strict, device, settings, mode)
    kernel = _APPLIED.get(memo_key)
    if kernel is None:
        with _APPLIED_LOCK:
            kernel = _APPLIED.get(memo_key)
            if kernel is None:
                kernel = load(name, policy=policy, device=device, strict=strict, settings=settings,
                              fallback=fallback, mode=mode)
                _APPLIED[memo_key] = kernel
    return kernel


def apply(name: str, fn: Callable | None = None, *, args: tuple | None = None,
          fallback: Callable | None = None, policy: str = "nearest", device: str | None = None,
          strict: bool = False, settings: Settings | None = None, mode: str | None = None,
          root: str | Path | None = None):
    """Run definition ``name`` through the fastest correct solution, or a fallback.

    As a decorator, the decorated function is the fallback (used where the definition's
    reference would be) and the result dispatches like ``load``::

        @fibuild.apply("rmsnorm_h4096")
        def rmsnorm(hidden_states, weight): ...

    The kernel is loaded on the first call, not at decoration. As a call,
    ``apply(name, args=(x, w), fallback=f)`` runs once and returns the outputs; kernels
    are memoized per process (settings are read per call). ``policy``, ``strict``,
    ``device``, ``mode`` and ``root`` as :func:`load`.

    A call the definition does not cover (another hidden size, dtype or device: the
    InputError ``load``'s kernel raises) runs the fallback instead, as flashinfer-bench's
    ``apply`` does; it is logged once per definition. Without a fallback, and otherwise,
    raises as :func:`load`.
    """
    if args is not None:
        kernel = _applied_kernel(name, fallback, policy, device, _settings(settings, root), strict, mode)
        return _covered_or_fallback(kernel, fallback, args, None)
    policy_chain(policy, strict=strict)
    if mode not in (None, AUTO):
        check_mode(mode)

    def decorate(func: Callable) -> Callable:
        state: dict[str, Kernel] = {}

        @functools.wraps(func)
        def dispatch(*call_args, out=None):
            kernel = state.get("kernel")
            if kernel is None:
                kernel = state["kernel"] = _applied_kernel(name, func, policy, device,
                                                           _settings(settings, root), strict, mode)
            return _covered_or_fallback(kernel, func, call_args, out)

        dispatch.kernel = lambda: state.get("kernel") or _applied_kernel(name, func, policy, device,
                                                                         _settings(settings, root), strict, mode)
        return dispatch

    return decorate if fn is None else decorate(fn)


_UNCOVERED_SAID: set[str] = set()


def _covered_or_fallback(kernel: Kernel, fallback: Callable | None, args: tuple, out):
    """``kernel(*args, out=out)``; when the definition does not cover these inputs
    (InputError, raised before any kernel runs) and there is a fallback, the fallback's
    result instead. Costs nothing over the kernel call when the inputs are covered."""
    try:
        return kernel(*args, out=out)
    except InputError as exc:
        if fallback is None:
            raise
        if kernel.name not in _UNCOVERED_SAID:
            _UNCOVERED_SAID.add(kernel.name)
            log.info("fibuild.apply(%r): a call the definition does not cover runs the fallback %s (%s)",
                     kernel.name, getattr(fallback, "__qualname__", fallback), str(exc).splitlines()[0])
        return fallback(*args) if out is None else fallback(*args, out=out)


_WARNED: set[tuple[str, str, str]] = set()
_WARNED_LOCK = threading.Lock()


def warn_unmeasured(table: ApplyTable) -> bool:
    """Log, once per process and (definition, device, cause), that resolution on ``table``
    does not rest on this device's evaluations: it borrows another device's, or has none and
    runs the baseline (or, with no baseline that can run, the reference). Names the device and
    the command that fixes it. Returns whether it logged now. Cost: one pass over the keys."""
    if table.borrowed:
        cause = f"borrows the evaluations of {table.borrowed} (same compute capability)"
    elif usable_keys(table):
        return False
    elif table.baseline:
        cause = f"runs its baseline {table.baseline}"
    else:
        cause = f"runs its reference ({table.baseline_note})"
    marker = (table.definition, table.device, cause)
    with _WARNED_LOCK:
        if marker in _WARNED:
            return False
        _WARNED.add(marker)
    log.warning("fibuild: %s has no usable evaluation on %s and %s; run `fibuild bench %s` on this "
                "machine to measure its solutions here", table.definition, table.device, cause,
                table.definition)
    return True

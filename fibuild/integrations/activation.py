"""Turning the serving integration on and off: ``enable``, ``disable``, and the ``.pth`` start.

``enable(trace=..., apply=..., root=...)`` patches the adapted APIs of modules already
imported and, for the others, installs a :class:`PostImportFinder` that patches each module
right after its first import (FlashInfer is never imported by fibuild). ``disable()`` flushes
the trace and restores every patched attribute to the very object it held.

The ``fibuild_integrations.pth`` file installed with fibuild runs :func:`start_from_env` at
interpreter start only when ``FIBUILD_TRACE`` or ``FIBUILD_APPLY`` is set to something other
than empty or ``0``; otherwise it costs one environment lookup and imports nothing.

Patching is process-wide, so there is at most one active integration per process (held
here); ``enable`` while one is active replaces it.
"""
from __future__ import annotations

import atexit
import dataclasses
import importlib
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from fibuild.config import Settings, flashinfer_bench_settings
from fibuild.errors import ConfigError

from .adapters import default_adapters
from .counters import append_stats, format_stats
from .op_overrides import OpOverrides
from .patching import Patcher, PostImportFinder
from .session import Session
from .sites import patched_function
from .wrapper_sites import patch_wrapper_class

log = logging.getLogger("fibuild.integrations")

_LOCK = threading.RLock()
_ACTIVE: list["Integration"] = []  # zero or one
_LAST: list["Integration"] = []    # the last one disabled (its counters stay readable)


class Integration:
    """An enabled integration: its session, what it patched, and its import hook."""

    def __init__(self, session, adapters):
        self.session = session
        self.adapters = adapters
        self.patcher = Patcher()
        self.ops = OpOverrides()
        self.patched: list[str] = []
        self.finder: PostImportFinder | None = None

    def patch_module(self, root: str) -> None:
        """Patch every adapter whose API lives under the imported module ``root``: one path
        for every seam, its kind choosing how (see the adapters' seam attributes)."""
        for adapter in self.adapters:
            if adapter.root != root:
                continue
            try:
                module = sys.modules.get(adapter.module) or importlib.import_module(adapter.module)
            except ImportError as exc:
                log.info("fibuild: %s not patched (%s)", adapter.api, exc)
                continue
            if adapter.kind == "torch_op":
                done = self.patch_op(adapter)
            else:
                target = getattr(module, adapter.attr, None)
                if target is None:
                    continue
                if adapter.kind == "wrapper":
                    done = patch_wrapper_class(self, adapter, target)
                else:
                    done = self.patch_function(adapter, module, target)
            if done:
                self.patched.append(adapter.api)

    def patch_function(self, adapter, module, original) -> bool:
        """Replace ``module.<adapter.attr>`` and its aliases (``adapter.alias_scope``)."""
        if hasattr(original, "fibuild_memo"):
            return False
        wrapper = patched_function(self.session, adapter, original)
        self.patcher.replace(module, adapter.attr, wrapper)
        self.patcher.replace_aliases(original, wrapper, (adapter.root,) if adapter.alias_scope == "root" else None)
        return True

    def patch_op(self, adapter) -> bool:
        """Take the calls of the torch operator ``adapter.qualname`` at the dispatcher, the
        operator's own kernel as the original (:mod:`.op_overrides`)."""
        return self.ops.override(adapter.qualname, lambda original: patched_function(self.session, adapter, original))

    def stats(self) -> dict:
        return self.session.stats.snapshot()

    def flush(self) -> None:
        if self.session.recorder is not None:
            self.session.recorder.flush()

    def at_exit(self) -> None:
        """Flush the trace; keep and (``FIBUILD_STATS=1``) print the counters."""
        self.flush()
        snapshot = self.stats()
        if self.session.trace or self.session.settings.stats:
            append_stats(self.session.workspace.registry_dir, snapshot)
        if self.session.settings.stats:
            print(format_stats(snapshot), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.finder is not None:
            self.finder.uninstall()
        self.patcher.restore()
        self.ops.restore()
        try:
            atexit.unregister(self.at_exit)
        except Exception:  # noqa: BLE001
            pass
        self.at_exit()


def enable(*, trace: bool = False, apply: bool = False, root: str | Path | None = None,
           per_key: int = 2, flush_every: int = 64, policy: str = "nearest", mode: str | None = None,
           settings: Settings | None = None, adapters=None) -> Integration:
    """Trace and/or substitute the adapted APIs in this process: FlashInfer's, ``F.linear``,
    sgl_kernel's norms and activation, vLLM's ``_C`` norm and activation operators.

    ``root``: the workspace (default ``FIBUILD_ROOT``, else the usual discovery).
    ``per_key``: traced workloads kept per shape bucket; ``flush_every``: records per write.
    ``policy``: the resolution policy of the kernels (``fibuild.load``'s). ``mode``: the cost
    they rank by, ``eager``, ``graph`` or ``auto`` (per call shape at its first call, ``graph``
    while a CUDA graph is being captured); default ``FIBUILD_MODE``, else ``auto``. ``adapters``:
    instances to use instead of the built-in ones (tests). Raises ConfigError when neither
    ``trace`` nor ``apply`` is set. Logs one line saying what was enabled and where.
    """
    if not trace and not apply:
        raise ConfigError("fibuild.enable(): set trace=True and/or apply=True")
    settings = settings or Settings.from_env()
    mode = mode or settings.mode
    if mode not in ("auto", "eager", "graph"):
        raise ConfigError(f"fibuild.enable(): mode {mode!r}: expected auto, eager or graph")
    if root is not None:
        settings = dataclasses.replace(settings, root=Path(root).expanduser().resolve())
    with _LOCK:
        disable()
        session = Session(settings, trace=trace, apply=apply, per_key=per_key,
                          flush_every=flush_every, policy=policy, mode=mode)
        integration = Integration(session, list(adapters) if adapters is not None else default_adapters())
        waiting = {}
        for name in dict.fromkeys(a.root for a in integration.adapters):  # the modules whose import patches
            if name in sys.modules:
                integration.patch_module(name)
            else:
                waiting[name] = lambda module, root=name: integration.patch_module(root)
        if waiting:
            integration.finder = PostImportFinder(waiting)
            integration.finder.install()
        atexit.register(integration.at_exit)
        _ACTIVE.append(integration)
    what = "+".join(w for w, on in (("trace", trace), ("apply", apply)) if on)
    log.warning("fibuild: serving integration enabled (%s) on workspace %s; patched now: %s%s", what,
                session.workspace.root, ", ".join(integration.patched) or "nothing",
                f"; patching on import: {', '.join(waiting)}" if waiting else "")
    return integration


def disable() -> None:
    """Flush the trace and restore every patched object; a no-op when nothing is enabled.
    The counters of the integration it closes stay readable through :func:`stats`."""
    with _LOCK:
        while _ACTIVE:
            integration = _ACTIVE.pop()
            integration.close()
            _LAST[:] = [integration]


def stats() -> dict:
    """Per patched API, what its calls did in this process: ``{api: {"calls", "substituted",
    "original", "fallbacks": {reason: n}[, "plans": {entry: n}]}}`` (attention wrappers
    count runs as calls and list their plans by entry: ``plan``, ``begin_forward``,
    ``fast_decode_plan``, ``unseen``). The enabled integration's, else the last one
    disabled; ``{}`` when none was enabled. Cost: one pass over the counters."""
    with _LOCK:
        integration = _ACTIVE[0] if _ACTIVE else (_LAST[0] if _LAST else None)
    return integration.stats() if integration is not None else {}


def active() -> Integration | None:
    """The enabled integration, or None."""
    return _ACTIVE[0] if _ACTIVE else None


def start_from_env(env: Any = None) -> Integration | None:
    """Enable from ``FIBUILD_TRACE`` / ``FIBUILD_APPLY`` (and ``FIBUILD_ROOT``); the ``.pth``
    hook's entry point. Never raises: a bad setting is logged and nothing is patched.
    flashinfer-bench's ``FIB_*`` variables are not read; see :func:`say_flashinfer_bench_settings`."""
    try:
        settings = Settings.from_env(env)
        if not settings.trace and not settings.apply:
            say_flashinfer_bench_settings(env)
            return None
        if _ACTIVE:  # the hook ran already (a second site dir holding it, or fibuild run's shim)
            return _ACTIVE[-1]
        return enable(trace=settings.trace, apply=settings.apply, settings=settings)
    except ConfigError as exc:
        print(f"fibuild: serving integration not enabled: {exc}", file=sys.stderr)
    except Exception:  # noqa: BLE001 - interpreter start must never fail because of fibuild
        log.exception("fibuild: serving integration not enabled")
    return None


_FOREIGN_SAID: list[bool] = []


def say_flashinfer_bench_settings(env: Any = None) -> bool:
    """Print once per process, on stderr, that flashinfer-bench's ``FIB_*`` variables set in
    ``env`` are not fibuild's, and what to set instead; silent when none is set or when
    flashinfer-bench is installed (they are its own then). Returns whether it printed."""
    import importlib.util

    found = flashinfer_bench_settings(env)
    if not found or _FOREIGN_SAID or importlib.util.find_spec("flashinfer_bench") is not None:
        return False
    _FOREIGN_SAID.append(True)
    print(f"fibuild: {', '.join(found)} ignored: those are flashinfer-bench's settings (not installed "
          "here); fibuild reads FIBUILD_TRACE=1, FIBUILD_APPLY=1 and FIBUILD_ROOT=<workspace> (import a "
          "dataset with `fibuild import flashinfer-trace DIR`)", file=sys.stderr)
    return True

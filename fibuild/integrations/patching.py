"""Replacing attributes and restoring them exactly, and patching modules right after import.

:class:`Patcher` records, for every attribute it replaces, whether the owner held it in its
own ``__dict__`` and the exact object there, so :meth:`Patcher.restore` puts back the very
same object (or deletes an attribute the owner only inherited). :class:`PostImportFinder`
is a ``sys.meta_path`` finder that lets the normal finders locate a watched module and wraps
its loader so a callback runs right after the module body executed; the module's
``__loader__`` and ``__spec__.loader`` are set back to the real loader afterwards.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable, Iterable

log = logging.getLogger("fibuild.integrations")


class Patcher:
    """Attribute replacements, undone in reverse order by :meth:`restore`."""

    def __init__(self) -> None:
        self._records: list[tuple[Any, str, bool, Any]] = []

    def __len__(self) -> int:
        return len(self._records)

    def replace(self, owner: Any, attr: str, new: Any) -> Any:
        """Set ``owner.attr = new``; returns the object it replaced (as ``getattr`` sees it)."""
        own = vars(owner)
        had = attr in own
        raw = own[attr] if had else None
        seen = getattr(owner, attr)
        setattr(owner, attr, new)
        self._records.append((owner, attr, had, raw))
        return seen

    def replace_aliases(self, original: Any, new: Any, prefixes: Iterable[str] | None) -> list[str]:
        """Replace every module attribute that *is* ``original`` in the loaded modules named
        by ``prefixes`` (``flashinfer`` and ``flashinfer.*``; None: every loaded module), so
        ``from flashinfer import rmsnorm`` done afterwards gets ``new`` too, and a name an
        engine bound before is replaced. Returns ``module.attr`` names replaced.
        Cost: one pass over those modules' dicts."""
        done = []
        prefixes = tuple(prefixes) if prefixes is not None else None
        for name, module in list(sys.modules.items()):
            if module is None or (prefixes is not None and
                                  not any(name == p or name.startswith(p + ".") for p in prefixes)):
                continue
            try:
                items = list(vars(module).items())
            except TypeError:
                continue
            for attr, value in items:
                if value is original:
                    try:
                        self.replace(module, attr, new)
                    except (AttributeError, TypeError):  # a read-only module attribute: left alone
                        continue
                    done.append(f"{name}.{attr}")
        return done

    def restore(self) -> None:
        """Undo every replacement, newest first, and forget them."""
        while self._records:
            owner, attr, had, raw = self._records.pop()
            if had:
                setattr(owner, attr, raw)
            else:
                try:
                    delattr(owner, attr)
                except AttributeError:
                    pass


class _PostLoader:
    """Delegates to the real loader; runs ``callback(module)`` after ``exec_module``."""

    def __init__(self, inner: Any, callback: Callable[[Any], None]):
        self._inner = inner
        self._callback = callback

    def create_module(self, spec):
        create = getattr(self._inner, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        module.__loader__ = self._inner
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._inner
        try:
            self._callback(module)
        except Exception:  # noqa: BLE001 - a patching failure must never break the user's import
            log.exception("fibuild: patching %s after import failed; it runs unpatched", module.__name__)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class PostImportFinder:
    """A meta-path finder calling ``callbacks[name](module)`` once ``name`` is imported.

    It finds nothing itself: for a watched name it asks the finders after it, and wraps the
    loader of what they found. A name is watched until its first import. Thread-safe.
    Cost for other imports: one dict lookup each.
    """

    def __init__(self, callbacks: dict[str, Callable[[Any], None]]):
        self._callbacks = dict(callbacks)
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    @property
    def watching(self) -> tuple[str, ...]:
        return tuple(self._callbacks)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self._callbacks:
            return None
        with self._lock:
            if fullname in self._busy:
                return None
            self._busy.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            with self._lock:
                self._busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        callback = self._callbacks.pop(fullname)
        spec.loader = _PostLoader(spec.loader, callback)
        return spec

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    def invalidate_caches(self) -> None:
        """Part of the finder protocol: nothing is cached here."""

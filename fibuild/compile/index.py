"""A JSON-only diskcache index over the build store, plus a small JSON key-value store.

The index maps build keys to summaries (directory, solution, status, build time) so
``info``, ``gc`` and listings need not open every ``meta.json``. It is only an index:
the store's ``meta.json`` files are the truth, and a missing or corrupt index is
recreated and refilled by scanning the store. Other stages keep derived JSON here too
(``get_json`` / ``set_json``, e.g. the resolver's apply tables).

Values are JSON text only: :class:`JSONOnlyDisk` refuses to store anything else and
refuses to load a value or key stored any other way, so a pickle planted in the
database is never unpickled. The directory is mode 0700 and nothing is ever evicted.

Only a *corrupt* database ("file is not a database", "malformed") is wiped and refilled.
An operational failure (full or read-only disk, locked database, a file where the
directory should be) leaves it alone and raises :class:`~fibuild.errors.CacheError`
naming the directory and what to do; callers treat the index as optional.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import diskcache
from diskcache.core import MODE_RAW, MODE_TEXT, UNKNOWN

from fibuild.compile import store
from fibuild.errors import CacheError, cache_error

log = logging.getLogger("fibuild.compile")

BUILDS = "build"  # namespace of build summaries


class JSONOnlyDisk(diskcache.Disk):
    """diskcache serialization that accepts only ``str`` keys and JSON values.

    Any row stored as a pickle (or as raw bytes) raises CacheError on read: it was not
    written by fibuild, and unpickling it could run arbitrary code.
    """

    def put(self, key):
        if type(key) is not str:
            raise CacheError(f"index keys must be str, not {type(key).__name__}")
        return key, True

    def get(self, key, raw):
        if not raw or type(key) is not str:
            raise CacheError("refusing an index key that is not plain text (possibly a pickle)")
        return key

    def store(self, value, read, key=UNKNOWN):
        if read:
            raise CacheError("the index stores JSON values, not files")
        try:
            # Key order kept: a definition's axes, inputs and outputs are ordered mappings.
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CacheError(f"index values must be JSON: {exc}") from None
        return super().store(text, False, key=key)

    def fetch(self, mode, filename, value, read):
        if mode == MODE_RAW and type(value) is str:
            text = value
        elif mode == MODE_TEXT and filename:
            text = super().fetch(mode, filename, value, False)
        else:
            raise CacheError(f"refusing an index value stored with diskcache mode {mode} "
                             "(only JSON text is accepted; pickles are never loaded)")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise CacheError(f"corrupt index value: {exc}") from None


class Index:
    """The index of one cache directory (``<cache>/index``). Opened lazily; not thread-safe
    to share across processes' forks (open one per process). Use as a context manager or
    call ``close()``."""

    def __init__(self, cache_dir: Path, *, wait_s: float | None = None):
        self.cache_dir = Path(cache_dir)
        self.directory = self.cache_dir / "index"
        self.wait_s = wait_s  # how long sqlite waits for another process's lock (None: diskcache's 60 s)
        self._cache: diskcache.Cache | None = None

    # -- opening -----------------------------------------------------------------------
    def _open(self) -> diskcache.Cache:
        if self._cache is not None:
            return self._cache
        fresh = not (self.directory / "cache.db").exists()
        try:
            self._cache = self._connect()
        except sqlite3.DatabaseError as exc:
            self._unless_corrupt(exc)
            log.warning("index %s is corrupt (%s); recreating it from the store", self.directory, exc)
            self._wipe()
            self._cache = self._checked(self._connect)
            fresh = True
        if fresh:
            self._checked(self.rebuild)
        return self._cache

    def _connect(self) -> diskcache.Cache:
        store.private_dir(self.directory, self.cache_dir)
        if self.wait_s is not None:
            self._probe_lock()
        try:
            cache = diskcache.Cache(str(self.directory), disk=JSONOnlyDisk, eviction_policy="none",
                                    timeout=60 if self.wait_s is None else self.wait_s)
            store.tighten(self.directory)  # sqlite creates its files 0644 whatever the folder's mode
            return cache
        except OSError as exc:
            raise cache_error(exc, self.directory, "open the build index") from None

    def _probe_lock(self) -> None:
        """CacheError when another process holds the database's write lock past ``wait_s``.

        diskcache retries a locked statement for 60 s whatever its ``timeout`` (and opening a
        Cache writes), so a bounded caller asks sqlite first, with its own timeout.
        """
        path = self.directory / "cache.db"
        if not path.exists():
            return
        try:
            probe = sqlite3.connect(str(path), timeout=self.wait_s, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
            finally:
                probe.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise CacheError(f"{self.directory}: the build index is locked by another process "
                                 f"(waited {self.wait_s:g} s)") from None
        except sqlite3.DatabaseError:
            pass  # corrupt: _open's own handling applies

    def _unless_corrupt(self, exc: sqlite3.DatabaseError) -> None:
        """Raise CacheError unless ``exc`` says the database file itself is corrupt."""
        text = str(exc).lower()
        if type(exc) is sqlite3.DatabaseError or "malformed" in text or "not a database" in text:
            return
        try:
            fs = os.statvfs(self.directory)
            read_only, full = bool(fs.f_flag & os.ST_RDONLY), fs.f_bavail == 0
        except OSError:
            read_only = full = False
        advice = ("the file system is full: free some space" if full or "full" in text else
                  "the file system is read-only" if read_only or "readonly" in text
                  else "retry, or remove the directory (it is rebuilt from the store)")
        raise CacheError(f"{self.directory}: the build index cannot be used ({exc}): {advice}, "
                         "or set FIBUILD_CACHE_DIR to another directory") from None

    def _checked(self, op):
        try:
            return op()
        except sqlite3.DatabaseError as exc:
            self._unless_corrupt(exc)
            raise CacheError(f"{self.directory}: the build index is corrupt ({exc}); remove the "
                             "directory (it is rebuilt from the store)") from None

    def _wipe(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def _guard(self, op):
        """Run ``op(cache)``; a corrupt database is recreated (and refilled) once; any other
        database failure, a lock held past the wait included, is a CacheError (the index is
        left as it is)."""
        try:
            return op(self._open())
        except diskcache.Timeout:
            raise CacheError(f"{self.directory}: the build index is locked by another process "
                             f"(waited {self.wait_s if self.wait_s is not None else 60:g} s)") from None
        except sqlite3.DatabaseError as exc:
            self._unless_corrupt(exc)
            log.warning("index %s is corrupt (%s); recreating it from the store", self.directory, exc)
            self._wipe()
            return self._checked(lambda: op(self._open()))

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- generic JSON ------------------------------------------------------------------
    @staticmethod
    def _key(namespace: str, key: str) -> str:
        if not namespace or ":" in namespace:
            raise CacheError(f"index namespace {namespace!r} must be non-empty and hold no ':'")
        return f"{namespace}:{key}"

    def get_json(self, namespace: str, key: str, default: Any = None) -> Any:
        """The JSON value under ``namespace``/``key``, or ``default``.

        A refused (non-JSON, e.g. pickled) entry is deleted, logged and read as a miss.
        """
        full = self._key(namespace, key)

        def op(cache):
            try:
                return cache.get(full, default)
            except CacheError as exc:
                log.warning("index entry %r refused and removed: %s", full, exc)
                cache.delete(full)
                return default

        return self._guard(op)

    def set_json(self, namespace: str, key: str, value: Any) -> None:
        """Store a JSON-able ``value``; CacheError if it is not JSON."""
        full = self._key(namespace, key)
        self._guard(lambda cache: cache.set(full, value))

    def delete_json(self, namespace: str, key: str) -> None:
        full = self._key(namespace, key)
        self._guard(lambda cache: cache.delete(full))

    def items(self, namespace: str) -> Iterator[tuple[str, Any]]:
        """Every ``(key, value)`` of ``namespace``; refused entries are skipped with a warning."""
        prefix = self._key(namespace, "")
        cache = self._open()
        for full in self._checked(lambda: list(cache.iterkeys())):
            if isinstance(full, str) and full.startswith(prefix):
                try:
                    value = cache.get(full)
                except CacheError as exc:
                    log.warning("index entry %r refused: %s", full, exc)
                    continue
                if value is not None:
                    yield full[len(prefix):], value

    # -- build summaries ---------------------------------------------------------------
    def record(self, key: str, summary: dict[str, Any]) -> None:
        self.set_json(BUILDS, key, summary)

    def summary(self, key: str) -> dict[str, Any] | None:
        return self.get_json(BUILDS, key)

    def forget(self, key: str) -> None:
        self.delete_json(BUILDS, key)

    def rebuild(self) -> int:
        """Refill build summaries by scanning the store; return how many were recorded."""
        cache = self._cache if self._cache is not None else self._open()
        prefix = self._key(BUILDS, "")
        for full in list(cache.iterkeys()):
            if isinstance(full, str) and full.startswith(prefix):
                cache.delete(full)
        count = 0
        for found in store.scan(self.cache_dir):
            if found.key:
                cache.set(prefix + found.key, build_summary(found.path, found.meta, found.failed))
                count += 1
        return count


def build_summary(directory: Path, meta: dict[str, Any] | None, failed: dict[str, Any] | None) -> dict[str, Any]:
    """The index's record of one build directory."""
    record = meta or failed or {}
    return {
        "dir": str(directory),
        "status": "committed" if meta else "failed" if failed else "incomplete",
        "solution": record.get("solution"),
        "language": record.get("language"),
        "built_at": record.get("built_at") or record.get("failed_at"),
        "build_seconds": record.get("build_seconds"),
    }

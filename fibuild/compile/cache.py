"""The build cache: memory -> committed directory -> build -> load (DESIGN §4).

``BuildCache.get_or_build`` adds the memory level (key -> LoadedKernel or the BuildError
it raised, under a lock) and the load (step 9) around the one build sequence,
:func:`fibuild.compile.batch.build_items`, called with a batch of one: a verified commit
is loaded as is; a missing or damaged one is (re)built under the key's lock, committed
and indexed there.

``load_committed(build_dir)`` is the fast path of ``fibuild.load``: it verifies the
build (``meta.json`` and the artifact's size and sha256, :func:`store.check_meta`) and
loads the artifact, importing neither yaml, jsonschema, ninja nor diskcache, and writing
nothing (so it works on a read-only or full cache).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from fibuild.compile import keys, store
from fibuild.compile.builders import get_builder
from fibuild.compile.builders.loading import load_entry
from fibuild.compile.loaded import LoadedKernel
from fibuild.errors import BuildError, CacheError
from fibuild.spec.calling import solution_caller

if TYPE_CHECKING:
    from fibuild.config import Settings
    from fibuild.spec.model import Definition, Solution

log = logging.getLogger("fibuild.compile")


def load_committed(build_dir: Path | str) -> Callable:
    """The raw entry point of the committed build in ``build_dir``, from its ``meta.json`` alone.

    Raises BuildError when the directory holds no verified build (no marker, or a marker
    or artifact that fails :func:`store.check_meta`: the caller then goes through
    ``get_or_build``, which moves the damaged build aside and rebuilds it). Nothing is
    written. Cost: one small JSON read, hashing the artifact, then the load itself
    (``dlopen`` for native builds, an import otherwise).
    """
    directory = Path(build_dir)
    meta, why = store.check_meta(directory)
    if meta is None:
        raise BuildError(f"{directory} holds no committed build ({why or 'meta.json missing'})",
                         build_dir=directory)

    return load_entry(directory, meta)


class BuildCache:
    """Builds and loads solutions through ``$FIBUILD_CACHE_DIR``.

    One instance per process is typical but not required: the memory level is per
    instance, the disk level and locks are shared by every process. Thread-safe.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache_dir = settings.cache_dir
        self._memory: dict[str, LoadedKernel | BuildError] = {}
        self._lock = threading.Lock()

    # -- keys and places ---------------------------------------------------------------
    def key_inputs(self, defn: Definition, sol: Solution) -> dict[str, Any]:
        return keys.key_inputs(defn, sol, self.settings)

    def key(self, defn: Definition, sol: Solution) -> str:
        return keys.build_key(defn, sol, self.settings)

    def build_dir(self, sol: Solution, key: str) -> Path:
        return store.build_dir(self.cache_dir, key, sol.qualified_name)

    # -- the template method -----------------------------------------------------------
    def get_or_build(self, defn: Definition, sol: Solution, *, retry_failed: bool = False) -> LoadedKernel:
        """The loaded kernel of ``sol``, building it first if no verified committed build exists.

        A damaged build (artifact or ``meta.json`` failing its checksums, a marker naming a
        file outside its directory, a link) is moved aside with a warning and rebuilt.
        Raises BuildError (unknown language, unreadable source, builder unavailable,
        compile or load failure, a cache that cannot be written, or FIBUILD_DISABLE_BUILD
        on a miss); the error is remembered for this key in this instance. Cost on a
        memory hit: one key computation (reads and hashes the sources); on a disk hit:
        plus the verification (hashing the artifact) and the load.
        """
        inputs = self.key_inputs(defn, sol)
        key = keys.key_of(inputs)
        with self._lock:
            hit = self._memory.get(key)
        if hit is None or (retry_failed and isinstance(hit, BuildError)):
            try:
                hit = self._disk_or_build(defn, sol, key, inputs, retry_failed)
            except BuildError as exc:
                hit = exc
            with self._lock:
                if isinstance(self._memory.get(key), LoadedKernel):
                    hit = self._memory[key]  # another thread loaded it first: share one module
                else:
                    self._memory[key] = hit
        if isinstance(hit, BuildError):
            raise hit
        return hit

    def _disk_or_build(self, defn, sol, key, inputs, retry_failed) -> LoadedKernel:
        from fibuild.compile.batch import BuildItem, build_items  # deferred: ninja plumbing, off the warm load path

        item = BuildItem(defn, sol, inputs=inputs, key=key)
        try:
            report = build_items(self.settings, [item], jobs=self.settings.max_jobs,
                                 retry_failed=retry_failed)
        except CacheError as exc:  # the cache, not the solution: callers fall back as for a build error
            raise BuildError(f"{sol.qualified_name}: cannot build: {exc}", solution=sol.qualified_name) from exc
        outcome = report.outcomes[0]
        if outcome.meta is None:
            raise outcome.exception if isinstance(outcome.exception, BuildError) else BuildError(
                outcome.error, solution=sol.qualified_name, build_dir=outcome.build_dir)
        return self._load(defn, sol, key, outcome.build_dir, outcome.meta)

    def _load(self, defn, sol, key, directory, meta) -> LoadedKernel:
        entry = get_builder(meta["language"]).load(directory, meta)
        return LoadedKernel(definition=defn, solution=sol, build_key=key, build_dir=directory,
                            entry=entry, call=solution_caller(defn, sol, entry), meta=meta)

    # -- lookups -----------------------------------------------------------------------
    def lookup(self, defn: Definition, sol: Solution) -> LoadedKernel | None:
        """The loaded kernel if a committed build exists (memory or disk); never builds.

        Raises BuildError only when a committed build exists but fails to load.
        """
        key = self.key(defn, sol)
        with self._lock:
            hit = self._memory.get(key)
        if isinstance(hit, LoadedKernel):
            return hit
        directory = self.build_dir(sol, key)
        meta = store.read_meta(directory, key)
        if meta is None:
            return None
        loaded = self._load(defn, sol, key, directory, meta)
        with self._lock:
            self._memory[key] = loaded
        return loaded

    def status(self, defn: Definition, sol: Solution) -> tuple[str, Path, dict[str, Any] | None]:
        """``(status, build_dir, record)``: status is committed, failed or missing."""
        key = self.key(defn, sol)
        directory = self.build_dir(sol, key)
        meta = store.read_meta(directory, key)
        if meta:
            return "committed", directory, meta
        failed = store.read_failed(directory, key)
        return ("failed", directory, failed) if failed else ("missing", directory, None)

    def build_many(self, pairs: Iterable[tuple[Definition, Solution]], *, jobs: int | None = None,
                   keep_going: bool = True, retry_failed: bool = False, reporter=None):
        """Build every stale solution of ``pairs`` with one ninja run; see :mod:`fibuild.compile.batch`."""
        from fibuild.compile.batch import build_many  # deferred: ninja plumbing, off the warm load path

        return build_many(self.settings, pairs, jobs=jobs, keep_going=keep_going, retry_failed=retry_failed,
                          reporter=reporter)

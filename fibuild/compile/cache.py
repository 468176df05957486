"""The build cache: memory -> committed directory -> build, in one template method.

``BuildCache.get_or_build`` is the only place that decides to build (DESIGN §4):

1. the memory dict (key -> LoadedKernel or the BuildError it raised), under a lock;
2. a committed ``meta.json`` -> load;
3. take the key's ``FileLock`` (an OS lock: released if the holder dies);
4. check the marker again (another process may have finished meanwhile);
5. a ``failed.json`` is re-raised unless ``retry_failed``; FIBUILD_DISABLE_BUILD -> raise;
6. build into the emptied directory (native: one ninja run; link to ``$out.tmp``, rename);
7. commit ``meta.json`` last (temp + ``os.replace``); a failure writes ``failed.json``;
8. record the build in the index (failures there only log); 9. load.

``load_committed(build_dir)`` is the fast path of ``fibuild.load``: it reads ``meta.json``
and loads the artifact, importing neither yaml, jsonschema, ninja nor diskcache.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from fibuild.compile import store
from fibuild.compile.loaded import LoadedKernel
from fibuild.errors import BuildError, CacheError

if TYPE_CHECKING:
    from fibuild.compile.builders import Builder
    from fibuild.config import Settings
    from fibuild.spec.model import Definition, Solution

log = logging.getLogger("fibuild.compile")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_committed(build_dir: Path | str) -> Callable:
    """The raw entry point of the committed build in ``build_dir``, from its ``meta.json`` alone.

    Raises BuildError when the directory holds no valid commit marker. Cost: one small
    JSON read plus the load itself (``dlopen`` for native builds, an import otherwise).
    """
    directory = Path(build_dir)
    meta = store.read_meta(directory)
    if meta is None:
        raise BuildError(f"{directory} holds no committed build (meta.json missing or corrupt)",
                         build_dir=directory)
    from fibuild.compile.builders.loading import load_entry

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
        from fibuild.compile import keys

        return keys.key_inputs(defn, sol, self.settings)

    def key(self, defn: Definition, sol: Solution) -> str:
        from fibuild.compile import keys

        return keys.build_key(defn, sol, self.settings)

    def build_dir(self, sol: Solution, key: str) -> Path:
        return store.build_dir(self.cache_dir, key, sol.qualified_name)

    # -- the template method -----------------------------------------------------------
    def get_or_build(self, defn: Definition, sol: Solution, *, retry_failed: bool = False) -> LoadedKernel:
        """The loaded kernel of ``sol``, building it first if no committed build exists.

        Raises BuildError (unknown language, unreadable source, builder unavailable,
        compile or load failure, or FIBUILD_DISABLE_BUILD on a miss); the error is
        remembered for this key in this instance. Cost on a memory hit: one key
        computation (reads and hashes the sources); on a disk hit: plus the load.
        """
        from fibuild.compile import keys

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
        from fibuild.compile.builders import get_builder

        directory = self.build_dir(sol, key)
        meta = store.read_meta(directory, key)
        if meta is None:
            builder = get_builder(sol.language)
            with store.key_lock(self.cache_dir, key):
                meta = store.read_meta(directory, key)
                if meta is None:
                    meta = self._build_locked(defn, sol, key, inputs, directory, builder, retry_failed)
        return self._load(defn, sol, key, directory, meta)

    def _build_locked(self, defn, sol, key, inputs, directory: Path, builder: Builder,
                      retry_failed: bool) -> dict[str, Any]:
        """Steps 5-8 for one solution; the caller holds the key's lock."""
        failed = store.read_failed(directory)
        if failed and not retry_failed:
            raise failed_error(sol, directory, failed)
        if self.settings.disable_build:
            raise BuildError(f"{sol.qualified_name}: not built and FIBUILD_DISABLE_BUILD=1",
                             solution=sol.qualified_name, build_dir=directory)
        reason = builder.unavailable_reason(self.settings)
        if reason:
            raise BuildError(f"{sol.qualified_name}: unavailable: {reason}", solution=sol.qualified_name)
        from fibuild.compile.batch import run_native  # ninja plumbing; not needed on load paths

        store.reset_dir(directory, key)
        start = time.perf_counter()
        try:
            plan = builder.prepare(defn, sol, self.settings, directory)
            if plan.ninja_file is not None:
                result = run_native(directory, [plan.ninja_file], self.settings, jobs=self.settings.max_jobs)
                (directory / store.LOG).write_text(result.output + "\n")
                if not result.ok or not (directory / plan.artifact).is_file():
                    raise BuildError(f"{sol.qualified_name}: build failed (ninja exit {result.returncode})",
                                     solution=sol.qualified_name, build_dir=directory,
                                     log_tail=store.log_tail(result.output))
        except BuildError as exc:
            record_failure(directory, sol, key, exc)
            raise
        meta = commit_meta(defn, sol, key, inputs, builder, plan, time.perf_counter() - start)
        store.commit(directory, meta)
        self._index_record(key, directory, meta, None)
        return meta

    def _load(self, defn, sol, key, directory, meta) -> LoadedKernel:
        from fibuild.compile.builders import get_builder
        from fibuild.spec.calling import solution_caller

        entry = get_builder(meta["language"]).load(directory, meta)

        return LoadedKernel(definition=defn, solution=sol, build_key=key, build_dir=directory,
                            entry=entry, call=solution_caller(defn, sol, entry), meta=meta)

    def _index_record(self, key: str, directory: Path, meta, failed) -> None:
        """Step 8: the index is derived data, so failing to update it only logs."""
        from fibuild.compile.index import Index, build_summary

        try:
            with Index(self.cache_dir) as index:
                index.record(key, build_summary(directory, meta, failed))
        except (CacheError, OSError) as exc:
            log.warning("could not update the build index: %s", exc)

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
        failed = store.read_failed(directory)
        return ("failed", directory, failed) if failed else ("missing", directory, None)

    def build_many(self, pairs: Iterable[tuple[Definition, Solution]], *, jobs: int | None = None,
                   keep_going: bool = True, retry_failed: bool = False, reporter=None):
        """Build every stale solution of ``pairs`` with one ninja run; see :mod:`fibuild.compile.batch`."""
        from fibuild.compile.batch import build_many

        return build_many(self, pairs, jobs=jobs, keep_going=keep_going, retry_failed=retry_failed,
                          reporter=reporter)


def commit_meta(defn: Definition, sol: Solution, key: str, inputs: dict[str, Any], builder: Builder,
                plan, seconds: float) -> dict[str, Any]:
    """The ``meta.json`` of a finished build: everything ``load_committed`` needs, plus provenance."""
    from fibuild.compile import keys

    return {
        "key": key,
        "digest": keys.digest_of(inputs),
        "language": sol.language,
        "definition": defn.name,
        "solution": sol.qualified_name,
        "solution_name": sol.name,
        "artifact": plan.artifact,
        "entry_file": sol.entry_file,
        "entry_symbol": sol.entry_symbol,
        "destination_passing_style": sol.destination_passing_style,
        "builder": {"name": builder.name, "version": builder.version},
        "toolchain": inputs.get("toolchain", {}),
        "arch": inputs.get("arch", []),
        "built_at": now_iso(),
        "build_seconds": round(seconds, 3),
        **plan.meta,
    }


def record_failure(directory: Path, sol: Solution, key: str, exc: BuildError) -> None:
    """Write ``failed.json`` (error + log tail) so the failure is not retried by default."""
    try:
        store.write_failed(directory, {"key": key, "solution": sol.qualified_name, "language": sol.language,
                                       "error": str(exc).splitlines()[0], "log_tail": exc.log_tail,
                                       "failed_at": now_iso()})
    except OSError as err:
        log.warning("could not write %s: %s", directory / store.FAILED, err)


def failed_error(sol: Solution, directory: Path, failed: dict[str, Any]) -> BuildError:
    why = str(failed.get("error") or "see the log").removeprefix(f"{sol.qualified_name}: ")
    return BuildError(f"{sol.qualified_name}: failed before ({why}); "
                      "retry with --retry-failed", solution=sol.qualified_name, build_dir=directory,
                      log_tail=str(failed.get("log_tail") or ""))

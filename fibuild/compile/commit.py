"""Settling one build: its commit (``meta.json``), its failure record, its index entry.

The leaf of the build sequence (:func:`fibuild.compile.batch.build_items` calls it for
every solution, whether one or many are built): nothing here decides *whether* to build.
Step 7 of DESIGN §4 is :func:`commit_build` (checksums, then the marker, then the index);
a failure is :func:`record_failure`; a recorded failure read back is :func:`failed_error`.
The index is derived data, so failing to update it only logs.
"""
from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fibuild.compile import keys, store
from fibuild.compile.index import Index, build_summary  # diskcache: only once a build settles
from fibuild.errors import BuildError, CacheError

if TYPE_CHECKING:
    from fibuild.compile.builders import Builder, BuildPlan
    from fibuild.spec.model import Definition, Solution

log = logging.getLogger("fibuild.compile")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def meta_fields(defn: Definition, sol: Solution, key: str, inputs: dict[str, Any], builder: Builder,
                plan: BuildPlan, seconds: float) -> dict[str, Any]:
    """The ``meta.json`` of a finished build before its checksums: everything
    ``load_committed`` needs, plus provenance."""
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


def loaded_files(directory: Path, plan: BuildPlan) -> list[str]:
    """What a load reads besides the artifact: for Python-level builds (no ninja file)
    every copied source, since imports between a solution's files read them too."""
    if plan.ninja_file is not None:
        return []
    src = directory / "src"
    return sorted(str(Path(here, name).relative_to(directory))
                  for here, _dirs, names in os.walk(src) for name in names
                  if not name.endswith(".pyc"))


def commit_build(cache_dir: Path, directory: Path, meta: dict[str, Any], plan: BuildPlan, *,
                 index_wait_s: float | None = None) -> dict[str, Any]:
    """Commit a finished build (checksums, private modes, ``meta.json``) and index it
    (waiting at most ``index_wait_s`` for the index; None: as long as it takes).

    Returns the committed meta. Raises CacheError when the disk refuses the commit.
    """
    meta = store.commit(directory, meta, loaded_files(directory, plan))
    index_record(cache_dir, meta["key"], directory, meta, None, wait_s=index_wait_s)
    return meta


def record_failure(directory: Path, sol: Solution, key: str, exc: BuildError) -> None:
    """Write ``failed.json`` (error + log tail) so the failure is not retried by default."""
    try:
        store.write_failed(directory, {"key": key, "solution": sol.qualified_name, "language": sol.language,
                                       "error": str(exc).splitlines()[0], "log_tail": exc.log_tail,
                                       "failed_at": now_iso()})
    except OSError as err:
        log.warning("could not write %s: %s", directory / store.FAILED, err)


def failed_error(sol: Solution, directory: Path, failed: dict[str, Any]) -> BuildError:
    """The BuildError of a failure recorded earlier (``failed.json``)."""
    why = str(failed.get("error") or "see the log").removeprefix(f"{sol.qualified_name}: ")
    return BuildError(f"{sol.qualified_name}: failed before ({why}); "
                      "retry with --retry-failed", solution=sol.qualified_name, build_dir=directory,
                      log_tail=str(failed.get("log_tail") or ""))


def index_record(cache_dir: Path, key: str, directory: Path, meta, failed, *, wait_s: float | None = None) -> None:
    """Record a settled build in the index; an index that cannot be written (or is locked
    past ``wait_s``) only logs."""
    try:
        with Index(cache_dir, wait_s=wait_s) as index:
            index.record(key, build_summary(directory, meta, failed))
    except (CacheError, OSError) as exc:
        log.warning("could not update the build index: %s", exc)

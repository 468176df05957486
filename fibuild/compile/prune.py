"""Removing build directories from the cache (``fibuild gc``), never one whose key lock is held.

Named ``prune`` (not ``gc``) so it never shadows the standard library's ``gc`` module.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fibuild.compile import store
from fibuild.compile.index import Index
from fibuild.errors import BusyError, CacheError

# Heavy or optional dependencies, imported inside the functions that use them: filelock.

log = logging.getLogger("fibuild.compile")


@dataclass
class GcResult:
    removed: list[Path] = field(default_factory=list)
    locked: list[Path] = field(default_factory=list)
    kept: int = 0
    bytes: int = 0


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _age_reference(found: store.StoredBuild) -> float:
    """When the build was made: meta.json's mtime (the commit), else the directory's."""
    for path in (found.path / store.META, found.path):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return time.time()


def prune(cache_dir: Path, *, everything: bool = False, older_than: float | None = None,
          dry_run: bool = False) -> GcResult:
    """Remove build directories: failed, unfinished and damaged ones (failing verification,
    moved aside) always; committed ones when ``everything`` or when committed before the
    epoch time ``older_than``. A symbolic link in the store is unlinked, never followed, so
    nothing outside the cache is ever deleted.

    A directory whose key lock is held (a build or a gc in progress) is skipped, and each
    removal happens under that lock, so gc never races a build of the same key. Loaded
    modules keep working after their directory is removed (the mapping outlives the
    file); the next ``get_or_build`` rebuilds. Runs of killed batch builds are removed too.
    An index that cannot be updated (a full disk) only logs: it is rebuilt from the store.
    """

    result = GcResult()
    forgotten: list[str] = []
    for found in store.scan(cache_dir):
        if found.path.is_symlink():
            result.removed.append(found.path)
            if not dry_run:
                found.path.unlink()
            continue
        if found.meta and not everything and (older_than is None or _age_reference(found) >= older_than):
            result.kept += 1
            continue
        key = found.key
        if key is None:  # not made by fibuild (or its key file is gone): leave it alone
            result.kept += 1
            continue
        try:
            with store.holding(store.key_lock(cache_dir, key, timeout=0)):
                size = _size(found.path)
                if not dry_run:
                    store.remove_build(found.path)
                    forgotten.append(key)
                result.removed.append(found.path)
                result.bytes += size
        except BusyError:
            result.locked.append(found.path)
    runs = cache_dir / "runs"
    if runs.is_dir() and not runs.is_symlink() and not dry_run:
        for run in runs.iterdir():  # top files of batch builds; only a killed build leaves one
            try:
                if time.time() - run.stat().st_mtime > 86400:
                    shutil.rmtree(run, ignore_errors=True)
            except OSError:
                pass
    if forgotten and (cache_dir / "index").exists():
        try:
            with Index(cache_dir) as index:
                for key in forgotten:
                    index.forget(key)
        except CacheError as exc:
            log.warning("could not update the build index (it is rebuilt from the store): %s", exc)
    return result

"""The on-disk store of build directories, their commit markers and per-key locks.

Layout under ``$FIBUILD_CACHE_DIR``::

    builds/<key[:2]>/<slug>-<key[:20]>/   one build: src/, obj/, module.so, build.log
        meta.json                         commit marker, written last (temp + os.replace)
        failed.json                       a failed build: error and log tail
    locks/<key>.lock                      filelock.FileLock (an OS lock, outside build dirs)

Readers trust only directories whose ``meta.json`` parses and names the expected key; a
corrupt marker is a miss. A committed directory is never rebuilt in place; only an
uncommitted one (a killed or failed build) is cleared, and only under its key's lock.
This module imports only the standard library at module level: ``load_committed``
depends on it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("fibuild.compile")

META = "meta.json"
FAILED = "failed.json"
LOG = "build.log"
KEY_FILE = "key"  # the full key, written when a build starts (names the lock of an unfinished dir)
META_SCHEMA = 1
LOG_TAIL_LINES = 50
#: Fields every meta.json holds; load_committed needs nothing else.
META_FIELDS = ("schema", "key", "digest", "language", "definition", "solution", "artifact",
               "entry_file", "entry_symbol", "destination_passing_style", "built_at")


def builds_root(cache_dir: Path) -> Path:
    return cache_dir / "builds"


def slug(qualified_name: str) -> str:
    """A file-name-safe, bounded form of ``definition/solution``."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", qualified_name.replace("/", "--")).strip("-.")
    return text[:80] or "build"


def build_dir(cache_dir: Path, key: str, qualified_name: str) -> Path:
    """``builds/<key[:2]>/<slug>-<key[:20]>``: the one directory of ``key``."""
    return builds_root(cache_dir) / key[:2] / f"{slug(qualified_name)}-{key[:20]}"


def lock_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "locks" / f"{key}.lock"


def key_lock(cache_dir: Path, key: str, timeout: float = -1):
    """The per-key ``filelock.FileLock`` (not yet acquired). ``timeout=-1`` waits forever.

    Lock files are never deleted: removing one while another process waits on it would
    let two holders in.
    """
    from filelock import FileLock

    path = lock_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to a temp file beside ``path``, fsync, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def read_meta(directory: Path, key: str | None = None) -> dict[str, Any] | None:
    """The commit marker of ``directory``, or None if absent, corrupt, for another key, or
    its artifact is missing. Never raises for bad contents (a corrupt marker is a miss)."""
    meta = _read_json(directory / META)
    if meta is None:
        return None
    if not isinstance(meta, dict) or any(f not in meta for f in META_FIELDS) or meta.get("schema") != META_SCHEMA:
        log.warning("ignoring corrupt %s", directory / META)
        return None
    if key is not None and meta["key"] != key:
        log.warning("ignoring %s: it names key %s, expected %s", directory / META, meta["key"], key)
        return None
    if not isinstance(meta["artifact"], str) or not (directory / meta["artifact"]).is_file():
        log.warning("ignoring %s: artifact %r is missing", directory / META, meta.get("artifact"))
        return None
    return meta


def read_failed(directory: Path) -> dict[str, Any] | None:
    failed = _read_json(directory / FAILED)
    return failed if isinstance(failed, dict) else None


def commit(directory: Path, meta: dict[str, Any]) -> None:
    """Write the commit marker (last step of a build); drop a stale ``failed.json``."""
    meta = {"schema": META_SCHEMA, **meta}
    missing = [f for f in META_FIELDS if f not in meta]
    if missing:
        raise ValueError(f"meta.json fields missing: {missing}")
    try:
        (directory / FAILED).unlink()
    except FileNotFoundError:
        pass
    write_json_atomic(directory / META, meta)


def write_failed(directory: Path, info: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / FAILED, info)


def reset_dir(directory: Path, key: str) -> None:
    """Empty an *uncommitted* build directory before (re)building it; caller holds the key lock.

    A directory with a ``meta.json`` that does not verify (corrupt, truncated) may still
    be mapped by a process that loaded it earlier, so it is renamed aside (``gc``
    removes it later), never rewritten. Raises RuntimeError for a valid committed
    directory: those are never rebuilt in place.
    """
    if (directory / META).exists():
        if read_meta(directory, key) is not None:
            raise RuntimeError(f"refusing to rebuild committed {directory} in place")
        aside = directory.with_name(f"{directory.name}.stale-{os.getpid()}-{time.time_ns()}")
        os.rename(directory, aside)
        log.warning("moved %s with an invalid meta.json aside to %s", directory, aside)
    elif directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / KEY_FILE).write_text(key + "\n")


def remove_build(directory: Path) -> None:
    """Delete a build directory: the commit marker first, so a partly removed one is a miss."""
    try:
        (directory / META).unlink()
    except FileNotFoundError:
        pass
    shutil.rmtree(directory, ignore_errors=True)
    try:
        directory.parent.rmdir()  # the <key[:2]> fan-out folder, when now empty
    except OSError:
        pass


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class StoredBuild:
    """One directory found by :func:`scan`; ``key`` is None only for a directory fibuild did not make."""

    path: Path
    meta: dict[str, Any] | None
    failed: dict[str, Any] | None

    @property
    def key(self) -> str | None:
        for record in (self.meta, self.failed):
            if record and isinstance(record.get("key"), str):
                return record["key"]
        try:
            text = (self.path / KEY_FILE).read_text().strip()
        except OSError:
            return None
        return text if re.fullmatch(r"[0-9a-f]{64}", text) else None

    @property
    def status(self) -> str:
        return "committed" if self.meta else "failed" if self.failed else "incomplete"


def scan(cache_dir: Path) -> Iterator[StoredBuild]:
    """Every build directory in the store, committed or not. Cost: two directory listings
    plus one small JSON read per build."""
    root = builds_root(cache_dir)
    if not root.is_dir():
        return
    for fan in sorted(root.iterdir()):
        if not fan.is_dir():
            continue
        for directory in sorted(fan.iterdir()):
            if directory.is_dir():
                yield StoredBuild(directory, read_meta(directory), read_failed(directory))

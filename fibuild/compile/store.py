"""The on-disk store of build directories, their commit markers and per-key locks.

Layout under ``$FIBUILD_CACHE_DIR``::

    builds/<key[:2]>/<slug>-<key[:20]>/   one build: src/, obj/, module.so, build.log
        meta.json                         commit marker, written last (temp + os.replace)
        failed.json                       a failed build: error and log tail
    locks/<key>.lock                      filelock.FileLock (an OS lock, outside build dirs)

Readers trust only a *verified* directory (:func:`check_meta`): its ``meta.json`` parses,
names the expected key, hashes to the checksum it carries, and every file it lists (the
artifact; for Python-level builds the imported sources too) is a regular file inside the
directory with the recorded size and sha256. Anything else is a miss, with the reason
logged; the build path moves such a directory aside (``<dir>.stale-*``, removed by
``prune``) and builds again. A committed directory is never rebuilt in place; only an
uncommitted one (a killed or failed build) is cleared, and only under its key's lock.
Symbolic links are refused for build directories, their fan-out folders and every file
fibuild reads back. Directories are created 0700 and files end 0600 (0700 when
executable) whatever the umask, so no other local user can swap a library. OS errors on
the cache's write paths become :class:`~fibuild.errors.CacheError` naming the path.
This module imports only the standard library at module level: ``load_committed``
depends on it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from fibuild.compile.files import (  # noqa: F401
    checksums,
    file_checksum,
    fsync_path,
    open_regular,
    private_dir,
    safe_relative,
    tighten,
)
from fibuild.errors import BusyError, cache_error

# Heavy or optional dependencies, imported inside the functions that use them: filelock.

log = logging.getLogger("fibuild.compile")

META = "meta.json"
FAILED = "failed.json"
LOG = "build.log"
KEY_FILE = "key"  # the full key, written when a build starts (names the lock of an unfinished dir)
META_SCHEMA = 2  # 2: meta.json carries "files" (size + sha256 of what is loaded) and "meta_sha256"
STALE = ".stale-"  # suffix of a directory moved aside because it failed verification
#: Fields every meta.json holds; load_committed needs nothing else.
META_FIELDS = ("schema", "key", "digest", "language", "definition", "solution", "artifact",
               "entry_file", "entry_symbol", "destination_passing_style", "built_at", "files",
               "meta_sha256")


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


def meta_checksum(meta: dict[str, Any]) -> str:
    """The sha256 a meta.json carries of itself (every field but ``meta_sha256``)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


#: BusyError.reason of a build lock held past the wait
BUSY_BUILD_LOCK = "build lock held by another process"


# -- locks ------------------------------------------------------------------------------

def key_lock(cache_dir: Path, key: str, timeout: float = -1):
    """The per-key ``filelock.FileLock`` (not yet acquired). ``timeout=-1`` waits forever.

    Lock files are never deleted: removing one while another process waits on it would
    let two holders in. Raises CacheError when the locks folder cannot be made.
    """
    from filelock import FileLock

    path = lock_path(cache_dir, key)
    private_dir(path.parent, cache_dir)
    return FileLock(str(path), timeout=timeout, mode=0o600)


@contextmanager
def holding(lock, path: Path | None = None) -> Iterator[None]:
    """Hold ``lock`` (a FileLock) for the block; an OS error taking it is a CacheError.

    A lock made with a timeout that another process holds longer raises BusyError.
    """
    from filelock import Timeout

    where = path or Path(lock.lock_file)
    try:
        if os.path.islink(where):
            raise OSError(errno.ELOOP, "Too many levels of symbolic links", str(where))
        lock.acquire()
    except Timeout:
        raise BusyError(f"{where}: another process holds this build lock (a build in progress, or a "
                        f"stopped process); waited {lock.timeout:g} s", reason=BUSY_BUILD_LOCK) from None
    except OSError as exc:
        raise cache_error(exc, where, "take the build lock") from None
    try:
        yield
    finally:
        lock.release()


# -- reading ----------------------------------------------------------------------------

def _read_json(path: Path) -> tuple[Any, str | None]:
    """``(value, None)``; ``(None, None)`` when absent; ``(None, why)`` when unreadable."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None, None
    except NotADirectoryError:
        return None, None  # a parent is not a directory: nothing committed there
    except OSError as exc:
        return None, f"cannot open {path.name}: {exc.strerror or exc}"
    try:
        with os.fdopen(fd, "rb") as fh:
            return json.loads(fh.read()), None
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"unreadable {path.name}: {exc}"


def _entry_problem(directory: Path) -> str | None:
    """Why ``directory`` (a build dir) cannot be trusted as a place, or None."""
    for place in (directory, directory.parent):
        try:
            if stat.S_ISLNK(os.lstat(place).st_mode):
                return f"{place} is a symbolic link"
        except FileNotFoundError:
            return "absent"
        except OSError as exc:
            return f"cannot inspect {place}: {exc.strerror or exc}"
    return None


def check_meta(directory: Path, key: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """Verify the commit of ``directory``: ``(meta, None)`` when it holds a trusted build,
    ``(None, None)`` when it holds none, ``(None, why)`` when a ``meta.json`` is there but
    the build fails a check (corrupt or foreign marker, another key, a listed file missing,
    outside the directory, a link, or of another size or sha256). Never raises.

    Cost: one small JSON read plus hashing the listed files (the artifact).
    """
    problem = _entry_problem(directory)
    if problem:
        return None, None if problem == "absent" else problem
    meta, why = _read_json(directory / META)
    if meta is None:
        return None, why
    if not isinstance(meta, dict) or any(f not in meta for f in META_FIELDS):
        return None, "meta.json lacks fields (corrupt, or written by an older fibuild)"
    if meta.get("schema") != META_SCHEMA:
        return None, f"meta.json has schema {meta.get('schema')!r}, expected {META_SCHEMA}"
    if meta_checksum(meta) != meta["meta_sha256"]:
        return None, "meta.json does not match its own checksum (edited or damaged)"
    if key is not None and meta["key"] != key:
        return None, f"meta.json names key {str(meta['key'])[:16]}…, expected {key[:16]}…"
    files = meta["files"]
    named = (meta["artifact"], meta["entry_file"])
    if not isinstance(files, dict) or meta["artifact"] not in files or not all(map(safe_relative, named)):
        return None, f"meta.json names an artifact outside the build directory ({meta['artifact']!r})"
    for rel, recorded in files.items():
        if not safe_relative(rel):
            return None, f"meta.json lists {rel!r}, outside the build directory"
        try:
            actual = list(file_checksum(directory / rel))
        except OSError as exc:
            return None, f"{rel}: {exc.strerror or exc}"
        if actual != recorded:
            return None, (f"{rel} is damaged: {actual[0]} bytes, sha256 {actual[1][:12]}…; "
                          f"meta.json recorded {recorded[0] if isinstance(recorded, list) and recorded else '?'} bytes")
    return meta, None


def read_meta(directory: Path, key: str | None = None) -> dict[str, Any] | None:
    """The verified commit marker of ``directory`` (see :func:`check_meta`), or None.

    A marker that fails verification is logged as a warning and read as a miss.
    """
    meta, why = check_meta(directory, key)
    if why:
        log.warning("ignoring the build in %s: %s", directory, why)
    return meta


def read_failed(directory: Path, key: str | None = None) -> dict[str, Any] | None:
    """The ``failed.json`` of ``directory`` when it is fibuild's record of a failed build of
    ``key``; a malformed or foreign one is logged and ignored (the build is tried again)."""
    if _entry_problem(directory):
        return None
    failed, why = _read_json(directory / FAILED)
    if failed is None and why is None:
        return None
    if (not isinstance(failed, dict) or not isinstance(failed.get("error"), str)
            or not isinstance(failed.get("key"), str) or (key is not None and failed["key"] != key)):
        log.warning("ignoring %s: %s", directory / FAILED, why or "not a failure record of this build")
        return None
    return failed


# -- writing ----------------------------------------------------------------------------

def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to a temp file beside ``path`` (0600), fsync, ``os.replace``,
    then fsync the folder so the rename itself is durable. OSError passes through."""
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
    fsync_path(path.parent)


def commit(directory: Path, meta: dict[str, Any], files: Iterable[str] = ()) -> dict[str, Any]:
    """Commit a finished build (its last step): fsync ``files`` (relative to ``directory``;
    the artifact and whatever else is loaded), record their size and sha256, make the tree
    private, drop a stale ``failed.json``, then write ``meta.json``. Returns the meta.

    Raises CacheError for an OS error (full or read-only disk); nothing is committed then.
    """
    meta = {"schema": META_SCHEMA, **meta}
    try:
        meta["files"] = checksums(directory, [meta["artifact"], *files])
        meta["meta_sha256"] = meta_checksum(meta)
        missing = [f for f in META_FIELDS if f not in meta]
        if missing:
            raise ValueError(f"meta.json fields missing: {missing}")
        tighten(directory)
        (directory / FAILED).unlink(missing_ok=True)
        write_json_atomic(directory / META, meta)
    except OSError as exc:
        raise cache_error(exc, directory, "commit the build") from None
    return meta


def write_failed(directory: Path, info: dict[str, Any]) -> None:
    """Write ``failed.json``; OSError passes through (the caller only logs it)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / FAILED, info)
    tighten(directory)


def move_aside(directory: Path, why: str) -> Path:
    """Rename a build directory that failed verification to ``<dir>.stale-<pid>-<ns>``.

    Renamed, never rewritten: a process that loaded it earlier may still map its library.
    ``prune`` removes it later. Caller holds the key lock. Raises CacheError on OS errors.
    """
    aside = directory.with_name(f"{directory.name}{STALE}{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(directory, aside)
    except OSError as exc:
        raise cache_error(exc, directory, "move the damaged build aside") from None
    log.warning("the build in %s failed verification (%s): moved aside to %s and building it again",
                directory, why, aside.name)
    return aside


def reset_dir(directory: Path, key: str, cache_dir: Path | None = None) -> None:
    """Empty an *uncommitted* build directory before (re)building it; caller holds the key lock.

    A directory holding a ``meta.json`` that does not verify is moved aside
    (:func:`move_aside`), a symbolic link in its place is unlinked (never followed). Raises
    RuntimeError for a verified committed directory (those are never rebuilt in place) and
    CacheError for OS errors. ``cache_dir`` defaults to the store root above ``directory``.
    """
    cache_dir = directory.parents[2] if cache_dir is None else cache_dir
    meta, why = check_meta(directory, key)
    if meta is not None:
        raise RuntimeError(f"refusing to rebuild committed {directory} in place")
    try:
        if os.path.islink(directory):
            os.unlink(directory)
        elif why:
            move_aside(directory, why)
        elif directory.exists():
            shutil.rmtree(directory)
        private_dir(directory, cache_dir)
        (directory / KEY_FILE).write_text(key + "\n")
    except OSError as exc:
        raise cache_error(exc, directory, "prepare the build directory") from None


def remove_build(directory: Path) -> None:
    """Delete a build directory: the commit marker first, so a partly removed one is a miss.

    A symbolic link is unlinked, never followed (its target is not fibuild's).
    """
    if os.path.islink(directory):
        os.unlink(directory)
        return
    try:
        (directory / META).unlink()
    except FileNotFoundError:
        pass
    shutil.rmtree(directory, ignore_errors=True)
    try:
        directory.parent.rmdir()  # the <key[:2]> fan-out folder, when now empty
    except OSError:
        pass


@dataclass(frozen=True)
class StoredBuild:
    """One directory found by :func:`scan`; ``key`` is None only for a directory fibuild did not make.

    ``problem`` says why a directory holding a ``meta.json`` is not a trusted build.
    """

    path: Path
    meta: dict[str, Any] | None
    failed: dict[str, Any] | None
    problem: str | None = None

    @property
    def key(self) -> str | None:
        if self.path.is_symlink():
            return None
        try:
            text = (self.path / KEY_FILE).read_text().strip()
        except OSError:
            text = ""
        if re.fullmatch(r"[0-9a-f]{64}", text):
            return text
        for record in (self.meta, self.failed):
            if record and isinstance(record.get("key"), str) and re.fullmatch(r"[0-9a-f]{64}", record["key"]):
                return record["key"]
        return None

    @property
    def status(self) -> str:
        if self.meta:
            return "committed"
        return "damaged" if self.problem else "failed" if self.failed else "incomplete"


def scan(cache_dir: Path) -> Iterator[StoredBuild]:
    """Every build directory in the store, committed or not, each verified. Symbolic links
    (fan-out folders or build directories) are yielded as unverified entries so ``prune``
    can unlink them; nothing below a link is read. Cost: two directory listings plus one
    verification per build."""
    root = builds_root(cache_dir)
    if os.path.islink(root) or not root.is_dir():
        return
    for fan in sorted(root.iterdir()):
        if fan.is_symlink():
            yield StoredBuild(fan, None, None, "a symbolic link")
            continue
        if not fan.is_dir():
            continue
        for directory in sorted(fan.iterdir()):
            if directory.is_symlink():
                yield StoredBuild(directory, None, None, "a symbolic link")
            elif directory.is_dir():
                meta, why = check_meta(directory)
                yield StoredBuild(directory, meta, None if meta else read_failed(directory), why)

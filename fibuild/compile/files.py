"""File-level primitives of the build cache: private folders and modes, checksums, no links.

Standard library only (``load_committed``'s path imports it). Nothing here knows the
store's layout; :mod:`fibuild.compile.store` does.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from fibuild.errors import CacheError, cache_error

_HASH_CHUNK = 1 << 20


def private_dir(path: Path, root: Path) -> Path:
    """Create ``path`` (inside ``root``, the cache directory) and any missing parents down
    from ``root``, each mode 0700 whatever the umask; refuse symbolic links on the way.

    ``root`` itself is created 0700 when missing. Raises CacheError naming the path and
    what to do (a file in the way, a read-only or full file system, a link).
    """
    path, root = Path(path), Path(root)
    chain = [root] + [root.joinpath(*path.relative_to(root).parts[:i + 1])
                      for i in range(len(path.relative_to(root).parts))]
    for i, step in enumerate(chain):
        try:
            st = os.lstat(step)
        except FileNotFoundError:
            try:
                if i == 0:
                    step.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(step, 0o700)
                os.chmod(step, 0o700)  # mkdir's mode is masked by the umask
            except FileExistsError:
                pass  # made meanwhile by another process: checked below on the next call
            except OSError as exc:
                raise cache_error(exc, step, "create the directory") from None
            continue
        except OSError as exc:
            raise cache_error(exc, step, "inspect") from None
        if stat.S_ISLNK(st.st_mode) and i > 0:
            raise CacheError(f"{step}: is a symbolic link; fibuild refuses links inside its cache: "
                             "remove it (fibuild recreates the directory)")
        if not stat.S_ISDIR(os.stat(step).st_mode):
            raise cache_error(OSError(errno.ENOTDIR, "Not a directory"), step, "use the directory")
    return path


def tighten(directory: Path) -> None:
    """Make ``directory``'s tree private: folders 0700, files 0600 (0700 when executable).

    Symbolic links are left alone (never followed). Cost: one lstat and chmod per entry.
    """
    for here, dirs, files in os.walk(directory):
        os.chmod(here, 0o700)
        for name in files:
            path = os.path.join(here, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, 0o700 if st.st_mode & 0o111 else 0o600)


def open_regular(path: Path) -> int:
    """``os.open(path, O_RDONLY | O_NOFOLLOW)`` of a regular file; OSError (ELOOP for a link,
    EINVAL-like for anything not a regular file) otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def file_checksum(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of the regular file ``path`` (never through a link).

    Cost: reads the whole file (a tvm-ffi module of ~100 KB hashes in well under 1 ms).
    """
    fd = open_regular(path)
    try:
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = os.read(fd, _HASH_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            digest.update(chunk)
        return size, digest.hexdigest()
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a directory) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def safe_relative(value: Any) -> bool:
    """True for a relative POSIX path with no ``..`` part (the only form meta.json may name)."""
    if not isinstance(value, str) or not value or "\\" in value or "\x00" in value:
        return False
    pure = PurePosixPath(value)
    return not pure.is_absolute() and ".." not in pure.parts


def checksums(directory: Path, files: Iterable[str]) -> dict[str, list]:
    """``{relpath: [size, sha256]}`` of ``files`` under ``directory``, each fsynced first."""
    out = {}
    for rel in sorted(set(files)):
        fsync_path(directory / rel)
        size, digest = file_checksum(directory / rel)
        out[rel] = [size, digest]
    return out

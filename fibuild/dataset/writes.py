"""Where an import may write, and undoing an import that fails half-way.

Every path an import writes is built from names already checked against the manifest name
pattern; :func:`target` then refuses a path that leaves the workspace or passes through a
symbolic link or a file (a symlinked ``solutions/<def>`` would send the write elsewhere).
:class:`Journal` records what a commit created or appended, so a failure takes it all back.
Staging folders are ``<root>/.import-<pid>-<random>``; :func:`clean_stale_stages` removes
those whose process is gone.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import FibuildError

STAGE_PREFIX = ".import-"


def target(root: Path, *parts: str) -> Path:
    """``root/parts...``, refused (FibuildError) when a component below ``root`` is a symbolic
    link, a component before the last is not a folder, or the result resolves outside ``root``.
    Cost: one ``lstat`` per component."""
    path = root
    for i, part in enumerate(parts):
        if not part or part in (".", "..") or "/" in part or "\\" in part:
            raise FibuildError(f"{root}: {part!r} cannot name a folder or file of the workspace")
        path = path / part
        if path.is_symlink():
            raise FibuildError(f"{path} is a symbolic link; an import writes only into real folders of "
                               "the workspace (replace the link with a folder, or import elsewhere)")
        if i < len(parts) - 1 and path.exists() and not path.is_dir():
            raise FibuildError(f"{path} is a file where the import needs a folder")
    if not path.resolve().is_relative_to(root.resolve()):
        raise FibuildError(f"{path} resolves outside the workspace {root}")
    return path


class Journal:
    """What a commit wrote: files and folders it created, files it appended to (with their
    size before). :meth:`undo` removes and truncates them, newest first."""

    def __init__(self) -> None:
        self._created: list[Path] = []
        self._appended: list[tuple[Path, int]] = []

    def creating(self, path: Path) -> Path:
        """Note that ``path`` (and any missing folders above it) is about to be created."""
        missing = []
        parent = path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        self._created += reversed(missing)
        self._created.append(path)
        return path

    def appending(self, path: Path) -> Path:
        """Note that lines are about to be appended to ``path``."""
        if not path.exists():
            return self.creating(path)
        self._appended.append((path, path.stat().st_size))
        return path

    def undo(self) -> list[str]:
        """Take back everything noted; returns the paths it could not restore."""
        failed = []
        for path, size in reversed(self._appended):
            try:
                with open(path, "r+b") as fh:
                    fh.truncate(size)
            except OSError:
                failed.append(str(path))
        for path in reversed(self._created):
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError:
                failed.append(str(path))
        return failed


def new_stage(root: Path) -> Path:
    """A fresh staging folder ``<root>/.import-<pid>-<random>`` (after removing stale ones)."""
    clean_stale_stages(root)
    return Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=root))


def clean_stale_stages(root: Path) -> list[Path]:
    """Remove the staging folders under ``root`` whose importing process no longer runs
    (a killed import); returns them. Folders of running imports are kept."""
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(STAGE_PREFIX) or entry.is_symlink() or not entry.is_dir():
            continue
        pid = entry.name[len(STAGE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

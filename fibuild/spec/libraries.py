"""Shared source folders that solutions name (``libraries: [gemv]``).

A library ``<name>`` is the folder ``solutions/_lib/<name>/`` of the solution's workspace,
else ``lib/<name>/`` at the workspace root (both present is an error: the choice would be a
guess). Every regular file under it (hidden files and ``__pycache__`` left out) joins the
solution's sources at the same relative path, so ``from .gemv import matmul_nt`` works in
the build copy as it did when the file sat beside ``kernel.py``. The solution's digest and
build key hash this *effective* file set (paths and contents), whether a file came from the
solution's folder or a library: folding identical copies into a library keeps their
digests, and editing a library changes exactly the digests of its users.

Nothing here imports or runs a file; a file reached through a symlink that leaves its
library folder is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Folder names searched, relative to the solutions folder and to the workspace root.
LIBRARY_DIRS = ("solutions/_lib", "lib")
_SKIP_DIRS = ("__pycache__",)


def library_roots(workspace_root: Path) -> tuple[Path, ...]:
    """The folders that hold libraries, in lookup order (they need not exist)."""
    return tuple(Path(workspace_root) / d for d in LIBRARY_DIRS)


def workspace_root_of(solution_dir: Path) -> Path:
    """The workspace root of a solution at ``<root>/solutions/<definition>/<name>/``."""
    return Path(solution_dir).parent.parent.parent


def find_library(workspace_root: Path, name: str) -> tuple[Path | None, str | None]:
    """``(folder, None)`` for library ``name``, or ``(None, why)`` when it is missing or ambiguous."""
    found = [root / name for root in library_roots(workspace_root) if (root / name).is_dir()]
    if len(found) == 1:
        return found[0], None
    places = " and ".join(f"{d}/{name}/" for d in LIBRARY_DIRS)
    if not found:
        return None, f"library {name!r} not found: looked for {places} in {workspace_root}"
    return None, f"library {name!r} is ambiguous: both {places} exist in {workspace_root}"


def library_files(folder: Path) -> list[tuple[str, Path]]:
    """``[(relpath, path)]`` of every file under ``folder``, sorted by relpath.

    Raises ValueError naming a file that is a link leaving ``folder`` or not a regular file.
    """
    folder = Path(folder)
    top = folder.resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if not path.resolve().is_relative_to(top) or not path.is_file():
                raise ValueError(f"library file {path} is not a regular file inside {folder}")
            out.append((path.relative_to(folder).as_posix(), path))
    return sorted(out)


def resolve_libraries(solution_dir: Path, names: list[str] | tuple[str, ...],
                      own_sources: list[str] | tuple[str, ...]) -> tuple[list[tuple[str, Path]], list[tuple[int, str]]]:
    """The library files of a solution in ``solution_dir`` naming ``names``.

    Returns ``(files, problems)``: ``files`` as ``[(relpath, path)]`` in the order of
    ``names``, then of relpath; ``problems`` as ``[(index in names, message)]`` for a missing
    or ambiguous library, an empty one, a bad file, or a relpath that a source or another
    library already provides (two files at one path of the build).
    """
    root = workspace_root_of(solution_dir)
    files: list[tuple[str, Path]] = []
    problems: list[tuple[int, str]] = []
    taken = {rel: "the solution's own sources" for rel in own_sources}
    for i, name in enumerate(names):
        folder, why = find_library(root, name)
        if folder is None:
            problems.append((i, why))
            continue
        try:
            found = library_files(folder)
        except ValueError as exc:
            problems.append((i, str(exc)))
            continue
        if not found:
            problems.append((i, f"library {name!r} ({folder}) holds no files"))
        for rel, path in found:
            if rel in taken:
                problems.append((i, f"library {name!r} file {rel!r} clashes with {taken[rel]}"))
                continue
            taken[rel] = f"library {name!r}"
            files.append((rel, path))
    return files, problems

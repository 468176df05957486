"""ApplyTables cached as files under the cache directory, keyed by a digest of everything
they depend on.

The key hashes the size and ``mtime_ns`` of the definition's manifest, of every file under
``solutions/<definition>/``, of every library file (``solutions/_lib/``, ``lib/``: any
solution may name any library) and of its registry files, with the device slug, whether that
device is this machine, the fibuild version and the toolchain settings, and the installed
environment the table's build keys and availability come from: the ``mtime_ns`` of each
``sys.path`` folder but the first (installing, upgrading or removing a package such as
tvm-ffi, Triton or FlashInfer adds or removes entries there) and the size and ``mtime_ns`` of
the host compiler and of ``nvcc``. A hit costs a few ``stat`` calls and one file read: no
YAML, no schema, no registry parse, no source hashing, no package metadata. Any edit, new
record, new solution or package change is a miss; stale entries are never read again (a
table cached before a tvm-ffi upgrade would load a build made against the old one).
The cached value holds the definition's raw manifest too, so the fast path rebuilds the
Definition with ``definition_from_dict``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from fibuild import __version__
from fibuild.compile.files import open_regular, private_dir
from fibuild.config import Settings
from fibuild.errors import CacheError
from fibuild.spec.libraries import library_roots
from fibuild.spec.manifest import definition_from_dict, solution_from_dict
from fibuild.spec.model import Definition

from .collect import collect_table, definition_file
from .table import ApplyTable

log = logging.getLogger("fibuild.runtime")

FORMAT = 8  # bump when the cached JSON layout or meaning changes (4: chain choices; 5: a file, no
# build_dir; 6: full stats, host times, baseline, borrowed; 7: host intervals span the solution's keys;
# 8: and reach the table's host slowdown)


def _stat_files(folder: Path, root: Path, out: list) -> None:
    """Append ``(relpath, size, mtime_ns)`` of every non-hidden file under ``folder``."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(".lock"):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # vanished between listing and stat: the next key will differ anyway
            out.append((str(root), os.path.relpath(path, root), st.st_size, st.st_mtime_ns))


def _stat(path: str) -> list | None:
    """``[size, mtime_ns]`` of ``path`` (links followed), or None when it cannot be read."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns]


def environment_stat(settings: Settings) -> dict[str, Any]:
    """What the installed environment looks like, by ``stat`` only (see the module docstring):
    the import folders after ``sys.path[0]`` (the script's folder, not an installation), the
    host compiler on PATH and ``$CUDA_HOME/bin/nvcc``."""
    compiler = shutil.which("c++")
    return {"path": [[entry, _stat(entry)] for entry in sys.path[1:]],
            "cxx": [compiler, _stat(compiler)] if compiler else None,
            # toolchain.nvcc_path's file; that module (subprocess probes) stays off the warm path
            "nvcc": _stat(str(settings.cuda_home / "bin" / "nvcc"))}


def input_digest(root: Path | Sequence[Path], name: str, device: str, here: bool, settings: Settings) -> str:
    """sha256 over the table's inputs (see the module docstring); ``root`` is a workspace
    root or its layers (``Workspace.layers``). Cost: one ``stat`` per file."""
    roots = [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]
    files: list = []
    for layer in roots:
        for path in sorted((layer / "defs").glob(f"*/{name}.y*ml")):
            st = path.stat()
            files.append((str(layer), os.path.relpath(path, layer), st.st_size, st.st_mtime_ns))
        _stat_files(layer / "solutions" / name, layer, files)
        for folder in library_roots(layer):
            _stat_files(folder, layer, files)
        _stat_files(layer / "registry" / name, layer, files)
    payload = {
        "format": FORMAT, "fibuild": __version__, "python": list(sys.version_info[:2]),
        "root": [str(r) for r in roots], "definition": name, "device": device, "here": here,
        "cuda_home": str(settings.cuda_home), "environment": environment_stat(settings),
        "arch": list(settings.cuda_arch_list), "cache_dir": str(settings.cache_dir),
        "build_env": [list(pair) for pair in settings.build_env],
        "pdl": settings.pdl,  # chain choices count only where made with the same launch mode
        "files": files,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


#: Folder of the cached tables under the cache directory: one JSON file per input digest,
#: beside the builds rather than inside compile's build index (what a table holds is the
#: runtime's, and a hit reads one small file).
TABLES_DIR = "apply-tables"


def table_file(settings: Settings, digest: str) -> Path:
    """Where the table of input digest ``digest`` is cached."""
    return Path(settings.cache_dir) / TABLES_DIR / f"{digest}.json"


def read_cached(settings: Settings, digest: str) -> tuple[Definition, ApplyTable] | None:
    """The cached (Definition, ApplyTable) under ``digest``, or None.

    A missing file is a miss; an unreadable, linked or malformed one is a miss that is logged.
    """
    path = table_file(settings, digest)
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignoring cached apply table %s: %s", path, exc)
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            value = json.loads(handle.read())
        defn = definition_from_dict(value["definition"], value["definition_path"])
        return defn, ApplyTable.from_json(value["table"], solution_from_dict)
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("ignoring malformed cached apply table %s: %s", path, exc)
        return None


def write_cached(settings: Settings, digest: str, defn: Definition, table: ApplyTable) -> None:
    """Store the table under ``digest`` (temp file, then ``os.replace``: readers never see a
    torn file); failures are logged, never raised (it is a cache)."""
    value: dict[str, Any] = {
        "definition": dict(defn.raw),
        "definition_path": str(defn.path) if defn.path else None,
        "table": table.to_json(),
    }
    path = table_file(settings, digest)
    try:
        folder = private_dir(path.parent, Path(settings.cache_dir))
        text = json.dumps(value, ensure_ascii=False)
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=f".{digest[:12]}-", suffix=".tmp",
                                         delete=False, encoding="utf-8") as handle:
            handle.write(text)
        os.replace(handle.name, path)
    except (CacheError, OSError, TypeError, ValueError) as exc:
        log.warning("could not cache the apply table of %s: %s", defn.name, exc)


def load_table(workspace, settings: Settings, name: str, device: str, *,
               here: bool) -> tuple[Definition, ApplyTable, str]:
    """``(definition, table, digest)`` for ``name`` on ``device``: cached, else collected
    from the workspace and cached.

    Raises FibuildError for an unknown definition, ManifestError(s) for invalid manifests
    (only on a miss: a hit never parses them). Cost on a hit: a few stats + one index read.
    """
    if all(definition_file(layer, name) is None for layer in workspace.layers):
        workspace.definition(name)  # raises the unknown-name error with suggestions
    digest = input_digest(workspace.layers, name, device, here, settings)
    hit = read_cached(settings, digest)
    if hit is not None:
        return hit[0], hit[1], digest
    defn = workspace.definition(name)
    table = collect_table(workspace, settings, defn, device, here=here)
    write_cached(settings, digest, defn, table)
    return defn, table, digest


#: A temporary table file older than this (seconds) is an interrupted write: gc removes it.
STALE_TEMP_S = 3600.0


def prune_tables(settings: Settings, *, everything: bool = False, older_than: float | None = None,
                 dry_run: bool = False) -> tuple[list[Path], int, int]:
    """Remove cached apply tables (``fibuild gc``): ``(removed, bytes, kept)``.

    Interrupted writes (temporary files older than an hour) always go; tables when
    ``everything``, or when written before the epoch time ``older_than``. A table is a cache:
    the next load of its definition computes it again. Links are unlinked, never followed.
    """
    folder = Path(settings.cache_dir) / TABLES_DIR
    removed: list[Path] = []
    size = kept = 0
    try:
        entries = sorted(folder.iterdir())
    except OSError:  # no folder yet (or unreadable): nothing cached
        return removed, size, kept
    now = time.time()
    for path in entries:
        try:
            st = path.lstat()
        except OSError:
            continue
        temp = path.name.startswith(".") and path.name.endswith(".tmp")
        if temp:
            drop = now - st.st_mtime > STALE_TEMP_S
        else:
            drop = everything or (older_than is not None and st.st_mtime < older_than)
        if not drop or not (temp or path.suffix == ".json" or path.is_symlink()):
            kept += 1
            continue
        removed.append(path)
        size += st.st_size
        if not dry_run:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
    return removed, size, kept

"""Workspace bundles: the files one farm task needs, as JSON, and their unpacking on a worker.

A farm worker may be on another machine with no view of the driver's workspace. The driver
packs what one (definition, solution) needs — the definition manifest, the solution's folder,
the files of the libraries it names and the safetensors files its workloads read — as
``{"digest", "files": {relpath: base64}}``; the worker unpacks it once into
``<cache>/farm/workspaces/<digest>`` (content-keyed, so tasks of the same pair share it and a
restarted worker finds it) and benchmarks from there. Build
keys hash contents, not paths, so what the worker builds there is what the driver would build.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from ...errors import BenchError

#: Files never packed: byte-compiled caches differ per interpreter and are rebuilt.
_SKIP_DIRS = {"__pycache__", ".git"}


def _roots(root) -> list[Path]:
    """A workspace root, or its layers (``Workspace.layers``: the user workspace over the
    shipped library), as resolved paths; a file's bundle path is relative to the first
    layer holding it."""
    return [Path(r).resolve() for r in (root if isinstance(root, (list, tuple)) else [root])]


def _relative(path: Path, root, what: str) -> str:
    """``path`` relative to the first of ``_roots(root)`` holding it; BenchError when none does."""
    roots = _roots(root)
    for folder in roots:
        try:
            return path.resolve().relative_to(folder).as_posix()
        except ValueError:
            continue
    raise BenchError(f"{what} {path} lies outside the workspace {roots[0]}; a farm task carries only "
                     "files of the workspace")


def _folder_files(folder: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def workload_files(root: Path, defn, workload) -> list[Path]:
    """The safetensors files ``workload`` reads that exist (absolute paths, as the driver
    sees them). A blob path is tried against the workload's folder and the workspace root,
    so the bundle holds it wherever the loader looks; a missing one is the loader's error."""
    base = (Path(workload.source).parent if workload.source and workload.source != "declared"
            else Path(defn.path).parent if defn.path is not None else Path.cwd())
    found = []
    for spec in workload.inputs.values():
        if spec.kind == "safetensors" and spec.path:
            candidates = {(base / spec.path).resolve(), *((r / spec.path).resolve() for r in _roots(root))}
            found += [p for p in candidates if p.is_file()]
    return sorted(set(found))


def pack(root, defn, sol, workloads: Iterable[Any]) -> dict[str, Any]:
    """The bundle of ``sol`` of ``defn`` and the files of ``workloads`` under ``root`` (a
    path, or a workspace's layers).

    Raises BenchError for a file outside ``root`` or one that cannot be read. Cost: reads
    every packed file once.
    """
    root = _roots(root)
    if defn.path is None or sol.path is None:
        raise BenchError(f"{sol.qualified_name}: a farm task needs manifests read from files")
    paths = {_relative(Path(defn.path), root, "definition manifest"): Path(defn.path)}
    for path in _folder_files(Path(sol.path)):
        paths[_relative(path, root, "solution file")] = path
    for _rel, path in sol.library_files:  # unpacked where the worker's workspace finds them again
        paths[_relative(path, root, "library file")] = path
    for workload in workloads:
        for path in workload_files(root, defn, workload):
            paths[_relative(path, root, f"workload {workload.uuid} file")] = path
    files: dict[str, str] = {}
    digest = hashlib.sha256()
    for rel in sorted(paths):
        try:
            data = paths[rel].read_bytes()
        except OSError as exc:
            raise BenchError(f"cannot read {paths[rel]} for a farm task: {exc}") from exc
        files[rel] = base64.b64encode(data).decode("ascii")
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return {"digest": digest.hexdigest(), "files": files}


def workload_source(root: Path, workload) -> str:
    """``workload.source`` relative to ``root`` (``declared`` and empty stay as they are)."""
    if not workload.source or workload.source == "declared":
        return workload.source
    return _relative(Path(workload.source), root, f"workloads file of {workload.uuid}")


def _safe_relpath(rel: str) -> Path:
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BenchError(f"farm bundle: refusing the path {rel!r} (absolute or outside the bundle)")
    return path


def unpack(bundle: Mapping[str, Any], cache_dir: Path) -> Path:
    """The workspace folder of ``bundle`` under ``cache_dir``, written once (atomically).

    Raises BenchError for a path that would leave the folder. Cost: one ``stat`` when the
    folder exists, else one write per file.
    """
    digest = str(bundle["digest"])
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BenchError(f"farm bundle: bad digest {digest!r}")
    target = Path(cache_dir) / "farm" / "workspaces" / digest
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=target.parent))
    try:
        for rel, text in bundle["files"].items():
            path = staging / _safe_relpath(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(text))
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not a concurrent unpack of the same bundle: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

"""Validation of a whole workspace, or of some of its files: every problem, one ManifestError
per bad file. ``ws`` is a :class:`fibuild.spec.workspace.Workspace` (passed in: this module sits
beneath it)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from fibuild.errors import FibuildError, ManifestError

from .manifest import load_definition, load_solution
from .model import Definition, Solution
from .variants import split_name
from .workspace_files import _NOT_A_MANIFEST, _YAML, _duplicate_message


def validate_workspace(ws, paths: Iterable[str | Path] | None = None) -> list[ManifestError]:
    """Every problem of the workspace (or of ``paths``: files or folders), one
    ManifestError per bad file, sorted by file. Never raises ManifestError."""
    if paths is None:
        defs, errors = ws._load_definitions()
        names = ws._definition_names() | set(defs)
        solutions, problems = ws._load_solutions(None, names)
        errors += problems + _baseline_problems(defs, solutions)
        for path in ws.workload_files():
            errors += _check_workloads_file(ws, path, defs)
        return sorted(errors, key=lambda e: e.path)
    errors = []
    for path in ws.manifest_files(paths):
        errors += _check_file(ws, path)
    return sorted(errors, key=lambda e: e.path)


def _check_file(ws, path: Path) -> list[ManifestError]:
    try:
        if path.name == "workloads.jsonl":
            return _check_workloads_file(ws, path, None)
        if path.name == "solution.yaml":
            load_solution(path, ws._definition_names())
        elif path.suffix in _YAML:
            defn = load_definition(path)
            twins = [p for p in ws.defs_dir.glob(f"*/{defn.name}.*")
                     if p.suffix in _YAML and p.resolve() != path]
            if twins and path.parent.parent == ws.defs_dir:
                raise ManifestError(path, [("/name", _duplicate_message(
                    "definition", defn.name, twins[0], ws.root))])
        else:
            raise ManifestError(path, [("/", _NOT_A_MANIFEST)])
    except ManifestError as exc:
        return [exc]
    return []


def _check_workloads_file(ws, path: Path, defs: dict[str, Definition] | None) -> list[ManifestError]:
    """Problems of one workloads.jsonl; its definition is the parent folder's name."""
    name = path.parent.name
    try:
        defn = defs[name] if defs is not None and name in defs else ws.definition(name)
    except ManifestError:
        if defs is not None:
            return []  # the definition's own error is reported already
        return [ManifestError(path, [("/", f"cannot check: definition {name!r} is invalid "
                                      "(validate its file)")])]
    except FibuildError:
        return [ManifestError(path, [("/", f"no definition {name!r} in the workspace for "
                                      f"registry/{name}/workloads.jsonl")])]
    try:
        ws._recorded_workloads(defn)
    except ManifestError as exc:
        return [exc]
    return []


def _baseline_problems(defs: dict[str, Definition], solutions: list[Solution]) -> list[ManifestError]:
    """A definition whose ``baseline`` names none of its solutions (a typo, or a copy without
    them) would run its reference by default: one error per such definition. Naming some
    missing ones is fine (resolution takes the first that exists and can run)."""
    have: dict[str, set[str]] = {}
    for sol in solutions:  # a grid's variants count under their solution's name
        have.setdefault(sol.definition, set()).add(split_name(sol.name)[0])
    errors = []
    for name, defn in sorted(defs.items()):
        mine = have.get(name, set())
        if defn.baseline and not mine & set(defn.baseline) and defn.path is not None:
            listed = ", ".join(sorted(mine)) or "none"
            errors.append(ManifestError(defn.path, [("/baseline", f"names no solution of {name}: "
                                                     f"{', '.join(defn.baseline)} (its solutions: {listed})")]))
    return errors

"""``fibuild import flashinfer-trace DIR``: a flashinfer-trace directory into a workspace.

Dataset layout: ``definitions/<op_type>/<name>.json``, ``solutions/**/<name>.json`` (inline
sources), ``workloads/<op_type>/<definition>.jsonl``, blobs under the dataset root
(``blob/workloads/...``), ``traces/**/*.jsonl``. It becomes ``defs/<op_type>/<name>.yaml``,
``solutions/<definition>/<name>/``, ``registry/<definition>/workloads.jsonl`` with blobs in
``registry/<definition>/blobs/`` (paths relative to the workspace root), and evaluations in
``registry/<definition>/<device>.jsonl`` (device: the slugified ``environment.hardware``).

All or nothing for bad input: every name is checked against the manifest name pattern
before a path is built from it, every file is read and checked (finite numbers included),
and manifests are written to a staging folder and loaded by fibuild's own loaders, before
anything enters the workspace. Every workspace path is then checked (no symbolic link, no
way out of the workspace, :mod:`fibuild.dataset.writes`) before the first write; blobs,
workloads and evaluations go in first and manifests last, and a failure takes back all of
it. A malformed file raises DatasetError naming the file and line; what fibuild cannot
express is skipped and listed in the report. A workload whose blob is missing (a checkout
without its LFS files) is skipped and listed, and the report is marked incomplete (the CLI
exits 1). Re-importing the same data writes nothing (items already present are counted).
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable

from ..compile.keys import solution_digest
from ..errors import DatasetError, FibuildError, ManifestError
from ..registry import Registry, evaluation_to_dict
from ..spec.documents import dump_yaml
from ..spec.manifest import load_definition, load_solution
from ..spec.schema import validate
from ..spec.workspace import Workspace
from . import trace_evaluations as te
from . import trace_mapping as tm
from .files import copy_file, line_of, read_json, same_bytes, write_text
from .report import DatasetReport
from .trace_workloads import PendingDefinition, Progress, count_dependent, dataset_lines, read_workloads
from .writes import Journal, new_stage, target


def import_flashinfer_trace(workspace: Workspace, source: str | Path, *, definitions: Iterable[str] = (),
                            op_type: str | None = None, progress: Progress | None = None) -> DatasetReport:
    """Import the dataset at ``source`` into ``workspace``; returns what was written and skipped.

    ``definitions`` / ``op_type`` restrict the import (an unknown one is an error).
    Raises DatasetError (file and line) for malformed dataset files and FibuildError for a
    directory that is not a dataset. Cost: reads every selected file once; blobs are
    copied, their headers read.
    """
    root = Path(source).expanduser().resolve()
    if not (root / "definitions").is_dir():
        raise DatasetError(root, 0, "not a flashinfer-trace directory (no definitions/ folder)")
    say = progress or (lambda _line: None)
    report = DatasetReport()
    defs = _read_definitions(root, workspace, set(definitions), op_type, report, say)
    stage = new_stage(workspace.root)
    try:
        _stage_definitions(defs, stage, report)
        _read_solutions(root, defs, stage, report, say)
        read_workloads(root, workspace, defs, stage, report, say)
        _read_traces(root, workspace, defs, report, say)
        _commit(workspace, root, defs, stage, report)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


# --- definitions -------------------------------------------------------------------------

def _read_definitions(root: Path, workspace: Workspace, wanted: set[str], op_type: str | None,
                      report: DatasetReport, say: Progress) -> dict[str, PendingDefinition]:
    files = sorted((root / "definitions").rglob("*.json"))
    op_types = sorted({p.parent.name for p in files})
    if op_type is not None and op_type not in op_types:
        raise DatasetError(root / "definitions", 0, f"unknown op type {op_type!r} "
                           f"(the dataset has {', '.join(op_types) or 'none'})")
    defs: dict[str, PendingDefinition] = {}
    seen: dict[str, Path] = {}
    for path in files:
        data, text = read_json(path)
        try:
            manifest, notes = tm.definition_from_dataset(data)
        except ValueError as exc:
            raise DatasetError(path, _line_for(text, exc), str(exc)) from None
        except tm.Unsupported as exc:
            name = data.get("name", path.stem) if isinstance(data, dict) else path.stem
            seen[name] = path
            if _selected(name, path.parent.name, wanted, op_type):
                report.skip("definition", name, str(exc), str(path))
            continue
        name = manifest["name"]
        if path.parent != root / "definitions" and path.parent.name != manifest["op_type"]:
            raise DatasetError(path, line_of(text, "op_type"), f"op_type {manifest['op_type']!r} does not "
                               f"match its folder definitions/{path.parent.name}/ (unknown op type there)")
        if name in seen:
            raise DatasetError(path, line_of(text, "name"), f"definition {name!r} is also in {seen[name]}")
        seen[name] = path
        if not _selected(name, manifest["op_type"], wanted, op_type):
            continue
        say(f"definition {name}")
        report.notes += notes
        defs[name] = PendingDefinition(manifest, path)
    missing = sorted(wanted - set(seen))
    if missing:
        raise FibuildError(f"no definition {', '.join(missing)} in {root / 'definitions'}")
    existing = _existing_definitions(workspace)
    for name, item in list(defs.items()):
        old = existing.get(name)
        if old is not None:
            if dict(old.raw) != item.manifest:
                report.skip("definition", name, f"the workspace's {old.path} differs; remove it or "
                            "import into another workspace", str(item.source))
                del defs[name]
            else:
                item.model, item.new = old, False
                report.unchanged["definition"] += 1
    return defs


def _selected(name: str, op_type: str, wanted: set[str], only_op: str | None) -> bool:
    return (not wanted or name in wanted) and (only_op is None or op_type == only_op)


def _existing_definitions(workspace: Workspace) -> dict:
    out = {}
    for path in workspace.definition_files():
        try:
            defn = load_definition(path)
        except ManifestError:
            continue  # the workspace's own problem; `fibuild validate` reports it
        out[defn.name] = defn
    return out


def _line_for(text: str, exc: Exception) -> int:
    """The line of the first quoted key a message names, else 1."""
    for word in str(exc).replace('"', "'").split("'")[1::2]:
        line = line_of(text, word)  # a key
        if not line and json.dumps(word) in text:  # else a value
            line = text.count("\n", 0, text.index(json.dumps(word))) + 1
        if line:
            return line
    return 1


def _stage_definitions(defs: dict[str, PendingDefinition], stage: Path, report: DatasetReport) -> None:
    for name, item in list(defs.items()):
        if not item.new:
            continue
        path = target(stage, "defs", item.manifest["op_type"], f"{name}.yaml")
        write_text(path, dump_yaml(item.manifest))
        try:
            item.model = load_definition(path)
        except ManifestError as exc:
            report.skip("definition", name, "fibuild's loader rejects it: " +
                        "; ".join(f"{p}: {m}" for p, m in exc.problems), str(item.source))
            del defs[name]


# --- solutions ---------------------------------------------------------------------------

def _read_solutions(root: Path, defs: dict[str, PendingDefinition], stage: Path, report: DatasetReport,
                    say: Progress) -> None:
    names = set(defs)
    for path in sorted((root / "solutions").rglob("*.json")):
        data, text = read_json(path)
        try:
            manifest, files, notes = tm.solution_from_dataset(data)
        except ValueError as exc:
            raise DatasetError(path, _line_for(text, exc), str(exc)) from None
        except tm.Unsupported as exc:
            if isinstance(data, dict) and data.get("definition") in defs:
                report.skip("solution", f"{data['definition']}/{data.get('name')}", str(exc), str(path))
            elif isinstance(data, dict):
                count_dependent(report, "solution", str(data.get("definition")))
            continue
        item = defs.get(manifest["definition"])
        if item is None:
            count_dependent(report, "solution", manifest["definition"])
            continue
        name = manifest["name"]
        if name in item.solutions:
            raise DatasetError(path, line_of(text, "name"), f"solution {name!r} of {manifest['definition']} "
                               "appears twice in the dataset")
        say(f"solution {manifest['definition']}/{name}")
        folder = target(stage, "solutions", manifest["definition"], name)
        for rel, content in files.items():
            write_text(target(folder, *rel.split("/")), content)
        write_text(folder / "solution.yaml", dump_yaml(manifest))
        try:
            sol = load_solution(folder / "solution.yaml", names)
        except ManifestError as exc:
            report.skip("solution", f"{manifest['definition']}/{name}", "fibuild's loader rejects it: " +
                        "; ".join(f"{p}: {m}" for p, m in exc.problems), str(path))
            continue
        report.notes += notes
        item.solutions[name] = (manifest, folder, solution_digest(item.model, sol))


# --- workloads ---------------------------------------------------------------------------

# --- traces ------------------------------------------------------------------------------

def _read_traces(root: Path, workspace: Workspace, defs: dict[str, PendingDefinition], report: DatasetReport,
                 say: Progress) -> None:
    registry = Registry(workspace.registry_dir)
    present: dict[str, set] = {}
    for path, lineno, (name, workload, solution, evaluation) in dataset_lines(root, "traces", say):
        item = defs.get(name)
        if item is None:
            count_dependent(report, "evaluation", name)
            continue
        solution = tm.solution_name_from_dataset(name, solution)
        if solution not in item.solutions:
            report.skip("evaluation", f"{name}/{solution}/{workload['uuid']}",
                        f"solution {solution!r} is not imported", f"{path}:{lineno}")
            continue
        try:
            ev = te.evaluation_from_dataset(name, workload, solution, evaluation, item.solutions[solution][2])
        except ValueError as exc:
            raise DatasetError(path, lineno, str(exc)) from None
        record = evaluation_to_dict(ev)
        problems = validate("evaluation", record)
        if problems:
            raise DatasetError(path, lineno, "; ".join(f"{p}: {m}" for p, m in problems))
        try:
            json.dumps(record, allow_nan=False)
        except ValueError:
            raise DatasetError(path, lineno, "the evaluation holds a NaN or infinite number") from None
        if name not in present:
            present[name] = {_ev_key(e) for e in registry.read(name)}
        if _ev_key(ev) in present[name]:
            report.unchanged["evaluation"] += 1
            continue
        present[name].add(_ev_key(ev))
        item.evaluations.append(ev)


def _ev_key(ev) -> tuple:
    return (ev.device, ev.solution, ev.workload_uuid, ev.timestamp, ev.status)


# --- commit ------------------------------------------------------------------------------

def _commit(workspace: Workspace, root: Path, defs: dict[str, PendingDefinition], stage: Path,
            report: DatasetReport) -> None:
    """Check every target path, then copy blobs, append workloads and evaluations, and move
    the staged manifests in last; on any failure take back what was written and raise."""
    ws = workspace.root
    registry_name, solutions_name, defs_name = (workspace.registry_dir.name, workspace.solutions_dir.name,
                                                workspace.defs_dir.name)
    blobs, workloads, evaluations, solutions, definitions = [], [], [], [], []
    written: Counter = Counter()
    for name, item in defs.items():
        for rel, blob_name in item.blobs.items():
            dest = target(ws, registry_name, name, "blobs", blob_name)
            if dest.exists():
                report.unchanged["blob"] += 1
            else:
                blobs.append((root / rel, dest))
        if item.workloads:
            workloads.append((name, item.workloads, target(ws, registry_name, name, "workloads.jsonl")))
        for ev in item.evaluations:
            evaluations.append((ev, target(ws, registry_name, name, f"{ev.device}.jsonl")))
        for sol_name, (_manifest, folder, _) in item.solutions.items():
            dest = target(ws, solutions_name, name, sol_name)
            target(ws, solutions_name, name, f".{sol_name}.tmp")
            if not dest.exists():
                solutions.append((name, sol_name, folder, dest))
            elif _same_tree(folder, dest):
                report.unchanged["solution"] += 1
            else:
                report.skip("solution", f"{name}/{sol_name}", f"{dest} exists and differs; remove it "
                            "or import into another workspace")
        if item.new:
            op_type = item.manifest["op_type"]
            definitions.append((stage / "defs" / op_type / f"{name}.yaml",
                                target(ws, defs_name, op_type, f"{name}.yaml")))
    journal = Journal()
    registry = Registry(workspace.registry_dir)
    try:
        for src, dest in blobs:
            copy_file(src, journal.creating(dest))
            written["blob"] += 1
        for name, records, path in workloads:
            journal.appending(path)
            registry.append_workloads(name, records)
            written["workload"] += len(records)
        noted: set[Path] = set()
        for ev, path in evaluations:
            if path not in noted:
                journal.appending(path)
                noted.add(path)
            registry.append(ev)
            written["evaluation"] += 1
        for name, sol_name, folder, dest in solutions:
            tmp = journal.creating(dest.with_name(f".{sol_name}.tmp"))
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
            tmp.rename(journal.creating(dest))
            written["solution"] += 1
        for staged, dest in definitions:
            copy_file(staged, journal.creating(dest))
            written["definition"] += 1
    except (OSError, FibuildError) as exc:
        left = journal.undo()
        kept = f"; could not remove {', '.join(left)}" if left else "; nothing of it was kept"
        raise FibuildError(f"import failed while writing into {ws}: {exc}{kept}") from exc
    report.written.update(written)


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(same_bytes(a / f, b / f) for f in files_a)

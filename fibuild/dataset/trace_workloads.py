"""The workload lines of a flashinfer-trace import: fibuild workload records, their blobs and
their validation (the rest of the import is :mod:`fibuild.dataset.trace_import`).

A safetensors input keeps its tensor in the dataset's blob, copied under
``registry/<definition>/blobs/`` (renamed by content digest on a clash) and addressed
relative to the workspace root. A malformed line raises DatasetError naming file and line.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import DatasetError
from ..spec.workspace import Workspace
from . import trace_mapping as tm
from .checks import rejected_workloads
from .files import confined, iter_jsonl, lfs_pointer, read_json, relative_path, safetensors_header, same_bytes
from .report import DatasetReport

Progress = Callable[[str], None]


class MissingBlob(Exception):
    """A workload's blob is not in the dataset checkout; ``str(exc)`` says which and what to do."""


@dataclass
class PendingDefinition:
    """A dataset definition on its way in: its manifest, loaded model, and the solutions,
    workloads, blobs and evaluations gathered for it."""

    manifest: dict
    source: Path
    model: Any = None  # the loaded Definition
    new: bool = True
    solutions: dict = field(default_factory=dict)  # name -> (manifest, files, new, digest)
    workloads: list = field(default_factory=list)  # (record, where)
    blobs: dict = field(default_factory=dict)  # dataset blob path -> workspace blob name
    evaluations: list = field(default_factory=list)



def read_workloads(root: Path, workspace: Workspace, defs: dict[str, PendingDefinition], stage: Path,
                    report: DatasetReport, say: Progress) -> None:
    for path, lineno, (name, workload, _, _) in dataset_lines(root, "workloads", say):
        item = defs.get(name)
        if item is None:
            count_dependent(report, "workload", name)
            continue
        record = _workload_record(root, workspace, item, workload, path, lineno, report)
        if record is not None:
            item.workloads.append((record, f"{path}:{lineno}"))
    for item in defs.values():
        _validate_workloads(workspace, item, stage, report)


def _dataset_definitions(root: Path) -> dict[str, str]:
    """Definition name -> op type of every definition file (names read cheaply)."""
    out = {}
    for path in (root / "definitions").rglob("*.json"):
        data, _ = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            out[data["name"]] = str(data.get("op_type"))
    return out


def dataset_lines(root: Path, folder: str, say: Progress):
    """(path, line number, :func:`trace_mapping.workload_line` fields) of every JSONL line under
    ``root/folder`` ("workloads", or "traces", whose lines carry an evaluation), in file order.
    Raises DatasetError for a malformed line or an unknown definition (and, under workloads/,
    a folder that is not the definition's op type)."""
    known = _dataset_definitions(root)
    for path in sorted((root / folder).rglob("*.jsonl")):
        say(f"{folder} {path.relative_to(root)}")
        for lineno, data in iter_jsonl(path):
            try:
                fields = tm.workload_line(data, evaluated=folder == "traces")
            except ValueError as exc:
                raise DatasetError(path, lineno, str(exc)) from None
            _check_known(known, fields[0], path, lineno, root / folder if folder == "workloads" else None)
            yield path, lineno, fields


def _check_known(known: dict[str, str], name: str, path: Path, lineno: int, by_op_type: Path | None) -> None:
    """The line's definition exists; under ``by_op_type/<op_type>/`` the folder is its op type."""
    if name not in known:
        raise DatasetError(path, lineno, f"unknown definition {name!r} (no definitions/*/{name}.json)")
    if by_op_type is not None and path.parent.parent == by_op_type and path.parent.name != known[name]:
        raise DatasetError(path, lineno, f"definition {name!r} has op_type {known[name]!r}, not the "
                           f"folder's {path.parent.name!r} (unknown op type there)")


def count_dependent(report: DatasetReport, kind: str, definition: str) -> None:
    """Count an item left out with its definition (only definitions the user selected)."""
    if any(s.kind == "definition" and s.name == definition for s in report.skipped):
        report.dependents[(kind, definition)] += 1


def _workload_record(root: Path, workspace: Workspace, item: PendingDefinition, workload: dict, path: Path,
                     lineno: int, report: DatasetReport) -> dict | None:
    """The fibuild workload record of one dataset workload (blobs noted for copying)."""
    defn = item.model
    axes = {}
    for axis, value in workload["axes"].items():
        const = defn.axes.get(axis)
        if const is not None and const.kind == "const":
            if value != const.value:
                report.skip("workload", workload["uuid"], f"axis {axis}={value} contradicts the const "
                            f"{const.value}", f"{path}:{lineno}")
                return None
            continue
        axes[axis] = value
    inputs = {}
    for name, spec in workload.get("inputs", {}).items():
        if not isinstance(spec, dict) or spec.get("type") not in ("random", "scalar", "safetensors"):
            raise DatasetError(path, lineno, f"input {name!r}: {spec!r} is not a random, scalar or "
                               "safetensors input")
        if spec["type"] == "safetensors":
            try:
                spec = _blob_input(root, workspace, item, name, spec, path, lineno)
            except MissingBlob as exc:
                report.skip("workload", workload["uuid"], f"input {name!r}: {exc}", f"{path}:{lineno}")
                report.incomplete = True
                return None
        inputs[name] = dict(spec)
    return {"uuid": workload["uuid"], "axes": axes, "inputs": inputs}


def _blob_input(root: Path, workspace: Workspace, item: PendingDefinition, name: str, spec: dict, path: Path,
                lineno: int) -> dict:
    """Check a safetensors input's blob and choose its name under registry/<def>/blobs/."""
    try:
        rel = relative_path(spec.get("path"))
        blob = confined(root, rel)
    except ValueError as exc:
        raise DatasetError(path, lineno, f"input {name!r}: {exc}") from None
    key = spec.get("tensor_key")
    if not isinstance(key, str) or not key:
        raise DatasetError(path, lineno, f"input {name!r}: safetensors input without a tensor_key")
    if not blob.is_file():
        raise MissingBlob(f"blob {rel} is missing from {root} (a checkout without its blobs? fetch them, "
                          "e.g. git lfs pull, and import again)")
    if lfs_pointer(blob):
        raise MissingBlob(f"blob {rel} is a Git LFS pointer, not the data (run git lfs pull and import again)")
    header = safetensors_header(blob)
    if key not in header:
        raise DatasetError(path, lineno, f"input {name!r}: blob {rel} has no tensor {key!r} "
                           f"(has {', '.join(sorted(header)) or 'none'})")
    try:
        want = item.model.input(name).dtype
    except KeyError:
        want = header[key][0]  # an unknown input: fibuild's loader reports it
    if header[key][0] != want:
        raise DatasetError(path, lineno, f"input {name!r}: tensor {key!r} of {rel} is {header[key][0]}, "
                           f"the definition declares {want}")
    target = item.blobs.get(rel)
    if target is None:
        target = blob.name
        dest = workspace.registry_dir / item.manifest["name"] / "blobs" / target
        taken = set(item.blobs.values())
        if target in taken or (dest.exists() and not same_bytes(dest, blob)):
            digest = hashlib.sha256(blob.read_bytes()).hexdigest()[:12]
            target = f"{blob.stem}-{digest}{blob.suffix}"
        item.blobs[rel] = target
    return {"type": "safetensors", "path": f"{workspace.registry_dir.name}/{item.manifest['name']}/blobs/{target}",
            "tensor_key": key}


def _validate_workloads(workspace: Workspace, item: PendingDefinition, stage: Path, report: DatasetReport) -> None:
    """Drop workloads already in the workspace; the rest must pass fibuild's workloads loader."""
    present = set() if item.new else {w.uuid for w in workspace.workloads(item.model)}
    fresh = []
    for record, where in item.workloads:
        if record["uuid"] in present:
            report.unchanged["workload"] += 1
        else:
            present.add(record["uuid"])
            fresh.append((record, where))
    finite = []
    for record, where in fresh:
        try:
            json.dumps(record, allow_nan=False)
        except ValueError:
            report.skip("workload", record["uuid"], "holds a NaN or infinite number", where)
            continue
        finite.append((record, where))
    fresh = finite
    while fresh:
        rejected = rejected_workloads(stage, item.model, [r for r, _ in fresh])
        if not rejected:
            break
        for index in sorted(rejected, reverse=True):
            record, where = fresh.pop(index)
            report.skip("workload", record["uuid"], "fibuild's loader rejects it: " + "; ".join(rejected[index]), where)
    item.workloads = [r for r, _ in fresh]

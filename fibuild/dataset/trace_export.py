"""``fibuild export flashinfer-trace DIR [DEF...]``: a workspace out in the dataset's layout.

Writes ``definitions/<op_type>/<name>.json`` (indent 2), ``solutions/<author>/<op_type>/
<definition>/<name>.json`` (sources inline), ``workloads/<op_type>/<definition>.jsonl``
with blobs copied to ``blob/workloads/<op_type>/<definition>/`` (paths ``./blob/...``),
and ``traces/<op_type>/<definition>.jsonl`` (one line per evaluation, in
flashinfer-bench's compact form), so ``flashinfer_bench.data.TraceSet.from_path`` loads it.
The dataset names solutions globally: a name that several definitions' solutions share is
written ``<definition>__<name>`` (import maps it back).
Files of the exported definitions are replaced whole; other files in DIR are left alone.
What the dataset cannot express (distributed or in-place definitions, custom inputs,
records without the figures their status needs) is skipped and reported.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable

from ..errors import FibuildError
from ..registry import Registry
from ..spec.model import Definition
from ..spec.workspace import Workspace
from . import trace_evaluations as te
from . import trace_mapping as tm
from .files import confined, copy_file, relative_path, write_text
from .report import DatasetReport


def export_flashinfer_trace(workspace: Workspace, target: str | Path, definitions: Iterable[str] = (), *,
                            progress: Callable[[str], None] | None = None) -> DatasetReport:
    """Export ``definitions`` (all when empty) of ``workspace`` into ``target``.

    Raises FibuildError for an unknown definition or an unwritable target, ManifestError
    for invalid workspace manifests. Cost: reads every selected manifest, source and
    registry file once; copies blobs.
    """
    say = progress or (lambda _line: None)
    out = Path(target).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise FibuildError(f"{out} is not a directory")
    names = list(definitions) or sorted(workspace.definitions)
    shared = _shared_solution_names(workspace)
    report = DatasetReport()
    for name in names:
        defn = workspace.definition(name)
        say(f"definition {name}")
        try:
            data, notes = tm.definition_to_dataset(defn.raw)
        except tm.Unsupported as exc:
            report.skip("definition", name, str(exc), str(defn.path))
            continue
        report.notes += notes
        _write_json(out / "definitions" / defn.op_type / f"{name}.json", data)
        report.written["definition"] += 1
        exported = _export_solutions(workspace, defn, out, report, shared)
        inputs = _export_workloads(workspace, defn, out, report)
        _export_evaluations(workspace, defn, out, exported, inputs, report)
    return report


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _path_part(text: str) -> str:
    """``text`` usable as one folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "unknown"


def _shared_solution_names(workspace: Workspace) -> set[str]:
    """Solution names that more than one exportable definition of the workspace uses
    (``cpp_bf16``): flashinfer-bench keys solutions by name alone, so these are exported
    qualified. Counted over the whole workspace, not the definitions asked for, so a
    solution's dataset name does not depend on what else is exported with it."""
    seen: dict[str, int] = {}
    for name, defn in workspace.definitions.items():
        try:
            tm.definition_to_dataset(defn.raw)
        except tm.Unsupported:
            continue  # never exported: its names clash with nothing in a dataset
        for sol in workspace.solutions(name):
            seen[sol.name] = seen.get(sol.name, 0) + 1
    return {name for name, count in seen.items() if count > 1}


def _export_solutions(workspace: Workspace, defn: Definition, out: Path, report: DatasetReport,
                      shared: set[str]) -> dict[str, str]:
    """Write each solution of ``defn``; returns ``{solution name: its dataset name}``."""
    exported = {}
    for sol in workspace.solutions(defn.name):
        files = {}
        try:
            for rel, path in sol.files:  # library files inlined at their path in the build
                files[rel] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            report.skip("solution", sol.qualified_name, f"source {rel} is not UTF-8 text the dataset can "
                        f"inline ({exc})", str(sol.path))
            continue
        dataset_name = tm.dataset_solution_name(defn.name, sol.name, sol.name in shared)
        data, notes = tm.solution_to_dataset(sol.raw, files, dataset_name)
        report.notes += notes
        folder = out / "solutions" / _path_part(data["author"]) / defn.op_type / defn.name
        _write_json(folder / f"{sol.name}.json", data)
        report.written["solution"] += 1
        exported[sol.name] = dataset_name
    return exported


def _export_workloads(workspace: Workspace, defn: Definition, out: Path, report: DatasetReport) -> dict:
    """Write the workloads file; returns ``{uuid: dataset inputs}`` of the workloads written."""
    lines, exported = [], {}
    for workload in workspace.workloads(defn):
        inputs = {}
        try:
            for name, spec in workload.inputs.items():
                inputs[name] = _input(workspace, defn, name, spec, out, report)
        except tm.Unsupported as exc:
            report.skip("workload", workload.uuid, str(exc), workload.source)
            continue
        lines.append(json.dumps(tm.workload_to_dataset(defn.name, workload.uuid, workload.axes, inputs)))
        exported[workload.uuid] = inputs
    if lines:
        write_text(out / "workloads" / defn.op_type / f"{defn.name}.jsonl", "\n".join(lines) + "\n")
        report.written["workload"] += len(lines)
    return exported


def _input(workspace: Workspace, defn: Definition, name: str, spec, out: Path, report: DatasetReport) -> dict:
    if spec.kind == "random":
        return {"type": "random"}
    if spec.kind == "scalar":
        return {"type": "scalar", "value": spec.value}
    if spec.kind == "custom":
        raise tm.Unsupported(f"input {name!r} comes from the definition's custom_inputs_entrypoint; "
                             "flashinfer-trace has no such input kind")
    try:
        blob = confined(workspace.root, relative_path(spec.path))
    except ValueError as exc:
        raise tm.Unsupported(f"input {name!r}: {exc}") from None
    if not blob.is_file():
        raise tm.Unsupported(f"input {name!r}: blob {spec.path} not found in {workspace.root}")
    rel = f"blob/workloads/{defn.op_type}/{defn.name}/{blob.name}"
    dest = out / rel
    if not dest.exists() or dest.stat().st_size != blob.stat().st_size or dest.read_bytes() != blob.read_bytes():
        copy_file(blob, dest)
        report.written["blob"] += 1
    return {"type": "safetensors", "path": f"./{rel}", "tensor_key": spec.tensor_key}


def _export_evaluations(workspace: Workspace, defn: Definition, out: Path, solutions: dict[str, str],
                        inputs: dict, report: DatasetReport) -> None:
    lines = []
    for ev in Registry.of(workspace).read(defn.name):
        where = f"registry/{defn.name}/{ev.device}.jsonl"
        if ev.solution not in solutions:
            report.skip("evaluation", f"{defn.name}/{ev.solution}/{ev.workload_uuid}",
                        f"solution {ev.solution!r} is not exported", where)
            continue
        workload_inputs = inputs.get(ev.workload_uuid)
        if workload_inputs is None:
            # The workload is gone or not exportable: describe its tensors as random.
            workload_inputs = {t.name: {"type": "random"} for t in defn.inputs if not t.is_scalar}
        try:
            line = te.evaluation_to_dataset(ev, workload_inputs, solutions[ev.solution])
        except tm.Unsupported as exc:
            report.skip("evaluation", f"{defn.name}/{ev.solution}/{ev.workload_uuid}", str(exc), where)
            continue
        lines.append(json.dumps(line, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
    if lines:
        write_text(out / "traces" / defn.op_type / f"{defn.name}.jsonl", "\n".join(lines) + "\n")
        report.written["evaluation"] += len(lines)

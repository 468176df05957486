"""Checks the JSON Schemas cannot express, on schema-valid manifest dicts.

Each check returns ``(json_pointer, message)`` problems; none raises for bad input and
none executes workspace code (the reference is inspected with ``ast``). Cost: linear in
the manifest, plus one ``ast.parse`` of the reference and one ``stat`` per source.
"""
from __future__ import annotations

import ast
import difflib
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any, Collection, Mapping

from . import flags
from .libraries import resolve_libraries
from .schema import pointer_of
from .variants import check_grid

Problems = list[tuple[str, str]]


def declared_uuid(definition: str, axes: Mapping[str, Any], var_axes: list[str]) -> str:
    """The id of a declared workload without one: ``<def>-<axis><value>-...`` in axis order."""
    parts = [f"{a}{axes[a]}" for a in var_axes if a in axes]
    return "-".join([definition, *parts])


# --- definitions -----------------------------------------------------------------------

def check_definition(data: Mapping[str, Any], path: Path | None = None) -> Problems:
    """Semantic problems of a schema-valid definition dict (``path``: its file, if any)."""
    problems: Problems = []
    axes: dict = data["axes"]
    inputs: dict = data["inputs"]
    outputs: dict = data["outputs"]
    if path is not None:
        problems += _definition_layout(data, Path(path))
    for section in ("inputs", "outputs"):
        for name, spec in data[section].items():
            for i, axis in enumerate(spec["shape"] or ()):
                if axis not in axes:
                    known = ", ".join(axes) or "none"
                    problems.append((pointer_of([section, name, "shape", i]),
                                     f"unknown axis {axis!r} (declared axes: {known})"))
    problems += _inplace(inputs, outputs)
    problems += _tolerance(data.get("tolerance"))
    problems += _distributed(data.get("distributed"), axes, inputs)
    reference_functions, ref_problems = _reference(data["reference"], list(inputs))
    problems += ref_problems
    entry = data.get("custom_inputs_entrypoint")
    if entry is not None and reference_functions is not None and entry not in reference_functions:
        problems.append(("/custom_inputs_entrypoint",
                         f"the reference defines no top-level function {entry!r}"))
    var_axes = [n for n, a in axes.items() if a["type"] == "var"]
    seen: dict[str, int] = {}
    for i, workload in enumerate(data.get("workloads") or ()):
        prefix = ["workloads", i]
        problems += check_workload_fields(workload, axes, inputs, entry is not None, prefix)
        uuid = workload.get("uuid") or declared_uuid(data["name"], workload["axes"], var_axes)
        if uuid in seen:
            problems.append((pointer_of(prefix), f"workload id {uuid!r} is used twice (also by "
                             f"/workloads/{seen[uuid]}); give one of them a distinct uuid"))
        else:
            seen[uuid] = i
    return problems


def _tolerance(tolerance: Mapping[str, Any] | None) -> Problems:
    """Finite tolerances whose check can fail (the schema bounds them; NaN slips past bounds)."""
    problems: Problems = []
    for name, value in (tolerance or {}).items():
        if isinstance(value, (int, float)) and not math.isfinite(value):
            problems.append((f"/tolerance/{name}", f"{name} is {value}: a tolerance must be a finite "
                             "number (a check with an infinite or NaN tolerance passes any output)"))
    return problems


def _distributed(spec: Mapping[str, Any] | None, axes: Mapping[str, Any],
                 inputs: Mapping[str, Any]) -> Problems:
    """The world-size axis is a declared axis that no tensor carries; per-rank inputs exist."""
    if not spec:
        return []
    problems: Problems = []
    axis = spec["world_size_axis"]
    if axis not in axes:
        problems.append(("/distributed/world_size_axis",
                         f"unknown axis {axis!r} (declared axes: {', '.join(axes) or 'none'})"))
    tensors = [n for n, t in inputs.items() if axis in (t["shape"] or ())]
    if tensors:
        problems.append(("/distributed/world_size_axis",
                         f"axis {axis!r} is the process group's size and cannot be a tensor "
                         f"dimension (used by {', '.join(tensors)})"))
    for i, name in enumerate(spec.get("per_rank_inputs") or ()):
        if name not in inputs:
            problems.append((pointer_of(["distributed", "per_rank_inputs", i]),
                             f"unknown input {name!r} (inputs: {', '.join(inputs)})"))
    return problems


def _definition_layout(data: Mapping[str, Any], path: Path) -> Problems:
    problems: Problems = []
    if path.stem != data["name"]:
        problems.append(("/name", f"name {data['name']!r} does not match the file name "
                         f"{path.name!r} (expected {data['name']}.yaml)"))
    if path.parent.parent.name == "defs" and path.parent.name != data["op_type"]:
        problems.append(("/op_type", f"op_type {data['op_type']!r} does not match the folder "
                         f"defs/{path.parent.name}/ (expected defs/{data['op_type']}/)"))
    return problems


def _inplace(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Problems:
    problems: Problems = []
    targets: dict[str, str] = {}
    for name, spec in outputs.items():
        target = spec.get("inplace")
        pointer = pointer_of(["outputs", name, "inplace"])
        if target is None:
            if name in inputs:
                problems.append((pointer_of(["outputs", name]), f"output {name!r} has the name of an "
                                 f"input: set `inplace: {name}` if it is written in place, else rename it"))
            continue
        if target not in inputs:
            problems.append((pointer, f"inplace names {target!r}, which is not an input "
                             f"(inputs: {', '.join(inputs)})"))
            continue
        source = inputs[target]
        if source["shape"] != spec["shape"] or source["dtype"] != spec["dtype"]:
            problems.append((pointer, f"in-place output {name!r} must have the shape and dtype of "
                             f"input {target!r} ({source['shape']} {source['dtype']}), "
                             f"got {spec['shape']} {spec['dtype']}"))
        if source["shape"] is None:
            problems.append((pointer, f"input {target!r} is a scalar and cannot be written in place"))
        if target in targets:
            problems.append((pointer, f"input {target!r} is already written in place by "
                             f"output {targets[target]!r}"))
        targets.setdefault(target, name)
    return problems


def _reference(source: str, inputs: list[str]) -> tuple[set[str] | None, Problems]:
    """Top-level function names of the reference, and its problems (no execution)."""
    try:
        tree = ast.parse(source, filename="<reference>")
    except SyntaxError as exc:
        return None, [("/reference", f"syntax error at line {exc.lineno}: {exc.msg}")]
    except (RecursionError, MemoryError):
        return None, [("/reference", "nested too deeply to parse")]
    except ValueError as exc:  # e.g. NUL bytes
        return None, [("/reference", f"cannot parse: {exc}")]
    functions = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = node
    run = functions.get("run")
    if run is None:
        return set(functions), [("/reference", "the reference must define a top-level function "
                                 f"`def run({', '.join(inputs)})`")]
    if isinstance(run, ast.AsyncFunctionDef):
        return set(functions), [("/reference", "run must be a plain function, not async")]
    args = run.args
    params = [a.arg for a in args.posonlyargs + args.args]
    required_kwonly = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    if params != inputs or args.vararg or required_kwonly:
        shown = ", ".join(params + (["*" + args.vararg.arg] if args.vararg else []) + required_kwonly)
        return set(functions), [("/reference", f"run({shown}) must take the inputs in declaration "
                                 f"order: run({', '.join(inputs)})")]
    return set(functions), []


# --- workloads -------------------------------------------------------------------------

def check_workload_fields(workload: Mapping[str, Any], axes: Mapping[str, Any],
                          inputs: Mapping[str, Any], has_custom_entry: bool,
                          prefix: list) -> Problems:
    """Axes and inputs of one schema-valid workload against its definition.

    ``axes``/``inputs`` are the definition's mappings in manifest form (``{"type": ...}``,
    ``{"shape": ..., "dtype": ...}``); ``prefix`` is the workload's pointer path.
    """
    problems: Problems = []
    given = workload["axes"]
    for name, value in given.items():
        pointer = pointer_of(prefix + ["axes", name])
        if name not in axes:
            problems.append((pointer, f"unknown axis {name!r} (var axes: "
                             f"{', '.join(n for n, a in axes.items() if a['type'] == 'var') or 'none'})"))
        elif axes[name]["type"] != "var":
            problems.append((pointer, f"{name!r} is a const axis ({axes[name].get('value')}); "
                             "workloads set var axes only"))
        elif isinstance(value, bool) or not isinstance(value, int):
            problems.append((pointer, f"expected integer, got {value!r}"))
    for name, axis in axes.items():
        if axis["type"] == "var" and name not in given:
            problems.append((pointer_of(prefix + ["axes"]), f"missing var axis {name!r}"))
    specs = workload.get("inputs") or {}
    for name, spec in specs.items():
        pointer = pointer_of(prefix + ["inputs", name])
        if name not in inputs:
            problems.append((pointer, f"unknown input {name!r} (inputs: {', '.join(inputs)})"))
            continue
        kind = spec["type"]
        if kind == "custom" and not has_custom_entry:
            problems.append((pointer, "a custom input needs the definition's custom_inputs_entrypoint"))
        elif kind == "scalar" and inputs[name]["shape"] is not None:
            problems.append((pointer, f"input {name!r} is a tensor; a scalar value fits scalar inputs only"))
        elif kind in ("random", "safetensors") and inputs[name]["shape"] is None:
            problems.append((pointer, f"input {name!r} is a scalar: give `type: scalar` with a value"))
        if kind == "safetensors" and isinstance(spec.get("path"), str):
            reason = check_relative_path(spec["path"], "the workspace root")
            if reason:
                problems.append((pointer_of(prefix + ["inputs", name, "path"]), reason))
    for name, spec in inputs.items():
        if spec["shape"] is None and name not in specs:
            problems.append((pointer_of(prefix + ["inputs"]),
                             f"scalar input {name!r} needs a value: {{type: scalar, value: ...}} "
                             "(or type: custom)"))
    return problems


# --- solutions -------------------------------------------------------------------------

def check_relative_path(value: str, inside: str = "the solution directory") -> str | None:
    """Why ``value`` is not a safe relative path inside ``inside`` (a folder), or None."""
    if not value or value.startswith("/") or PurePosixPath(value).is_absolute() or value[1:3] == ":\\":
        return f"{value!r} is absolute; give a path relative to {inside}"
    if ".." in PurePosixPath(value.replace("\\", "/")).parts:
        return f"{value!r} leaves {inside} ('..'); name a file inside it"
    return None


def check_solution(data: Mapping[str, Any], path: Path | None = None,
                   definitions: Collection[str] | None = None) -> Problems:
    """Semantic problems of a schema-valid solution dict.

    ``path`` is its ``solution.yaml`` (enables the layout and source-existence checks);
    ``definitions`` holds the workspace's definition names (enables the existence check).
    """
    problems: Problems = []
    sources: list[str] = data["sources"]
    safe: list[str] = []
    for i, source in enumerate(sources):
        reason = check_relative_path(source)
        if reason:
            problems.append((pointer_of(["sources", i]), reason))
        else:
            safe.append(source)
    libraries = data.get("libraries") or []
    files: dict[str, Path] = {}  # every source of the build, own and from libraries
    if (data.get("launch") or {}).get("pdl") and data["language"] not in ("triton", "cuda"):
        problems.append(("/launch/pdl", "dependent launch needs kernels that wait for their predecessor: "
                         f"a triton or cuda solution, not {data['language']}"))
    if path is not None:
        directory = Path(path).parent
        problems += _solution_layout(data, directory)
        root = directory.resolve()
        for i, source in enumerate(sources):
            if source not in safe:
                continue
            target = directory / source
            if not target.is_file():
                problems.append((pointer_of(["sources", i]),
                                 f"source {source!r} not found in {directory}"))
            elif not target.resolve().is_relative_to(root):
                problems.append((pointer_of(["sources", i]),
                                 f"source {source!r} resolves outside the solution directory"))
            else:
                files[source] = target
        found, library_problems = resolve_libraries(directory, libraries, safe)
        problems += [(pointer_of(["libraries", i]), why) for i, why in library_problems]
        files.update(found)
    known = list(files) if path is not None else list(sources)
    what = "in sources or its libraries" if libraries else "listed in sources"
    entry_file = data["entry_point"].split("::", 1)[0]
    if entry_file not in known and (path is not None or not libraries):
        problems.append(("/entry_point", f"entry point file {entry_file!r} is not {what} "
                         f"({', '.join(known)})"))
    plan_file = data["plan"].split("::", 1)[0] if data.get("plan") else None
    if plan_file is not None and plan_file not in known and (path is not None or not libraries):
        problems.append(("/plan", f"plan file {plan_file!r} is not {what} ({', '.join(known)})"))
    if plan_file is not None and data["language"] not in ("python", "triton"):
        problems.append(("/plan", f"a plan step needs a python or triton solution, not {data['language']}"))
    if path is not None and not problems:
        problems += _entry_point(data, files)
    problems += _build_flags(data.get("build") or {})
    problems += check_grid(data)
    if definitions is not None and data["definition"] not in definitions:
        close = difflib.get_close_matches(data["definition"], list(definitions), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(("/definition", f"definition {data['definition']!r} does not exist in the "
                         f"workspace{hint}"))
    return problems


#: Source files larger than this are not scanned for the entry point (it is reported).
MAX_SOURCE_BYTES = 4 << 20
_PYTHON_LANGUAGES = ("python", "triton")


def _entry_point(data: Mapping[str, Any], files: Mapping[str, Path]) -> Problems:
    """The entry point's function exists: defined at the top level of the Python file
    (read with ``ast``, never imported), or exported from a native source with
    ``TVM_FFI_DLL_EXPORT_TYPED_FUNC(name, ...)``. ``files`` maps every source (own and from
    libraries) to its file; they are known to exist here."""
    entry_file, symbol = data["entry_point"].split("::", 1)
    if data["language"] in _PYTHON_LANGUAGES:
        if not entry_file.endswith(".py"):
            return [("/entry_point", f"entry point file {entry_file!r} is not a .py file "
                     f"({data['language']} solutions name a Python function)")]
        text, why = _source_text(files[entry_file])
        if text is None:
            return [("/entry_point", f"{entry_file}: {why}")]
        try:
            tree = ast.parse(text, filename=entry_file)
        except SyntaxError:
            return []  # a compile error, reported by the build like a native one (COMPILE_ERROR)
        except (RecursionError, MemoryError, ValueError):
            return [("/entry_point", f"{entry_file}: cannot be parsed (nested too deeply or NUL bytes)")]
        if symbol not in _top_level_names(tree):
            return [("/entry_point", f"{entry_file} defines no top-level function {symbol!r}")]
        return []
    export = re.compile(r"TVM_FFI_DLL_EXPORT_TYPED_FUNC\s*\(\s*" + re.escape(symbol) + r"\s*,")
    for source in files.values():
        text, _why = _source_text(source)
        if text is not None and export.search(text):
            return []
    return [("/entry_point", f"no source exports {symbol!r}: a native entry point is exported with "
             f"TVM_FFI_DLL_EXPORT_TYPED_FUNC({symbol}, <function>) in one of the sources")]


def _source_text(path: Path) -> tuple[str | None, str]:
    try:
        if path.stat().st_size > MAX_SOURCE_BYTES:
            return None, f"larger than {MAX_SOURCE_BYTES} bytes"
        return path.read_text(encoding="utf-8", errors="replace"), ""
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level: functions, classes, assignments, imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _build_flags(build: Mapping[str, Any]) -> Problems:
    """Flags that would run or load another program (see :mod:`fibuild.spec.flags`)."""
    problems: Problems = []
    for field in ("cflags", "cuda_cflags", "ldflags"):
        for i, why in flags.refusals(build.get(field) or []):
            problems.append((pointer_of(["build", field, i]), why))
    for i, value in enumerate(build.get("include_dirs") or []):
        why = flags.include_dir_reason(value)
        if why:
            problems.append((pointer_of(["build", "include_dirs", i]), why))
    return problems


def _solution_layout(data: Mapping[str, Any], directory: Path) -> Problems:
    problems: Problems = []
    if directory.name != data["name"]:
        problems.append(("/name", f"name {data['name']!r} does not match its directory "
                         f"{directory.name!r} (solutions/<definition>/<name>/solution.yaml)"))
    if directory.parent.name != data["definition"]:
        problems.append(("/definition", f"definition {data['definition']!r} does not match the "
                         f"parent directory {directory.parent.name!r} "
                         "(solutions/<definition>/<name>/solution.yaml)"))
    return problems

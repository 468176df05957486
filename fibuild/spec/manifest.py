"""Manifest loading: YAML -> schema (every error) -> semantic checks -> frozen model.

``load_definition`` / ``load_solution`` / ``load_workloads_jsonl`` raise one
:class:`~fibuild.errors.ManifestError` per file listing all of its problems;
``definition_from_dict`` / ``solution_from_dict`` build the model from trusted dicts
without any checks (fast paths). :class:`~fibuild.spec.workspace.Workspace`, which scans a
whole tree, is built on these loaders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Mapping

from fibuild.errors import ManifestError

from . import schema, semantics
from .documents import parse_json_line, parse_yaml_mapping, read_text
from .libraries import resolve_libraries
from .model import Axis, BuildFlags, Definition, Distributed, InputSpec, Solution, TensorSpec, Tolerance, Workload

# --- definitions -----------------------------------------------------------------------

def load_definition(path: str | Path) -> Definition:
    """Read, validate and build a Definition from a YAML file.

    Raises ManifestError(path, problems) with every problem found: unreadable or malformed
    file, schema violations, then (when the schema passes) semantic ones. The file name
    must be ``<name>.yaml``; under ``defs/<op_type>/`` the folder must match ``op_type``.
    """
    path = Path(path)
    data = _checked_yaml(path, "definition", lambda d: semantics.check_definition(d, path))
    return definition_from_dict(data, path)


def definition_from_dict(data: Mapping[str, Any], path: str | Path | None = None) -> Definition:
    """A Definition from an already-valid manifest dict (no checks; KeyError if malformed)."""
    axes = {name: Axis(name=name, kind=a["type"], value=a.get("value"),
                       description=a.get("description", ""))
            for name, a in data["axes"].items()}
    var_axes = [n for n, a in axes.items() if a.kind == "var"]
    inputs = tuple(_tensor(name, spec) for name, spec in data["inputs"].items())
    outputs = tuple(_tensor(name, spec) for name, spec in data["outputs"].items())
    tolerance = data.get("tolerance")
    workloads = tuple(
        _workload(w, w.get("uuid") or semantics.declared_uuid(data["name"], w["axes"], var_axes),
                  var_axes, inputs, "declared")
        for w in data.get("workloads") or ())
    return Definition(
        name=data["name"], op_type=data["op_type"], axes=axes, inputs=inputs, outputs=outputs,
        reference=data["reference"], description=data.get("description", ""),
        tags=tuple(data.get("tags") or ()), constraints=tuple(data.get("constraints") or ()),
        tolerance=Tolerance(float(tolerance["atol"]), float(tolerance["rtol"])) if tolerance else Tolerance(),
        workloads=workloads, custom_inputs_entrypoint=data.get("custom_inputs_entrypoint"),
        distributed=_distributed(data.get("distributed")),
        baseline=_names(data.get("baseline")),
        path=Path(path) if path is not None else None, raw=data,
    )


def _names(value: str | list[str] | None) -> tuple[str, ...]:
    """A name or a list of names as a tuple (``baseline: flashinfer`` or ``[flashinfer, torch]``)."""
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _distributed(spec: Mapping[str, Any] | None) -> Distributed | None:
    if not spec:
        return None
    return Distributed(world_size_axis=spec["world_size_axis"],
                       per_rank_inputs=tuple(spec.get("per_rank_inputs") or ()))


def _tensor(name: str, spec: Mapping[str, Any]) -> TensorSpec:
    shape = spec.get("shape")
    return TensorSpec(name=name, shape=tuple(shape) if shape is not None else None,
                      dtype=spec["dtype"], description=spec.get("description", ""),
                      inplace=spec.get("inplace"), structural=bool(spec.get("structural", False)))


def _input_spec(spec: Mapping[str, Any]) -> InputSpec:
    return InputSpec(kind=spec["type"], value=spec.get("value"), path=spec.get("path"),
                     tensor_key=spec.get("tensor_key"))


def _workload(data: Mapping[str, Any], uuid: str, var_axes: list[str],
              inputs: tuple[TensorSpec, ...], source: str) -> Workload:
    """A Workload whose ``inputs`` covers every input: unlisted tensors are ``random``."""
    given = data.get("inputs") or {}
    specs = {t.name: _input_spec(given[t.name]) if t.name in given else InputSpec(kind="random")
             for t in inputs}
    axes = {a: int(data["axes"][a]) for a in var_axes if a in data["axes"]}
    return Workload(uuid=uuid, axes=axes, inputs=specs, source=source)


# --- solutions -------------------------------------------------------------------------

def load_solution(path: str | Path, definitions: Collection[str] | None = None) -> Solution:
    """Read, validate and build a Solution from ``solutions/<def>/<name>/solution.yaml``.

    ``definitions`` (names, or a mapping keyed by name) enables the check that the
    solution's definition exists. Raises ManifestError with every problem found; sources
    must exist in the solution directory, be relative and stay inside it, and the entry
    point's file must be one of them.
    """
    path = Path(path)
    data = _checked_yaml(path, "solution",
                         lambda d: semantics.check_solution(d, path, definitions))
    return solution_from_dict(data, path)


def solution_from_dict(data: Mapping[str, Any], path: str | Path | None = None) -> Solution:
    """A Solution from an already-valid manifest dict (no checks; KeyError if malformed;
    ValueError if a library it names is missing: its files are listed here).

    ``path`` is the ``solution.yaml`` file or the solution's directory; the model keeps
    the directory.
    """
    directory = None
    if path is not None:
        directory = Path(path)
        if directory.suffix in (".yaml", ".yml"):
            directory = directory.parent
    build = data.get("build") or {}
    libraries = tuple(data.get("libraries") or ())
    library_files: list = []
    if libraries:
        if directory is None:
            raise ValueError(f"solution {data['name']!r} names libraries but has no directory")
        library_files, problems = resolve_libraries(directory, libraries, data["sources"])
        if problems:
            raise ValueError(f"solution {data['name']!r}: {problems[0][1]}")
    return Solution(
        name=data["name"], definition=data["definition"], language=data["language"],
        entry_point=data["entry_point"], sources=tuple(data["sources"]),
        author=data.get("author", ""), description=data.get("description", ""),
        target_hardware=tuple(data.get("target_hardware") or ()),
        destination_passing_style=bool(data.get("destination_passing_style", False)),
        dependencies=tuple(data.get("dependencies") or ()),
        build=BuildFlags(**{k: tuple(build.get(k) or ()) for k in
                            ("cflags", "cuda_cflags", "ldflags", "include_dirs")}),
        plan=data.get("plan"), pdl=bool((data.get("launch") or {}).get("pdl", False)),
        libraries=libraries, library_files=tuple(library_files),
        variants=tuple((k, tuple(v)) for k, v in (data.get("variants") or {}).items()),
        constraints=tuple(data.get("constraints") or ()),
        constants=tuple((data.get("constants") or {}).items()),
        first_call=tuple(data.get("first_call") or ()), path=directory, raw=data,
    )


# --- workloads -------------------------------------------------------------------------

def load_workloads_jsonl(path: str | Path, definition: Definition) -> list[Workload]:
    """The workloads of ``definition`` in a JSON-lines file (one workload object a line).

    Blank lines are skipped; uuids must be unique, and distinct from the definition's
    declared workloads. Raises ManifestError listing every bad line; a problem's
    pointer starts with the 0-based line index (``/3/axes``) and its message names the
    1-based line. A missing file raises too (callers check existence first).
    """
    path = Path(path)
    text, problems = read_text(path)
    if text is None:
        raise ManifestError(path, problems)
    axes = {n: {"type": a.kind, "value": a.value} for n, a in definition.axes.items()}
    inputs = {t.name: {"shape": t.shape, "dtype": t.dtype} for t in definition.inputs}
    has_custom = definition.custom_inputs_entrypoint is not None
    workloads: list[Workload] = []
    seen: dict[str, int] = {}
    declared = {w.uuid for w in definition.workloads}
    for index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        here = f"line {index + 1}: "
        data, error = parse_json_line(line)
        if error:
            problems.append((f"/{index}", here + error))
            continue
        line_problems = schema.validate("workload", data)
        if not line_problems:
            line_problems = semantics.check_workload_fields(data, axes, inputs, has_custom, [])
            if data.get("definition", definition.name) != definition.name:
                line_problems.append(("/definition", f"workload of {data['definition']!r} in the "
                                      f"workloads of {definition.name!r}"))
            if data["uuid"] in seen:
                line_problems.append(("/uuid", f"uuid {data['uuid']!r} already used on line "
                                      f"{seen[data['uuid']] + 1}"))
            elif data["uuid"] in declared:
                line_problems.append(("/uuid", f"uuid {data['uuid']!r} is also a declared "
                                      f"workload of {definition.name!r}"))
        problems += [(f"/{index}" + (p if p != "/" else ""), here + m) for p, m in line_problems]
        if not line_problems:
            seen[data["uuid"]] = index
            workloads.append(_workload(data, data["uuid"], list(definition.var_axes),
                                       definition.inputs, str(path)))
    if problems:
        raise ManifestError(path, problems)
    return workloads


# --- shared ----------------------------------------------------------------------------

def _checked_yaml(path: Path, kind: str, semantic) -> dict:
    """Read ``path``, validate it against ``kind``, then run ``semantic`` if the schema passed."""
    text, problems = read_text(path)
    if text is None:
        raise ManifestError(path, problems)
    data, problems = parse_yaml_mapping(text)
    if data is None:
        raise ManifestError(path, problems)
    problems += schema.validate(kind, data)
    # Semantic checks index into the structure the schema guarantees, and would echo
    # YAML key problems in confusing ways: they run once everything before them passes.
    if not problems:
        problems += semantic(data)
    if problems:
        raise ManifestError(path, problems)
    return data


__all__ = ["definition_from_dict", "load_definition", "load_solution", "load_workloads_jsonl", "solution_from_dict"]

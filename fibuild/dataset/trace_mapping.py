"""One record at a time between flashinfer-trace JSON and fibuild manifests and records.

The dataset's format is FlashInfer-Bench's (``flashinfer_bench.data``): a Definition JSON,
a Solution JSON with inline ``sources`` and a ``spec``, workload lines (a Trace whose
``solution`` and ``evaluation`` are null) and trace lines. Functions here are pure: they
take and return dicts. ``Unsupported(reason)`` means fibuild cannot express the record (it
is reported and skipped); ``ValueError`` means the record is malformed (the caller names
the file and line). Key order follows the dataset's files so exports diff cleanly.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..spec.model import DTYPES, LANGUAGES
from ..spec.schema import name_problem
from .files import relative_path

#: Definition keys of the dataset, in the order its files write them.
DEFINITION_KEYS = ("name", "description", "op_type", "tags", "axes", "constraints", "inputs",
                   "outputs", "reference", "custom_inputs_entrypoint")
SOLUTION_KEYS = ("name", "definition", "description", "author", "spec", "sources")
SPEC_KEYS = ("language", "target_hardware", "entry_point", "dependencies",
             "destination_passing_style", "binding")
_TENSOR_KEYS = ("shape", "dtype", "description")
_AXIS_KEYS = ("type", "value", "description")


class Unsupported(Exception):
    """fibuild cannot express this record; ``str(exc)`` says why."""


def as_mapping(value: Any, what: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} is not a JSON object")
    return value


def string_field(data: Mapping, key: str, what: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _name(data: Mapping, key: str, what: str) -> str:
    """``data[key]`` checked before it becomes a path: ValueError (malformed, the import stops)
    for one that holds a path, Unsupported (skipped) for another that is no manifest name."""
    value = string_field(data, key, what)
    _check_name(value, f"{what}: {key}")
    return value


def _check_name(value: str, what: str) -> None:
    if "/" in value or "\\" in value or value in (".", ".."):
        raise ValueError(f"{what} {value!r} is not a name: it holds a path")
    why = name_problem(value, what)
    if why:
        raise Unsupported(why)


def _strings(data: Mapping, key: str, what: str) -> list[str]:
    """``data[key]``: a list of strings (absent or null: empty)."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what}: {key!r} must be a list of strings, got {value!r}")
    return value


def _dropped(data: Mapping, known: tuple[str, ...], what: str) -> list[str]:
    return [f"{what}: field {k!r} has no fibuild equivalent and was not kept" for k in data if k not in known]


# --- definitions -------------------------------------------------------------------------

def definition_from_dataset(data: Any) -> tuple[dict, list[str]]:
    """A fibuild definition manifest (key order of ``defs/*.yaml``) and notes on dropped fields.

    Raises ValueError for a malformed definition, Unsupported for one fibuild cannot hold
    (a dtype it lacks, an optional input, a zero-sized const axis).
    """
    data = as_mapping(data, "definition")
    for key in ("name", "op_type"):
        _name(data, key, "definition")
    string_field(data, "reference", "definition")
    name = data["name"]
    notes = _dropped(data, DEFINITION_KEYS, f"definition {name}")
    out: dict[str, Any] = {"name": name, "op_type": data["op_type"]}
    if data.get("description") is not None:
        out["description"] = data["description"]
    if data.get("tags"):
        out["tags"] = _strings(data, "tags", f"definition {name}")
    axes = {}
    for axis, spec in as_mapping(data.get("axes"), f"definition {name}: axes").items():
        spec = as_mapping(spec, f"axis {axis}")
        notes += _dropped(spec, _AXIS_KEYS, f"definition {name}: axis {axis}")
        if spec.get("type") == "const" and spec.get("value") == 0:
            raise Unsupported(f"const axis {axis!r} is 0 (fibuild axes are at least 1)")
        axes[axis] = {k: spec[k] for k in _AXIS_KEYS if spec.get(k) is not None}
    out["axes"] = axes
    if data.get("constraints"):
        out["constraints"] = list(data["constraints"])
    for section in ("inputs", "outputs"):
        tensors = {}
        for tensor, spec in as_mapping(data.get(section), f"definition {name}: {section}").items():
            spec = as_mapping(spec, f"{section} {tensor}")
            if spec.get("optional"):
                raise Unsupported(f"{section[:-1]} {tensor!r} is optional; fibuild inputs are all required")
            notes += _dropped(spec, _TENSOR_KEYS + ("optional",), f"definition {name}: {section[:-1]} {tensor}")
            if spec.get("dtype") not in DTYPES:
                raise Unsupported(f"{section[:-1]} {tensor!r} has dtype {spec.get('dtype')!r}, which "
                                  f"fibuild lacks (it has {', '.join(DTYPES)})")
            tensors[tensor] = {k: spec[k] for k in _TENSOR_KEYS if k in spec and (k == "shape" or spec[k] is not None)}
            if "shape" not in tensors[tensor]:
                raise ValueError(f"{section[:-1]} {tensor!r} has no 'shape' (null for a scalar)")
        out[section] = tensors
    if "custom_inputs_entrypoint" in data:
        out["custom_inputs_entrypoint"] = data["custom_inputs_entrypoint"]
    out["reference"] = data["reference"]
    return out, notes


def definition_to_dataset(manifest: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """The dataset JSON of a fibuild definition manifest and notes on what it leaves out.

    Raises Unsupported for definitions the dataset cannot describe: distributed ones and
    in-place outputs (the dataset's outputs are separate, differently named tensors).
    """
    name = manifest["name"]
    if manifest.get("distributed"):
        raise Unsupported("it runs over a process group (distributed), which flashinfer-trace cannot describe")
    inplace = [o for o, spec in manifest["outputs"].items() if spec.get("inplace")]
    if inplace:
        raise Unsupported(f"output(s) {', '.join(inplace)} are written in place, which flashinfer-trace "
                          "cannot describe (its outputs are distinct tensors)")
    notes = []
    if "tolerance" in manifest:
        notes.append(f"definition {name}: tolerance {manifest['tolerance']} has no flashinfer-trace field")
    if "baseline" in manifest:
        notes.append(f"definition {name}: baseline {manifest['baseline']} has no flashinfer-trace field")
    out: dict[str, Any] = {"name": name}
    if manifest.get("description"):
        out["description"] = manifest["description"]
    out["op_type"] = manifest["op_type"]
    if manifest.get("tags"):
        out["tags"] = list(manifest["tags"])
    out["axes"] = {a: {k: s[k] for k in _AXIS_KEYS if k in s} for a, s in manifest["axes"].items()}
    if manifest.get("constraints"):
        out["constraints"] = list(manifest["constraints"])
    for section in ("inputs", "outputs"):
        out[section] = {t: {k: s[k] for k in _TENSOR_KEYS if k in s} for t, s in manifest[section].items()}
    out["reference"] = manifest["reference"]
    if "custom_inputs_entrypoint" in manifest:
        out["custom_inputs_entrypoint"] = manifest["custom_inputs_entrypoint"]
    return out, notes


# --- solutions ---------------------------------------------------------------------------

#: Joins a definition and a solution name where the dataset needs a name unique across
#: definitions (flashinfer-bench keys solutions by name alone): ``rmsnorm_h4096__cpp_bf16``.
NAME_JOIN = "__"


def dataset_solution_name(definition: str, name: str, shared: bool) -> str:
    """The dataset name of solution ``name`` of ``definition``: the name itself, or
    ``<definition>__<name>`` when another definition's solution is called the same
    (``shared``) or the name already starts that way. :func:`solution_name_from_dataset`
    maps it back, so import → export → import is a fixed point."""
    prefix = definition + NAME_JOIN
    return prefix + name if shared or name.startswith(prefix) else name


def solution_name_from_dataset(definition: str, name: str) -> str:
    """Inverse of :func:`dataset_solution_name`: ``<definition>__<name>`` becomes ``name``."""
    prefix = definition + NAME_JOIN
    return name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else name


def solution_from_dataset(data: Any) -> tuple[dict, dict[str, str], list[str]]:
    """``(solution.yaml manifest, {source path: content}, notes)`` for a dataset Solution.

    Raises ValueError when malformed (an absolute or ``..`` source path included),
    Unsupported for a language fibuild has no builder for or a torch-binding C++/CUDA
    solution (fibuild builds native code through tvm-ffi only).
    """
    data = as_mapping(data, "solution")
    for key in ("name", "definition"):
        _name(data, key, "solution")
    string_field(data, "author", "solution")
    spec = as_mapping(data.get("spec"), f"solution {data['name']}: spec")
    language = string_field(spec, "language", "spec")
    entry = string_field(spec, "entry_point", "spec")
    if entry.count("::") != 1:
        raise ValueError(f"spec: entry_point {entry!r} is not 'file::function'")
    sources = data.get("sources")
    if not isinstance(sources, list) or not sources:
        raise ValueError("solution: 'sources' must be a non-empty list of {path, content}")
    files: dict[str, str] = {}
    for i, source in enumerate(sources):
        source = as_mapping(source, f"sources[{i}]")
        try:
            path = relative_path(source.get("path"))
        except ValueError as exc:
            raise ValueError(f"sources[{i}]: {exc}") from None
        if not isinstance(source.get("content"), str):
            raise ValueError(f"sources[{i}] ({path}): 'content' must be a string")
        if path in files:
            raise ValueError(f"sources[{i}]: duplicate source path {path!r}")
        files[path] = source["content"]
    folders = {"/".join(p.split("/")[:n]) for p in files for n in range(1, p.count("/") + 1)}
    clash = sorted(folders & set(files))
    if clash:
        raise ValueError(f"solution: {clash[0]!r} is both a source file and the folder of another source")
    if language not in LANGUAGES:
        raise Unsupported(f"language {language!r} has no fibuild builder (fibuild builds {', '.join(LANGUAGES)})")
    binding = spec.get("binding")
    if language in ("cuda", "cpp") and binding not in (None, "tvm-ffi"):
        raise Unsupported(f"a {language} solution with binding {binding!r}: fibuild builds C++/CUDA "
                          "through tvm-ffi only (a torch-binding extension would need torch's headers "
                          "and PYBIND11 module)")
    if "solution.yaml" in files:
        raise Unsupported("a source named solution.yaml would overwrite fibuild's manifest")
    name = solution_name_from_dataset(data["definition"], data["name"])
    _check_name(name, "solution: name")
    notes = _dropped(data, SOLUTION_KEYS, f"solution {name}") + _dropped(spec, SPEC_KEYS, f"solution {name}: spec")
    out: dict[str, Any] = {"name": name, "definition": data["definition"], "author": data["author"]}
    if data.get("description") is not None:
        out["description"] = data["description"]
    out["language"] = language
    out["entry_point"] = entry
    out["sources"] = list(files)
    hardware = _strings(spec, "target_hardware", f"solution {name}: spec")
    dependencies = _strings(spec, "dependencies", f"solution {name}: spec")
    if hardware:
        out["target_hardware"] = hardware
    # The dataset's default is destination passing; fibuild's is value-returning: always explicit.
    out["destination_passing_style"] = bool(spec.get("destination_passing_style", True))
    if dependencies:
        out["dependencies"] = dependencies
    return out, files, notes


def solution_to_dataset(manifest: Mapping[str, Any], files: Mapping[str, str],
                        dataset_name: str | None = None) -> tuple[dict, list[str]]:
    """The dataset Solution of a fibuild solution manifest and its source texts, and notes.

    ``files`` holds every source the build copies, library files included (by their path
    in the build, after the solution's own): the dataset has no shared folders, so each
    solution carries its own copy, and imported back it keeps its digest. ``dataset_name``:
    its name in the dataset (:func:`dataset_solution_name`; default its own).
    """
    name = manifest["name"]
    notes = []
    if any(manifest.get("build", {}).values()):
        notes.append(f"solution {name}: build flags {manifest['build']} have no flashinfer-trace field")
    author = manifest.get("author") or "unknown"
    out: dict[str, Any] = {"name": dataset_name or name, "definition": manifest["definition"]}
    if manifest.get("description"):
        out["description"] = manifest["description"]
    out["author"] = author
    spec: dict[str, Any] = {"language": manifest["language"],
                            "target_hardware": list(manifest.get("target_hardware") or ["cuda"]),
                            "entry_point": manifest["entry_point"],
                            "dependencies": list(manifest.get("dependencies") or []),
                            "destination_passing_style": bool(manifest.get("destination_passing_style", False))}
    if manifest["language"] in ("cuda", "cpp"):
        spec["binding"] = "tvm-ffi"
    out["spec"] = spec
    if manifest.get("libraries"):
        notes.append(f"solution {name}: libraries {list(manifest['libraries'])} inlined as sources")
    out["sources"] = [{"path": p, "content": text} for p, text in files.items()]
    return out, notes


# --- workloads ---------------------------------------------------------------------------

def workload_line(data: Any, *, evaluated: bool) -> tuple[str, Mapping, str | None, Mapping | None]:
    """``(definition, workload, solution, evaluation)`` of a dataset line; ValueError if malformed.

    ``evaluated``: a trace line (solution and evaluation required) or a workload line
    (both null or absent).
    """
    data = as_mapping(data, "line")
    definition = string_field(data, "definition", "line")
    workload = as_mapping(data.get("workload"), "workload")
    string_field(workload, "uuid", "workload")
    axes = as_mapping(workload.get("axes"), "workload.axes")
    for axis, value in axes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"workload.axes.{axis} = {value!r} is not a non-negative integer")
    as_mapping(workload.get("inputs", {}), "workload.inputs")
    solution, evaluation = data.get("solution"), data.get("evaluation")
    if evaluated:
        string_field(data, "solution", "trace")
        as_mapping(evaluation, "evaluation")
    elif solution is not None or evaluation is not None:
        raise ValueError("a workloads file holds workload lines only (solution and evaluation null)")
    return definition, workload, solution, evaluation


def workload_to_dataset(definition: str, uuid: str, axes: Mapping[str, int], inputs: Mapping[str, Any]) -> dict:
    """A workload line as the dataset's workloads files write it."""
    return {"definition": definition, "solution": None,
            "workload": {"uuid": uuid, "axes": dict(axes), "inputs": dict(inputs)}, "evaluation": None}

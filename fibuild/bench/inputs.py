"""Inputs of a workload, in the definition's calling order.

Input kinds (:class:`~fibuild.spec.model.InputSpec`): ``random`` (seeded per workload and
input, in the declared dtype, on the target device: floats ~ N(0, 1), integers in [0, 16),
bools fair), ``scalar`` (the value), ``safetensors`` (tensor ``tensor_key`` of a file
whose path is relative to the workspace root and must resolve inside it, e.g.
``registry/<definition>/blobs/<name>.safetensors`` as ``Registry.write_blob`` returns) and
``custom`` (the definition's ``custom_inputs_entrypoint``, a function of the reference
source called as ``fn(axes: dict[str, int], device: torch.device,
generator=torch.Generator)`` returning a dict of input name -> value; the generator is a
CPU one seeded per workload). Tensor inputs without an InputSpec are ``random``.

Every tensor is checked against the workload's axis values and the declared dtype before
anything runs; a mismatch is a BenchError naming the workload and the input.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import BenchError
from ..spec.calling import load_reference
from ..spec.model import Definition, InputSpec, TensorSpec, Workload

# Heavy or optional dependencies, imported inside the functions that use them: torch, safetensors.

#: Integer random inputs are drawn from [0, INT_HIGH): small, non-negative, index-safe for
#: most small dimensions.
INT_HIGH = 16


def workload_axes(defn: Definition, workload: Workload) -> dict[str, int]:
    """Const axes plus the workload's var axes; BenchError if a var axis has no value."""
    axes = dict(defn.const_axes)
    for name in defn.var_axes:
        if name not in workload.axes:
            raise BenchError(f"workload {workload.uuid} of {defn.name}: no value for var axis {name!r}")
        value = workload.axes[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BenchError(f"workload {workload.uuid} of {defn.name}: axis {name}={value!r} "
                             "is not a non-negative integer")
        axes[name] = value
    unknown = sorted(set(workload.axes) - set(defn.var_axes))
    if unknown:
        raise BenchError(f"workload {workload.uuid} of {defn.name}: unknown var axes {unknown}")
    return axes


def input_seed(workload: Workload, input_name: str) -> int:
    """The deterministic seed of one random input: stable across processes and runs."""
    return zlib.crc32(f"{workload.uuid}/{input_name}".encode("utf-8"))


def random_tensor(spec: TensorSpec, shape: Sequence[int], *, seed: int, device) -> Any:
    """A seeded random tensor of ``spec.dtype`` on ``device`` (see the module docstring)."""
    import torch

    dtype = getattr(torch, spec.dtype)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    shape = tuple(int(s) for s in shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen, device=device).bool()
    if dtype.is_floating_point:
        # fp8 has no randn kernel: draw in fp32 and cast.
        return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    return torch.randint(0, INT_HIGH, shape, generator=gen, device=device, dtype=dtype)


def workspace_root(defn: Definition, workload: Workload) -> Path:
    """The workspace root a workload's paths are relative to: the one whose
    ``registry/<definition>/workloads.jsonl`` holds it (a recorded workload may live in the
    user workspace while its definition is the shipped library's), else the one the
    definition lives in (``<root>/defs/<op_type>/<name>.yaml``); BenchError when neither."""
    source = Path(workload.source) if workload.source and workload.source != "declared" else None
    if source is not None and source.name == "workloads.jsonl" and source.parent.parent.name == "registry":
        return source.parents[2]
    if defn.path is not None and Path(defn.path).parent.parent.name == "defs":
        return Path(defn.path).parents[2]
    raise BenchError(f"workload {workload.uuid} of {defn.name}: safetensors inputs need the definition "
                     "to come from a workspace (defs/<op_type>/<name>.yaml); its paths are relative "
                     "to the workspace root")


def _safetensors_path(defn: Definition, workload: Workload, name: str, rel: str) -> Path:
    """``rel`` resolved against the workspace root, symbolic links included, and confined to it."""
    root = workspace_root(defn, workload).resolve()
    candidate = Path(rel)
    path = (root / candidate).resolve()
    if candidate.is_absolute() or ".." in candidate.parts or not path.is_relative_to(root):
        raise BenchError(f"workload {workload.uuid} of {defn.name}: input {name!r}: safetensors path "
                         f"{rel!r} leaves the workspace {root}; give a path relative to the workspace "
                         "root that stays inside it (e.g. registry/<definition>/blobs/<name>.safetensors)")
    return path


def _safetensors_value(defn: Definition, workload: Workload, name: str, spec: InputSpec,
                       files: dict[Path, Mapping[str, Any]]) -> Any:
    if not spec.path or not spec.tensor_key:
        raise BenchError(f"workload {workload.uuid} of {defn.name}: input {name!r}: safetensors "
                         "needs both path and tensor_key")
    path = _safetensors_path(defn, workload, name, spec.path)
    if path not in files:
        try:
            from safetensors.torch import load_file

            files[path] = load_file(str(path), device="cpu")
        except (OSError, ValueError, RuntimeError) as exc:
            raise BenchError(f"workload {workload.uuid} of {defn.name}: input {name!r}: cannot "
                             f"read {path}: {exc}") from exc
    tensors = files[path]
    if spec.tensor_key not in tensors:
        raise BenchError(f"workload {workload.uuid} of {defn.name}: input {name!r}: {path} has no "
                         f"tensor {spec.tensor_key!r} (has {sorted(tensors)})")
    return tensors[spec.tensor_key]


def _custom_values(defn: Definition, workload: Workload, axes: dict[str, int], device,
                   reference_ns: Mapping[str, Any] | None) -> Mapping[str, Any]:
    entry = defn.custom_inputs_entrypoint
    if not entry:
        raise BenchError(f"workload {workload.uuid} of {defn.name}: custom inputs but the definition "
                         "has no custom_inputs_entrypoint")
    if reference_ns is None:
        reference_ns = load_reference(defn)
    fn = reference_ns.get(entry)
    if not callable(fn):
        raise BenchError(f"{defn.name}: custom_inputs_entrypoint {entry!r} is not a function of the reference")
    import torch

    gen = torch.Generator()
    gen.manual_seed(input_seed(workload, entry))
    try:
        values = fn(dict(axes), device, generator=gen)
    except Exception as exc:  # workspace code: any failure is a bad workload, reported as such
        raise BenchError(f"workload {workload.uuid} of {defn.name}: {entry}() failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(values, Mapping):
        raise BenchError(f"{defn.name}: {entry}() returned {type(values).__name__}, expected a dict "
                         "of input name -> value")
    return values


def check_tensor(defn: Definition, workload: Workload, spec: TensorSpec, value: Any,
                 axes: Mapping[str, int]) -> None:
    """BenchError unless ``value`` has the rank, axis sizes and dtype ``spec`` declares."""
    import torch

    where = f"workload {workload.uuid} of {defn.name}: input {spec.name!r}"
    if spec.is_scalar:
        if isinstance(value, torch.Tensor) and value.dim() != 0:
            raise BenchError(f"{where}: declared scalar, got a tensor of shape {tuple(value.shape)}")
        return
    if not isinstance(value, torch.Tensor):
        raise BenchError(f"{where}: expected a tensor, got {type(value).__name__}")
    expected = tuple(axes[a] for a in spec.shape)
    if tuple(value.shape) != expected:
        names = ", ".join(f"{a}={axes[a]}" for a in spec.shape)
        raise BenchError(f"{where}: shape {tuple(value.shape)} does not match the axes ({names})")
    if value.dtype != getattr(torch, spec.dtype):
        raise BenchError(f"{where}: dtype {str(value.dtype).removeprefix('torch.')} is not the "
                         f"declared {spec.dtype}")


def make_inputs(defn: Definition, workload: Workload, *, device="cpu",
                reference_ns: Mapping[str, Any] | None = None) -> list[Any]:
    """The inputs of ``workload`` in calling order, on ``device``, checked against the axes.

    ``reference_ns`` (from ``load_reference``) is used for custom inputs; it is loaded when
    needed and not given. Raises BenchError naming the workload and input on any problem.
    Cost: one allocation per tensor input (plus file reads for safetensors).
    """
    import torch

    device = torch.device(device)
    axes = workload_axes(defn, workload)
    unknown = sorted(set(workload.inputs) - {s.name for s in defn.inputs})
    if unknown:
        raise BenchError(f"workload {workload.uuid} of {defn.name}: inputs {unknown} are not inputs "
                         "of the definition")
    files: dict[Path, Mapping[str, Any]] = {}
    custom: Mapping[str, Any] | None = None
    args: list[Any] = []
    for spec in defn.inputs:
        how = workload.inputs.get(spec.name)
        where = f"workload {workload.uuid} of {defn.name}: input {spec.name!r}"
        if how is None:
            if spec.is_scalar:
                raise BenchError(f"{where}: a scalar input needs a value (kind: scalar)")
            how = InputSpec(kind="random")
        if how.kind == "random":
            if spec.is_scalar:
                raise BenchError(f"{where}: a scalar input cannot be random; give kind: scalar")
            value = random_tensor(spec, [axes[a] for a in spec.shape], seed=input_seed(workload, spec.name),
                                  device=device)
        elif how.kind == "scalar":
            if how.value is None:
                raise BenchError(f"{where}: kind scalar without a value")
            value = how.value
        elif how.kind == "safetensors":
            value = _safetensors_value(defn, workload, spec.name, how, files)
        elif how.kind == "custom":
            if custom is None:
                custom = _custom_values(defn, workload, axes, device, reference_ns)
            if spec.name not in custom:
                raise BenchError(f"{where}: {defn.custom_inputs_entrypoint}() gave no value for it")
            value = custom[spec.name]
        else:
            raise BenchError(f"{where}: unknown input kind {how.kind!r}")
        if isinstance(value, torch.Tensor) and not spec.is_scalar:
            value = value.to(device)
        check_tensor(defn, workload, spec, value, axes)
        args.append(value)
    return args


def clone_inputs(args: Sequence[Any]) -> list[Any]:
    """A fresh copy of ``args``: tensors cloned (so in-place writes stay private), others kept."""
    import torch

    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]

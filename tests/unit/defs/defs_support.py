"""Helpers shared by the tests of the shipped definitions and solutions.

Inputs are made the way the benchmark runner makes them (``fibuild.bench.inputs``):
floats ~ N(0, 1) drawn in fp32 and cast to the declared dtype, scalars from the workload,
custom inputs from the definition's ``custom_inputs_entrypoint`` called as
``fn(axes, device)``. Values are compared as the runner does: an element passes when
``|a - b| <= atol + rtol * |b|``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import math
import re
import sys

import torch

from fibuild.spec.calling import load_reference, make_caller, solution_caller
from fibuild.spec.model import Definition, Solution, Workload
from fibuild.spec.workspace import Workspace, shipped_root

ROOT = shipped_root()


def workspace() -> Workspace:
    return Workspace(ROOT)


def workload_axes(defn: Definition, workload: Workload) -> dict[str, int]:
    return {**defn.const_axes, **workload.axes}


def input_bytes(defn: Definition, workload: Workload) -> int:
    """Bytes of all tensor inputs of ``workload``: its size, for ordering."""
    axes = workload_axes(defn, workload)
    total = 0
    for spec in defn.inputs:
        if spec.is_scalar:
            continue
        itemsize = torch.empty((), dtype=getattr(torch, spec.dtype)).element_size()
        total += math.prod(axes[a] for a in spec.shape) * itemsize
    return total


def smallest_workloads(defn: Definition, count: int = 2) -> list[Workload]:
    return sorted(defn.workloads, key=lambda w: input_bytes(defn, w))[:count]


def make_inputs(defn: Definition, workload: Workload, *, seed: int = 0, device="cpu") -> list:
    """The workload's inputs in calling order (see the module docstring)."""
    axes = workload_axes(defn, workload)
    torch.manual_seed(seed)  # custom entrypoints draw from the global generator, as under the bench
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    custom = None
    args = []
    for spec in defn.inputs:
        how = workload.inputs.get(spec.name)
        kind = how.kind if how is not None else "random"
        if kind == "scalar":
            args.append(how.value)
        elif kind == "custom":
            if custom is None:
                fn = load_reference(defn)[defn.custom_inputs_entrypoint]
                custom = fn(dict(axes), torch.device(device))
            args.append(custom[spec.name])
        elif kind == "random":
            shape = [axes[a] for a in spec.shape]
            args.append(torch.randn(shape, generator=gen, device=device).to(getattr(torch, spec.dtype)))
        else:
            raise ValueError(f"{defn.name}: input {spec.name}: unsupported kind {kind!r} in these tests")
    return args


def clone(args: list) -> list:
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def as_list(value) -> list:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def reference_outputs(defn: Definition, args: list) -> list:
    """Every output of the reference on a private copy of ``args``, in declaration order."""
    call = make_caller(defn, load_reference(defn)["run"], destination_passing_style=False)
    return as_list(call(*clone(args)))


def load_entry(sol: Solution):
    """Import a python solution's entry point from its source files (its folder and its
    libraries' as one package, as a build sees them); a plan/run solution's plan and run
    joined as fibuild loads them (a PlannedEntry)."""
    package = re.sub(r"\W", "_", f"fibuild_test_{sol.definition}_{sol.name}")
    if package not in sys.modules:
        sys.modules[package] = importlib.util.module_from_spec(
            importlib.machinery.ModuleSpec(package, None, is_package=True))
        sys.modules[package].__path__ = [str(d) for d in sol.source_dirs]
    module = importlib.import_module(package + "." + sol.entry_file[:-3].replace("/", "."))
    entry = getattr(module, sol.entry_symbol)
    constants = dict(sol.constants)  # bound as the build binds them (fibuild.compile.builders.loading)
    if not sol.plan:
        return functools.partial(entry, **constants) if constants else entry
    from fibuild.compile.plans import PlannedEntry

    if sol.plan_file != sol.entry_file:
        raise ValueError(f"{sol.qualified_name}: the test loader expects the plan in the entry's file")
    defn = workspace().definition(sol.definition)
    positions = [i for i, s in enumerate(defn.inputs) if s.structural]
    plan = getattr(module, sol.plan_symbol)
    plan = functools.partial(plan, **constants) if constants else plan
    return PlannedEntry(entry, plan, positions, name=sol.qualified_name)


def solution_outputs(defn: Definition, sol: Solution, entry, args: list) -> list:
    """Every output of ``entry`` called through the user-facing convention on a copy of ``args``."""
    return as_list(solution_caller(defn, sol, entry)(*clone(args)))


def mismatches(defn: Definition, got: list, expected: list) -> list[str]:
    """What is wrong with ``got`` against ``expected``: shape, dtype, or values beyond tolerance."""
    problems = []
    if len(got) != len(expected):
        return [f"{len(got)} outputs, expected {len(expected)}"]
    atol, rtol = defn.tolerance.atol, defn.tolerance.rtol
    for spec, a, b in zip(defn.outputs, got, expected):
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            problems.append(f"{spec.name}: {tuple(a.shape)} {a.dtype}, expected {tuple(b.shape)} {b.dtype}")
            continue
        a64, b64 = a.double(), b.double()
        same = a64 == b64  # covers matching infinities
        bad = ~same & ~((a64 - b64).abs() <= atol + rtol * b64.abs())
        if bool(bad.any()):
            worst = float(torch.where(same, torch.zeros_like(a64), (a64 - b64).abs()).nan_to_num(math.inf).max())
            problems.append(f"{spec.name}: {int(bad.sum())} elements beyond atol={atol} rtol={rtol} "
                            f"(max abs error {worst:.4g})")
    return problems


def declared_shape(defn: Definition, workload: Workload, spec) -> tuple[int, ...]:
    axes = workload_axes(defn, workload)
    return tuple(axes[a] for a in spec.shape or ())

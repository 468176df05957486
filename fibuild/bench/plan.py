"""What a benchmark run will do: the (definition, solution, workloads) groups it runs and
what it skips, for the single-device and the distributed runner. Builds and runs nothing.

A solution is skipped when its ``target_hardware`` does not match the device
(:meth:`fibuild.devices.Device.matches`, the rule the resolver applies too), so nothing
is benched that the resolver would exclude.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

from ..devices import Device
from ..errors import BenchError
from ..spec.model import Definition, Solution, Workload


@dataclass(frozen=True)
class PlannedSolution:
    """A solution to run on some workloads of its definition: the unit every executor takes."""

    definition: Definition
    solution: Solution
    workloads: tuple[Workload, ...]


@dataclass
class BenchPlan:
    """What a run will do: ``groups`` to run, ``skipped`` (qualified name, reason) pairs."""

    device: str
    groups: list[PlannedSolution] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(g.workloads) for g in self.groups)


def _check_limit(workload_limit: int | None, variant_limit: int | None = None) -> None:
    if workload_limit is not None and workload_limit < 1:
        raise BenchError(f"--workload-limit {workload_limit}: expected a positive number")
    if variant_limit is not None and variant_limit < 1:
        raise BenchError(f"--variant-limit {variant_limit}: expected a positive number")


def _add_solutions(plan: BenchPlan, workspace, defn: Definition, workloads: tuple[Workload, ...],
                   device: Device, wanted: set[str], matched: set[str], variant_limit: int | None = None) -> None:
    """Add ``defn``'s solutions to ``plan``: those named in ``wanted`` (all when empty; a
    grid's plain name names all its variants) that match ``device``; names found go into
    ``matched``. ``variant_limit``: at most that many variants of one grid per workload."""
    for sol in workspace.solutions(defn.name):
        if wanted:
            hits = {sol.name, sol.qualified_name, sol.family, f"{sol.definition}/{sol.family}"} & wanted
            if not hits:
                continue
            matched |= hits
        why = device.mismatch(sol.target_hardware)
        if why:
            plan.skipped.append((sol.qualified_name, why))
            continue
        if not workloads:
            plan.skipped.append((sol.qualified_name, f"{defn.name} has no workloads"))
            continue
        plan.groups.append(PlannedSolution(defn, sol, workloads))
    if variant_limit is not None:
        plan.groups = _limit_variants(plan.groups, defn.name, variant_limit)


def _limit_variants(groups: list[PlannedSolution], definition: str, limit: int) -> list[PlannedSolution]:
    """``groups`` with each grid's variants cut to ``limit`` per workload of ``definition``:
    a spread of the grid that differs per workload (ordered by a hash of the workload and
    the variant's name), so together the workloads still cover the grid. Other groups stay."""
    families: dict[str, list[PlannedSolution]] = {}
    for g in groups:
        if g.definition.name == definition and g.solution.variants:
            families.setdefault(g.solution.family, []).append(g)
    kept: dict[str, list[Workload]] = {}
    for members in families.values():
        if len(members) <= limit:
            continue
        for workload in members[0].workloads:
            def order(g: PlannedSolution) -> str:
                return hashlib.sha256(f"{workload.uuid}/{g.solution.name}".encode()).hexdigest()
            for g in sorted(members, key=order)[:limit]:
                kept.setdefault(g.solution.name, []).append(workload)
        for g in members:
            kept.setdefault(g.solution.name, [])
    out = []
    for g in groups:
        if g.definition.name != definition or g.solution.name not in kept:
            out.append(g)
        elif kept[g.solution.name]:
            out.append(PlannedSolution(g.definition, g.solution, tuple(kept[g.solution.name])))
    return out


def _refuse_unknown(wanted: set[str], matched: set[str], where: str) -> None:
    unknown = sorted(wanted - matched)
    if unknown:
        raise BenchError(f"no solution named {', '.join(unknown)} among the solutions of {where}")


def _workloads(workspace, defn: Definition, recorded_only: bool) -> tuple[Workload, ...]:
    return tuple(workspace.recorded_workloads(defn) if recorded_only else workspace.workloads(defn))


def plan_benchmarks(workspace, definitions: Sequence[str] = (), *, solutions: Sequence[str] | None = None,
                    device: str = "cpu", workload_limit: int | None = None,
                    recorded_only: bool = False, variant_limit: int | None = None) -> BenchPlan:
    """Choose what to run: the named definitions (all when empty), their solutions (only
    those named in ``solutions``, as ``sol`` or ``def/sol``, when given) that match
    ``device`` (a kind; ``cuda`` is matched as ``cuda:0``), and their first
    ``workload_limit`` workloads (``recorded_only``: of those recorded in the registry,
    traced or imported, not those the manifests declare), with at most ``variant_limit``
    variants of a grid per workload. Distributed definitions are skipped.

    Raises ConfigError for an unusable device, BenchError / ManifestError naming unknown
    definitions or solutions. Cost: a device probe (cached) and manifest reads.
    """
    _check_limit(workload_limit, variant_limit)
    target = Device.parse(device)
    names = list(definitions) or sorted(workspace.definitions)
    defns = [workspace.definition(name) for name in names]
    wanted, matched = set(solutions or ()), set()
    plan = BenchPlan(device=device)
    for defn in defns:
        if defn.distributed is not None:  # needs a process group: fibuild.bench.distributed
            plan.skipped.append((defn.name, "runs on several ranks: bench it with --world-size N"))
            continue
        workloads = _workloads(workspace, defn, recorded_only)[:workload_limit]
        _add_solutions(plan, workspace, defn, workloads, target, wanted, matched, variant_limit)
    _refuse_unknown(wanted, matched, ", ".join(names) or "the workspace")
    return plan


def plan_distributed(workspace, definition: str, *, world_size: int, solutions: Sequence[str] | None = None,
                     device: str = "cpu", workload_limit: int | None = None,
                     recorded_only: bool = False) -> BenchPlan:
    """Choose what a distributed run does: the solutions of ``definition`` (those named, as
    ``sol`` or ``def/sol``, when given) that match ``device`` (``cpu``, or ``cuda``: rank r
    on ``cuda:r``, matched as ``cuda:0``), on the first ``workload_limit`` workloads whose
    world-size axis equals ``world_size`` (``recorded_only``: among the registry's).

    Raises BenchError for a definition without a ``distributed`` section, a world size no
    workload declares (or other than a const axis's value), unknown solutions, bad options;
    ConfigError for an unusable device. Builds and runs nothing.
    """
    if world_size < 1:
        raise BenchError(f"--world-size {world_size}: expected a positive number")
    _check_limit(workload_limit)
    if device not in ("cpu", "cuda"):
        raise BenchError(f"device {device!r}: a distributed run takes cpu or cuda (rank r uses cuda:r)")
    defn = workspace.definition(definition)
    if defn.distributed is None:
        raise BenchError(f"{defn.name} runs in one process (its definition has no `distributed` "
                         "section): bench it without --world-size")
    axis_name = defn.distributed.world_size_axis
    axis = defn.axes[axis_name]
    every = _workloads(workspace, defn, recorded_only)
    if axis.kind == "const":
        if axis.value != world_size:
            raise BenchError(f"{defn.name}: {axis_name} is const {axis.value}; got --world-size {world_size}")
        workloads = every
    else:
        workloads = tuple(w for w in every if w.axes.get(axis_name) == world_size)
        if not workloads:
            sizes = sorted({w.axes.get(axis_name) for w in every if axis_name in w.axes})
            raise BenchError(f"{defn.name} has no workloads with {axis_name}={world_size} "
                             f"(its workloads have {axis_name} in {sizes or 'none'})")
    wanted, matched = set(solutions or ()), set()
    plan = BenchPlan(device=device)
    _add_solutions(plan, workspace, defn, workloads[:workload_limit], Device.parse(device), wanted, matched)
    _refuse_unknown(wanted, matched, defn.name)
    return plan

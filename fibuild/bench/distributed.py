"""Distributed benchmark runner: check and time a definition on every rank of a process group.

For definitions with a ``distributed`` section (see :class:`fibuild.spec.model.Distributed`).
:func:`run_distributed` starts ``world_size`` rank processes
(``python -m fibuild.bench.distributed_rank``, one OS process group, a FileStore
rendezvous in a fresh temporary directory), backend gloo on CPU and NCCL on CUDA with one GPU
a rank (``cuda:0`` ... ``cuda:N-1``). Every rank makes its inputs from the workload's seeds
(per-rank inputs salted with the rank), runs the reference and the solution, checks its own
outputs, and times the collective (CPU: ``perf_counter_ns`` after a barrier; CUDA: CUDA-graph
replays). The parent merges the ranks' replies into ONE evaluation per (workload, solution),
with the world size in its axes, and appends it to the registry: the parent writes, so a
crash of rank 0 is recorded too.

A rank that crashes makes the item ``RUNTIME_ERROR``, one that does not answer within the
timeout ``TIMEOUT``; either way every rank is killed (the OS process group) and the next item
runs on a fresh group. Every wait is bounded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import BenchError
from ..spec.model import Definition, Evaluation, Solution, Workload
from .rank_group import RankGroup, merge_outcome
from .reporter import BenchReporter
from .runner import (
    DEFAULT_REP_MS,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WARMUP_MS,
    BenchPlan,
    PlannedSolution,
    build_for_bench,
    default_device,
    runs_on,
    utc_timestamp,
)


def rank_devices(device: str, world_size: int) -> list[str]:
    """The device of each rank: ``cpu`` for all, or ``cuda:0`` ... ``cuda:N-1``.

    Raises BenchError for ``cuda:N`` (ranks take GPUs 0..N-1) or too few visible GPUs.
    """
    if device == "cpu":
        return ["cpu"] * world_size
    if device != "cuda":
        raise BenchError(f"device {device!r}: a distributed run takes cpu or cuda (rank r uses cuda:r)")
    import torch

    count = torch.cuda.device_count()
    if count < world_size:
        raise BenchError(f"--world-size {world_size} needs {world_size} GPUs, one a rank; "
                         f"{count} visible")
    return [f"cuda:{r}" for r in range(world_size)]


def plan_distributed(workspace, definition: str, *, world_size: int, solutions: Sequence[str] | None = None,
                     device: str = "cpu", workload_limit: int | None = None) -> BenchPlan:
    """Choose what a distributed run does: the solutions of ``definition`` (those named, as
    ``sol`` or ``def/sol``, when given) that run on ``device``, on the first
    ``workload_limit`` workloads whose world-size axis equals ``world_size``.

    Raises BenchError for a definition without a ``distributed`` section, a world size no
    workload declares (or other than a const axis's value), unknown solutions, bad options.
    Builds and runs nothing.
    """
    if world_size < 1:
        raise BenchError(f"--world-size {world_size}: expected a positive number")
    if workload_limit is not None and workload_limit < 1:
        raise BenchError(f"--workload-limit {workload_limit}: expected a positive number")
    if device not in ("cpu", "cuda"):
        raise BenchError(f"device {device!r}: a distributed run takes cpu or cuda (rank r uses cuda:r)")
    kind = device
    defn = workspace.definition(definition)
    if defn.distributed is None:
        raise BenchError(f"{defn.name} runs in one process (its definition has no `distributed` "
                         "section): bench it without --world-size")
    axis_name = defn.distributed.world_size_axis
    axis = defn.axes[axis_name]
    every = tuple(workspace.workloads(defn))
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
    workloads = workloads[:workload_limit]
    wanted = set(solutions or ())
    matched: set[str] = set()
    plan = BenchPlan(device=device)
    for sol in workspace.solutions(defn.name):
        if wanted:
            hits = {sol.name, sol.qualified_name} & wanted
            if not hits:
                continue
            matched |= hits
        if not runs_on(sol, kind):
            plan.skipped.append((sol.qualified_name, f"target_hardware {list(sol.target_hardware)} "
                                                     f"does not include {kind}"))
            continue
        plan.groups.append(PlannedSolution(defn, sol, workloads))
    unknown = sorted(wanted - matched)
    if unknown:
        raise BenchError(f"no solution named {', '.join(unknown)} among the solutions of {defn.name}")
    return plan


@dataclass(frozen=True)
class _Item:
    index: int
    definition: Definition
    solution: Solution
    workload: Workload
    build_key: str
    solution_digest: str


def _evaluation(item: _Item, slug: str, status: str, environment: dict[str, Any], *,
                merged: dict[str, Any] | None = None, error: str = "") -> Evaluation:
    merged = merged or {}
    latency, ref = merged.get("latency"), merged.get("reference_latency")
    speedup = None
    if latency and ref and latency.median_us > 0 and ref.median_us > 0:
        speedup = ref.median_us / latency.median_us
    env = dict(environment)
    if merged.get("timing"):
        env["timing"] = merged["timing"]
    return Evaluation(
        definition=item.definition.name, solution=item.solution.name, solution_digest=item.solution_digest,
        build_key=item.build_key, workload_uuid=item.workload.uuid, axes=dict(item.workload.axes),
        status=status, device=slug, latency=latency, reference_latency=ref, speedup=speedup,
        max_abs_error=merged.get("max_abs_error"), max_rel_error=merged.get("max_rel_error"),
        error=error[-4000:], environment=env, timestamp=utc_timestamp())


def run_distributed(workspace, settings, definition: str, *, world_size: int,
                    solutions: Sequence[str] | None = None, device: str | None = None,
                    workload_limit: int | None = None, warmup_ms: float = DEFAULT_WARMUP_MS,
                    rep_ms: float = DEFAULT_REP_MS, timeout_s: float = DEFAULT_TIMEOUT_S,
                    reporter: BenchReporter | None = None, record: bool = True,
                    plan: BenchPlan | None = None) -> list[Evaluation]:
    """Check and time ``definition``'s solutions on ``world_size`` ranks; return one
    Evaluation per (workload, solution), appended to ``workspace.registry_dir`` as each
    completes when ``record``.

    ``device``: ``cpu`` (gloo) or ``cuda`` (NCCL, rank r on ``cuda:r``); default from
    :func:`fibuild.bench.runner.default_device`. ``timeout_s`` bounds each item on every rank
    (reference + check + timing). ``plan`` reuses a :func:`plan_distributed` result.
    Builds happen here first (a BuildError becomes COMPILE_ERROR records). Raises BenchError
    for bad options, too few GPUs, or ranks that cannot start; kernel failures, crashes and
    hangs are statuses. Ctrl-C kills the ranks and re-raises. Cost: per group start, the
    ranks' torch import and rendezvous (seconds); per item about ``warmup_ms + rep_ms`` for
    the solution, plus that once per workload and group for the reference.
    """
    from ..compile.cache import BuildCache
    from ..compile.keys import solution_digest
    from ..devices import device_environment, device_slug
    from ..registry import Registry
    from .worker import settings_to_json, workload_to_json

    reporter = reporter or BenchReporter()
    device = plan.device if plan is not None else (device or default_device(settings))
    if warmup_ms < 0 or rep_ms <= 0 or timeout_s <= 0:
        raise BenchError("warm-up must be >= 0 ms, repetition time and timeout > 0")
    if plan is None:
        plan = plan_distributed(workspace, definition, world_size=world_size, solutions=solutions,
                                device=device, workload_limit=workload_limit)
    devices = rank_devices(device, world_size)
    backend = "gloo" if device == "cpu" else "nccl"
    slug = device_slug(devices[0])
    where = f"{world_size} ranks on {device} ({backend})"
    for name, reason in plan.skipped:
        reporter.skipped(name, reason)
    registry = Registry(workspace.registry_dir) if record else None
    group_env = {"world_size": world_size, "backend": backend}
    results: list[Evaluation] = []

    def finish(evaluation: Evaluation) -> None:
        if registry is not None:
            registry.append(evaluation)
        results.append(evaluation)
        reporter.item_finished(evaluation)

    reporter.starting(plan.total, slug)
    cache = BuildCache(settings)
    items: list[_Item] = []
    order = {wl.uuid: i for planned in plan.groups for i, wl in enumerate(planned.workloads)}
    for planned in plan.groups:
        defn, sol = planned.definition, planned.solution
        digest = solution_digest(defn, sol)
        key, error = build_for_bench(cache, settings, defn, sol, reporter)
        if error is not None:
            env = {**device_environment(devices[0]), **group_env}
            for wl in planned.workloads:
                finish(_evaluation(_Item(len(items), defn, sol, wl, key, digest), slug, "COMPILE_ERROR", env,
                                   error=error))
            continue
        for wl in planned.workloads:
            items.append(_Item(len(items), defn, sol, wl, key, digest))
    # Workload-major: consecutive items share a workload, so a group computes its reference once.
    items.sort(key=lambda it: (order[it.workload.uuid], it.index))
    # Ranks load solutions from this workspace, whatever root the settings named.
    settings_json = settings_to_json(dataclasses.replace(settings, root=Path(workspace.root)))
    group: RankGroup | None = None
    try:
        for item in items:
            if group is None:
                group = RankGroup(settings_json, devices, backend, timeout_s).start()
            reporter.item_started(item.solution.qualified_name, item.workload.uuid, where)
            outcome = group.request({"op": "run", "id": item.index, "definition": item.definition.name,
                                     "solution": item.solution.qualified_name,
                                     "workload": workload_to_json(item.workload),
                                     "warmup_ms": warmup_ms, "rep_ms": rep_ms}, timeout_s)
            status, merged, error = merge_outcome(outcome, timeout_s)
            finish(_evaluation(item, slug, status, {**group.environment, **group_env}, merged=merged,
                               error=error))
            if outcome.broken:
                group.kill()
                group = None
                reporter.worker_replaced(where, error.splitlines()[0] if error else status)
    except BaseException:  # Ctrl-C or a failed start: no rank outlives the run
        if group is not None:
            group.kill()
            group = None
        raise
    finally:
        if group is not None:
            group.close()
    reporter.finished(results)
    return results

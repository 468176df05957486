"""Distributed benchmark runner: check and time a definition on every rank of a process group.

For definitions with a ``distributed`` section (see :class:`fibuild.spec.model.Distributed`).
:func:`execute_distributed` starts ``world_size`` rank processes
(``python -m fibuild.bench.distributed_rank``, one OS process group, a FileStore
rendezvous in a fresh temporary directory, NVLink multicast off), backend gloo on CPU and
NCCL on CUDA with one GPU a rank (``cuda:0`` ... ``cuda:N-1``). Every rank makes its inputs
from the workload's seeds (per-rank inputs salted with the rank), runs the reference and the
solution, checks its own outputs, and times the collective (CPU: ``perf_counter_ns`` after a
barrier; CUDA: CUDA-graph replays). The parent merges the ranks' replies into ONE evaluation
per (workload, solution), with the world size in its axes, and hands it to the sink: the
parent writes, so a crash of rank 0 is recorded too.

Per group and solution a *prepare* step comes first, as in the single-device runner: every
rank's load and first call (JIT builds, IPC workspaces) under the prepare allowance (a
distributed definition declares its workspaces); overrunning it is TIMEOUT, the phase named.
A rank that crashes makes the item ``RUNTIME_ERROR``, one that does not answer within the
timeout ``TIMEOUT``; either way every rank is killed (the OS process group) and the next
item runs on a fresh group. A rank killed from outside is retried once, then
``WORKER_KILLED``. Every wait is bounded.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from ..devices import Device, cuda_count, default_device
from ..errors import BenchError
from ..registry import Registry
from ..spec.model import Evaluation
from .plan import BenchPlan, PlannedSolution, plan_distributed
from .protocol import settings_to_json
from .rank_group import RankGroup, merge_outcome
from .records import BenchItem, build_items, evaluation
from .reporter import BenchReporter
from .runner import DEFAULT_REP_MS, DEFAULT_TIMEOUT_S, DEFAULT_WARMUP_MS, RunOptions, first_call_work, prepare_overrun


def rank_devices(device: str, world_size: int) -> list[str]:
    """The device of each rank: ``cpu`` for all, or ``cuda:0`` ... ``cuda:N-1``.

    Raises BenchError for ``cuda:N`` (ranks take GPUs 0..N-1) or too few visible GPUs.
    """
    if device == "cpu":
        return ["cpu"] * world_size
    if device != "cuda":
        raise BenchError(f"device {device!r}: a distributed run takes cpu or cuda (rank r uses cuda:r)")
    count = cuda_count()
    if count < world_size:
        raise BenchError(f"--world-size {world_size} needs {world_size} GPUs, one a rank; "
                         f"{count} visible")
    return [f"cuda:{r}" for r in range(world_size)]


class _GroupRun:
    """The rank group of one distributed run: started on demand, torn down after a failure,
    with the solutions it has prepared (solution -> prepare_s)."""

    def __init__(self, settings, devices: list[str], backend: str, options: RunOptions,
                 prepare_s: float, reporter: BenchReporter):
        self.settings_json = settings_to_json(settings)
        self.devices, self.backend, self.options = devices, backend, options
        self.prepare_limit = prepare_s
        self.reporter = reporter
        self.where = f"{len(devices)} ranks on {'cpu' if devices[0] == 'cpu' else 'cuda'} ({backend})"
        self.group: RankGroup | None = None
        self.environment: dict = {}
        self.prepared: dict[str, float | None] = {}
        self.unpreparable: dict[str, str] = {}

    def _ensure(self) -> RankGroup:
        if self.group is None:
            # Collectives inside a first call may wait for another rank's JIT build.
            longest = max(self.options.timeout_s, self.prepare_limit)
            self.group = RankGroup(self.settings_json, self.devices, self.backend, longest).start()
            self.environment = self.group.environment
            self.prepared = {}
        return self.group

    def tear_down(self, reason: str) -> None:
        if self.group is not None:
            self.group.kill()
            self.group = None
            self.reporter.worker_replaced(self.where, reason)

    def run(self, item: BenchItem) -> tuple[str, dict, str, float | None]:
        """(status, merged reply, error, prepare_s) of one item; a group with a rank killed
        from outside gets one more try on a fresh group."""
        for attempt in (1, 2):
            status, merged, error = self._attempt(item)
            if status != "WORKER_KILLED" or attempt == 2:
                break
        name = item.solution.qualified_name
        prepare_s = self.prepared.get(name, merged.get("prepare_s"))
        return status, merged, error, prepare_s

    def _attempt(self, item: BenchItem) -> tuple[str, dict, str]:
        name = item.solution.qualified_name
        if name in self.unpreparable:
            return "TIMEOUT", {}, self.unpreparable[name]
        group = self._ensure()
        options = self.options.messages()
        if name not in self.prepared:
            # A distributed definition always declares first-call work (its workspaces).
            outcome = group.request(item.message("prepare", options), self.prepare_limit)
            status, merged, error = merge_outcome(outcome, self.prepare_limit)
            if outcome.silent:
                error = prepare_overrun(self.prepare_limit, group.stderr_tail(),
                                        work=first_call_work(item.definition, item.solution))
                self.unpreparable[name] = error
            if status != "PASSED":
                if outcome.broken:
                    self.tear_down(error.splitlines()[0] if error else status)
                return status, merged, error
            self.prepared[name] = merged.get("prepare_s")
        outcome = group.request(item.message("run", options), self.options.timeout_s)
        status, merged, error = merge_outcome(outcome, self.options.timeout_s)
        if outcome.broken:
            self.tear_down(error.splitlines()[0] if error else status)
        return status, merged, error

    def close(self, kill: bool) -> None:
        if self.group is not None:
            self.group.kill() if kill else self.group.close()
            self.group = None


def execute_distributed(groups: Sequence[PlannedSolution], settings, device: str, world_size: int, *,
                        options: RunOptions = RunOptions(), reporter: BenchReporter | None = None,
                        sink: Callable[[Evaluation], None] | None = None) -> list[Evaluation]:
    """Build, check and time ``groups`` on ``world_size`` ranks of this machine (``device``
    ``cpu``: gloo; ``cuda``: NCCL, rank r on ``cuda:r``); return one Evaluation per item,
    each passed to ``sink`` as it completes. Ranks load solutions from ``settings.root``.

    Raises BenchError for bad options, too few GPUs, or ranks that cannot start; kernel
    failures, crashes and hangs are statuses. Ctrl-C kills the ranks and re-raises. Cost:
    per group start, the ranks' torch import and rendezvous (seconds); per solution its
    first call; per item about ``warmup_ms + rep_ms``, plus that once per workload and group
    for the reference.
    """
    reporter = reporter or BenchReporter()
    options.check()
    devices = rank_devices(device, world_size)
    backend = "gloo" if device == "cpu" else "nccl"
    first = Device.parse(devices[0])
    group_env = {"world_size": world_size, "backend": backend}
    results: list[Evaluation] = []

    def finish(ev: Evaluation) -> None:
        if sink is not None:
            sink(ev)
        results.append(ev)
        reporter.item_finished(ev)

    reporter.starting(sum(len(g.workloads) for g in groups), first.slug)
    env = {**first.environment(), **group_env}
    items = build_items(groups, settings, reporter,
                        lambda item, error: finish(evaluation(item, first.slug, "COMPILE_ERROR", env, error=error)))
    runs = _GroupRun(settings, devices, backend, options,
                     options.prepare_timeout_s or settings.prepare_timeout_s, reporter)
    try:
        for item in items:
            reporter.item_started(item.solution.qualified_name, item.workload.uuid, runs.where)
            status, merged, error, prepare_s = runs.run(item)
            finish(evaluation(item, first.slug, status, {**(runs.environment or env), **group_env},
                              reply=merged, error=error, prepare_s=prepare_s))
    except BaseException:  # Ctrl-C or a failed start: no rank outlives the run
        runs.close(kill=True)
        raise
    finally:
        runs.close(kill=False)
    reporter.finished(results)
    return results


def run_distributed(workspace, settings, definition: str, *, world_size: int,
                    solutions: Sequence[str] | None = None, device: str | None = None,
                    workload_limit: int | None = None, warmup_ms: float = DEFAULT_WARMUP_MS,
                    rep_ms: float = DEFAULT_REP_MS, timeout_s: float = DEFAULT_TIMEOUT_S,
                    prepare_timeout_s: float | None = None, reporter: BenchReporter | None = None,
                    record: bool = True, plan: BenchPlan | None = None) -> list[Evaluation]:
    """Check and time ``definition``'s solutions on ``world_size`` ranks; return one
    Evaluation per (workload, solution), appended to ``workspace.registry_dir`` as each
    completes when ``record``.

    ``device``: ``cpu`` (gloo) or ``cuda`` (NCCL, rank r on ``cuda:r``); default from
    :func:`fibuild.devices.default_device`. ``timeout_s`` bounds each item on every rank
    (reference + check + timing) after the solution's first call, which
    ``prepare_timeout_s`` bounds (default ``FIBUILD_PREPARE_TIMEOUT``). ``plan`` reuses a
    :func:`plan_distributed` result. Raises as :func:`execute_distributed` and
    :func:`plan_distributed`.
    """
    reporter = reporter or BenchReporter()
    options = RunOptions(warmup_ms, rep_ms, False, timeout_s, prepare_timeout_s)
    options.check()
    device = plan.device if plan is not None else (device or default_device(settings))
    if plan is None:
        plan = plan_distributed(workspace, definition, world_size=world_size, solutions=solutions,
                                device=device, workload_limit=workload_limit)
    rank_devices(device, world_size)  # too few GPUs: refuse before building anything
    for name, reason in plan.skipped:
        reporter.skipped(name, reason)
    registry = Registry.of(workspace) if record else None
    if record and plan.total:
        workspace.ensure_writable()  # before anything is measured, not after
    # Ranks load solutions from this workspace, whatever root the settings named.
    rank_settings = dataclasses.replace(settings, root=Path(workspace.root))
    return execute_distributed(plan.groups, rank_settings, device, world_size, options=options,
                               reporter=reporter, sink=registry.append if registry is not None else None)

"""The farm driver: plan tasks per device type of the cluster, submit them, record results.

Engine-neutral: the engine (:class:`fibuild.bench.farm.dask_engine.DaskEngine`) places tasks
and reports outcomes; this module decides what to run, skips what is already recorded
(``--resume``), appends each record to ``registry/<definition>/<worker's device slug>.jsonl``
as its task comes back, and turns a task that could not finish (its workers died, or it
raised) into RUNTIME_ERROR records that say why.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...compile.keys import solution_digest
from ...errors import BenchError, FibuildError
from ...registry import Registry, evaluation_from_dict
from ...spec.model import Evaluation
from ..plan import BenchPlan, PlannedSolution, plan_benchmarks
from ..records import utc_timestamp
from . import bundle as bundles
from .task import make_task

#: Workloads per task: small enough to spread a definition over the farm, large enough that
#: a task's worker process start (torch import) is paid over several items.
DEFAULT_TASK_SIZE = 8
#: Seconds between two looks at the cluster for progress.
POLL_S = 0.5
#: Seconds a device type may have no worker before its remaining items are recorded as lost.
NO_WORKER_S = 120.0


class FarmReporter:
    """No-op progress hooks of a farm run; the CLI renders them, tests record them."""

    def skipped(self, solution: str, reason: str) -> None:
        """``solution`` will not run on this kind of device, and why."""

    def resumed(self, device: str, count: int) -> None:
        """``count`` items already recorded for ``device`` are skipped (``--resume``)."""

    def starting(self, total: int, workers: Mapping[str, str]) -> None:
        """About to run ``total`` items on ``workers`` (address -> device slug)."""

    def item_finished(self, evaluation: Evaluation, worker: str) -> None:
        """One record came back from ``worker`` and was appended to the registry."""

    def progress(self, workers: Mapping[str, WorkerCount]) -> None:
        """Counts per worker address; called after each poll of the cluster."""

    def finished(self, evaluations: Sequence[Evaluation]) -> None:
        """Every task is done."""


@dataclass
class WorkerCount:
    """Items of one worker: ``done`` (passed), ``failed`` (any other status), ``running``."""

    slug: str
    done: int = 0
    failed: int = 0
    running: int = 0


@dataclass
class _Task:
    key: str
    data: dict[str, Any]
    group: PlannedSolution
    workloads: tuple
    slug: str
    digest: str
    future: Any = None


@dataclass
class FarmRun:
    """What a farm run will do: tasks per device slug, skipped solutions, resumed counts."""

    tasks: list[_Task] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resumed: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(t.workloads) for t in self.tasks)


def recorded_items(registry, definition: str, slug: str) -> set[tuple[str, str, str]]:
    """``(workload uuid, solution, solution digest)`` of every record of ``definition`` on
    ``slug``, whatever its status. Cost: reads one registry file."""
    return {(ev.workload_uuid, ev.solution, ev.solution_digest) for ev in registry.read(definition, slug)}


def drop_recorded(plan: BenchPlan, registry, slug: str) -> tuple[BenchPlan, int]:
    """``plan`` without the (workload, solution, digest) items ``registry`` holds for
    ``slug``, and how many were dropped. Cost: one registry read per definition, one
    digest (a read of the sources) per solution."""
    seen: dict[str, set] = {}
    groups, dropped = [], 0
    for group in plan.groups:
        defn, sol = group.definition, group.solution
        if defn.name not in seen:
            seen[defn.name] = recorded_items(registry, defn.name, slug)
        digest = solution_digest(defn, sol)
        keep = tuple(w for w in group.workloads if (w.uuid, sol.name, digest) not in seen[defn.name])
        dropped += len(group.workloads) - len(keep)
        if keep:
            groups.append(PlannedSolution(defn, sol, keep))
    return BenchPlan(device=plan.device, groups=groups, skipped=list(plan.skipped)), dropped


def _chunks(items: Sequence, size: int) -> Iterable[tuple]:
    for start in range(0, len(items), size):
        yield tuple(items[start:start + size])


def plan_farm(workspace, plan: BenchPlan, pools: Mapping[str, Sequence[str]], *, options: Mapping[str, Any],
              registry=None, task_size: int = DEFAULT_TASK_SIZE) -> FarmRun:
    """Tasks for every group of ``plan`` on every device slug of ``pools``: each group's
    workloads in batches of ``task_size``, minus those ``registry`` already holds for the
    slug (when given: ``--resume``). Raises BenchError for files outside the workspace.
    Cost: reads each solution's files once (its bundle is shared by its tasks)."""
    run = FarmRun(skipped=list(plan.skipped))
    packed: dict[str, dict] = {}
    for slug in pools:
        todo = plan
        if registry is not None:
            todo, run.resumed[slug] = drop_recorded(plan, registry, slug)
        for group in todo.groups:
            defn, sol = group.definition, group.solution
            if sol.qualified_name not in packed:
                packed[sol.qualified_name] = bundles.pack(list(workspace.layers), defn, sol, plan_workloads(plan, sol))
            digest = solution_digest(defn, sol)
            for n, batch in enumerate(_chunks(group.workloads, task_size)):
                data = make_task(list(workspace.layers), defn, sol, batch, kind=plan.device.partition(":")[0],
                                 slug=slug, bundle=packed[sol.qualified_name], options=options)
                key = f"fibuild-{slug}-{sol.qualified_name.replace('/', '.')}-{n}-{digest[:12]}"
                run.tasks.append(_Task(key, data, group, batch, slug, digest))
    return run


def plan_workloads(plan: BenchPlan, sol) -> tuple:
    """Every workload ``plan`` runs ``sol`` on (what its bundle must carry)."""
    return next((g.workloads for g in plan.groups if g.solution.qualified_name == sol.qualified_name), ())


def failure_records(task: _Task, reason: str) -> list[Evaluation]:
    """RUNTIME_ERROR for each workload of a task that never returned, saying why."""
    kind = task.data["kind"]
    return [Evaluation(definition=task.group.definition.name, solution=task.group.solution.name,
                       solution_digest=task.digest, build_key="", workload_uuid=w.uuid, axes=dict(w.axes),
                       status="RUNTIME_ERROR", device=task.slug, error=reason[-4000:],
                       environment={"device": task.slug, "device_kind": kind}, timestamp=utc_timestamp())
            for w in task.workloads]


def run_farm(workspace, settings, engine, definitions: Sequence[str] = (), *,
             solutions: Sequence[str] | None = None, device: str | None = None,
             workload_limit: int | None = None, recorded_only: bool = False, warmup_ms: float = 25.0,
             rep_ms: float = 100.0, graph: bool = False, timeout_s: float = 60.0, resume: bool = False,
             task_size: int = DEFAULT_TASK_SIZE, reporter: FarmReporter | None = None,
             variant_limit: int | None = None) -> list[Evaluation]:
    """Benchmark on every device type of ``engine``'s cluster that offers ``device``
    (``cpu`` or ``cuda``; None: ``cuda`` when some worker offers a GPU, else ``cpu``); return
    the evaluations, each appended to the workspace registry under its worker's device slug
    as its task returns. ``workload_limit``, ``recorded_only`` and ``variant_limit`` choose
    workloads as :func:`~fibuild.bench.plan.plan_benchmarks` does.

    ``engine`` is entered and left here. Ctrl-C cancels the farm (running tasks stop before
    their next item; a local cluster is shut down) and re-raises KeyboardInterrupt. Raises
    BenchError for bad options or a cluster without a worker for ``device``.
    """
    reporter = reporter or FarmReporter()
    if device not in (None, "cpu", "cuda"):
        raise BenchError(f"device {device!r}: a farm runs on cpu or cuda workers (one device each)")
    if warmup_ms < 0 or rep_ms <= 0 or timeout_s <= 0 or task_size < 1:
        raise BenchError("warm-up must be >= 0 ms; repetition time, timeout and task size > 0")
    registry = Registry.of(workspace)
    workspace.ensure_writable()  # before anything is measured, not after
    options = {"warmup_ms": warmup_ms, "rep_ms": rep_ms, "graph": graph, "timeout_s": timeout_s}
    with engine:
        kind = device or ("cuda" if engine.pools("cuda") else "cpu")
        if graph and kind == "cpu":
            raise BenchError("--graph needs a CUDA device")
        plan = plan_benchmarks(workspace, definitions, solutions=solutions, device=kind,
                               workload_limit=workload_limit, recorded_only=recorded_only,
                               variant_limit=variant_limit)
        pools = engine.pools(kind)
        if not pools:
            raise BenchError(f"no worker of the cluster offers a {kind} device: start workers with "
                             f"--resources {'GPU' if kind == 'cuda' else 'CPU'}=1")
        farm = plan_farm(workspace, plan, pools, options=options, registry=registry if resume else None,
                         task_size=task_size)
        for name, reason in farm.skipped:
            reporter.skipped(name, reason)
        for slug, count in farm.resumed.items():
            if count:
                reporter.resumed(slug, count)
        loop = _Loop(engine, kind, farm, pools, registry, reporter)
        try:
            loop.run()
        except (KeyboardInterrupt, FibuildError):
            engine.stop([t.future for t in loop.pending.values()])
            raise
    reporter.finished(loop.evaluations)
    return loop.evaluations


class _Loop:
    """Admits tasks as workers of their device free up, records what comes back.

    At most one task per worker of a device is in flight: the scheduler counts a node's death
    against every task placed on it, so a task waiting behind a crashing one must not be there.
    """

    def __init__(self, engine, kind: str, farm: FarmRun, pools: Mapping[str, Sequence[str]], registry,
                 reporter: FarmReporter):
        self.engine, self.kind, self.registry, self.reporter = engine, kind, registry, reporter
        self.queued = {slug: deque(t for t in farm.tasks if t.slug == slug) for slug in pools}
        self.pending: dict[str, _Task] = {}
        self.evaluations: list[Evaluation] = []
        self.counts = {addr: WorkerCount(slug) for slug, addrs in pools.items() for addr in addrs}
        self.empty_since: dict[str, float] = {}
        reporter.starting(farm.total, {a: c.slug for a, c in self.counts.items()})

    def run(self) -> None:
        while self.pending or any(self.queued.values()):
            self.admit()
            for future in self.engine.wait([t.future for t in self.pending.values()], POLL_S):
                task = self.pending.pop(future.key)
                result, reason = self.engine.outcome(future)
                if result is not None:
                    self.record(task, [evaluation_from_dict(r) for r in result["records"]],
                                str(result.get("worker", "")))
                else:
                    self.record(task, failure_records(task, reason), "")
            self.show_progress()

    def admit(self) -> None:
        pools = self.engine.pools(self.kind)
        for slug, queue in self.queued.items():
            workers = len(pools.get(slug, ()))
            if workers:
                self.empty_since.pop(slug, None)
            elif time.monotonic() - self.empty_since.setdefault(slug, time.monotonic()) > NO_WORKER_S:
                self.abandon(slug, f"no worker with device {slug} left in the cluster for {NO_WORKER_S:g} s")
                continue
            in_flight = sum(t.slug == slug for t in self.pending.values())
            while queue and in_flight < max(1, workers):
                task = queue.popleft()
                task.future = self.engine.submit(task.data, task.key)
                self.pending[task.key] = task
                in_flight += 1

    def abandon(self, slug: str, reason: str) -> None:
        tasks = list(self.queued[slug]) + [t for t in self.pending.values() if t.slug == slug]
        self.queued[slug].clear()
        self.engine.cancel([t.future for t in tasks if t.future is not None])
        for task in tasks:
            self.pending.pop(task.key, None)
            self.record(task, failure_records(task, reason), "")

    def record(self, task: _Task, evaluations: Sequence[Evaluation], worker: str) -> None:
        for ev in evaluations:
            self.registry.append(ev)
            self.evaluations.append(ev)
            if worker:
                count = self.counts.setdefault(worker, WorkerCount(ev.device))
                count.done += ev.status == "PASSED"
                count.failed += ev.status != "PASSED"
            self.reporter.item_finished(ev, worker)

    def show_progress(self) -> None:
        for count in self.counts.values():
            count.running = 0
        for addr, keys in self.engine.running().items():
            mine = [self.pending[k] for k in keys if k in self.pending]
            if mine:  # a worker restarted under a new address shows up here first
                count = self.counts.setdefault(addr, WorkerCount(mine[0].slug))
                count.running = sum(len(t.workloads) for t in mine)
        self.reporter.progress(self.counts)

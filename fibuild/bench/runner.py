"""Benchmark runner: plan (definition, solution, workload) items, build, check and time them
in isolated worker processes, record each result in the registry.

Builds happen here, in the parent, through ``BuildCache.get_or_build``; a BuildError becomes
a ``COMPILE_ERROR`` record for each of the solution's workloads. Checking and timing happen
in one worker process per device (:mod:`fibuild.bench.worker`); a crash or a hang becomes
``RUNTIME_ERROR`` / ``TIMEOUT`` for that item, the worker is replaced and the run goes on.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..errors import BenchError, BuildError, FibuildError
from ..spec.model import Definition, Evaluation, LatencyStats, Solution, Workload
from .reporter import BenchReporter

DEFAULT_WARMUP_MS = 25.0
DEFAULT_REP_MS = 100.0
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PlannedSolution:
    """A solution to run on some workloads of its definition."""

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


@dataclass(frozen=True)
class _Item:
    index: int
    definition: Definition
    solution: Solution
    workload: Workload
    build_key: str
    solution_digest: str


def utc_timestamp() -> str:
    """Now, UTC, ISO 8601 with milliseconds and ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def runs_on(sol: Solution, device_kind: str) -> bool:
    """Whether ``sol.target_hardware`` admits ``device_kind`` (``cpu`` or ``cuda``).

    Empty means anywhere; ``cpu`` must be listed for CPU runs; any entry other than ``cpu``
    (``cuda``, ``sm90``, ``h100``...) admits CUDA.
    """
    targets = [t.lower() for t in sol.target_hardware]
    if not targets:
        return True
    if device_kind == "cpu":
        return "cpu" in targets
    return any(t != "cpu" for t in targets)


def default_device(settings) -> str:
    """``settings.device``, else ``cuda`` when available, else ``cpu``."""
    if settings.device:
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_devices(device: str) -> list[str]:
    """One worker device per visible GPU for ``cuda``; ``cuda:N`` and ``cpu`` as given."""
    if device == "cpu" or ":" in device:
        return [device]
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise BenchError("device cuda: no CUDA device is visible")
    return [f"cuda:{i}" for i in range(count)]


def plan_benchmarks(workspace, definitions: Sequence[str] = (), *, solutions: Sequence[str] | None = None,
                    device: str = "cpu", workload_limit: int | None = None) -> BenchPlan:
    """Choose what to run: the named definitions (all when empty), their solutions (only
    those named in ``solutions``, as ``sol`` or ``def/sol``, when given) that run on
    ``device``, and their first ``workload_limit`` workloads. Builds and runs nothing.

    Raises BenchError / ManifestError naming unknown definitions or solutions.
    """
    kind = device.partition(":")[0]
    if kind not in ("cpu", "cuda"):
        raise BenchError(f"device {device!r}: expected cpu, cuda or cuda:N")
    if workload_limit is not None and workload_limit < 1:
        raise BenchError(f"--workload-limit {workload_limit}: expected a positive number")
    names = list(definitions) or sorted(workspace.definitions)
    defns = [workspace.definition(name) for name in names]
    wanted = set(solutions or ())
    matched: set[str] = set()
    plan = BenchPlan(device=device)
    for defn in defns:
        if defn.distributed is not None:  # needs a process group: fibuild.bench.distributed
            plan.skipped.append((defn.name, "runs on several ranks: bench it with --world-size N"))
            continue
        workloads = tuple(workspace.workloads(defn))[:workload_limit]
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
            if not workloads:
                plan.skipped.append((sol.qualified_name, f"{defn.name} has no workloads"))
                continue
            plan.groups.append(PlannedSolution(defn, sol, workloads))
    unknown = sorted(wanted - matched)
    if unknown:
        raise BenchError(f"no solution named {', '.join(unknown)} among the solutions of "
                         f"{', '.join(names) or 'the workspace'}")
    return plan


def _latency(data: dict | None) -> LatencyStats | None:
    if not data:
        return None
    return LatencyStats(median_us=float(data["median_us"]), p20_us=float(data["p20_us"]),
                        p80_us=float(data["p80_us"]), mean_us=float(data["mean_us"]), n=int(data["n"]))


def _evaluation(item: _Item, slug: str, status: str, environment: dict[str, Any], *,
                reply: dict[str, Any] | None = None, error: str = "") -> Evaluation:
    reply = reply or {}
    latency = _latency(reply.get("latency"))
    ref = _latency(reply.get("reference_latency"))
    speedup = None
    if latency and ref and latency.median_us > 0 and ref.median_us > 0:
        speedup = ref.median_us / latency.median_us
    env = dict(environment)
    if reply.get("timing"):
        env["timing"] = reply["timing"]
    return Evaluation(
        definition=item.definition.name, solution=item.solution.name,
        solution_digest=item.solution_digest, build_key=item.build_key,
        workload_uuid=item.workload.uuid, axes=dict(item.workload.axes), status=status, device=slug,
        latency=latency, reference_latency=ref, speedup=speedup,
        max_abs_error=reply.get("max_abs_error"), max_rel_error=reply.get("max_rel_error"),
        error=(error or reply.get("error") or "")[-4000:], environment=env, timestamp=utc_timestamp())


class _Run:
    """One run's shared state: the work queue, results, and the serialized hooks."""

    def __init__(self, settings, slugs: dict[str, str], reporter: BenchReporter, registry, options: dict[str, Any],
                 timeout_s: float):
        self.settings = settings
        self.slugs = slugs  # worker device -> registry slug (GPUs of one host may differ)
        self.reporter = reporter
        self.registry = registry
        self.options = options
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.results: dict[int, Evaluation] = {}
        self.errors: list[BaseException] = []
        self.live: set = set()  # running WorkerProcess objects, killed on interrupt
        self.stopping = False

    def finish(self, evaluation: Evaluation, index: int) -> None:
        with self.lock:
            if self.stopping:
                return  # interrupted: a killed worker's "crash" is not the kernel's fault
            if self.registry is not None:
                self.registry.append(evaluation)
            self.results[index] = evaluation
            self.reporter.item_finished(evaluation)

    def hook(self, name: str, *args) -> None:
        with self.lock:
            getattr(self.reporter, name)(*args)

    def serve(self, device: str, items: "queue.Queue[_Item]") -> None:
        """Drain ``items`` through a worker on ``device``, replacing it after a crash/hang."""
        from .pool import WorkerCrashed, WorkerProcess, WorkerTimeout
        from .worker import settings_to_json, workload_to_json

        settings_json = settings_to_json(self.settings)
        slug = self.slugs[device]
        worker = None
        try:
            while True:
                try:
                    item = items.get_nowait()
                except queue.Empty:
                    return
                if worker is None:
                    worker = WorkerProcess(settings_json, device)
                    with self.lock:
                        self.live.add(worker)
                    worker.start()
                self.hook("item_started", item.solution.qualified_name, item.workload.uuid, device)
                message = {"op": "run", "id": item.index, "definition": item.definition.name,
                           "solution": item.solution.qualified_name,
                           "workload": workload_to_json(item.workload), **self.options}
                try:
                    reply = worker.request(message, self.timeout_s)
                except WorkerTimeout as exc:
                    self.finish(_evaluation(item, slug, "TIMEOUT", worker.environment,
                                            error=str(exc)), item.index)
                    self.hook("worker_replaced", device, "timeout")
                    worker.close(timeout_s=0)
                    worker = None
                    continue
                except WorkerCrashed as exc:
                    self.finish(_evaluation(item, slug, "RUNTIME_ERROR", worker.environment,
                                            error=str(exc)), item.index)
                    self.hook("worker_replaced", device, str(exc).splitlines()[0])
                    worker.close(timeout_s=0)
                    worker = None
                    continue
                self.finish(_evaluation(item, slug, reply.get("status", "RUNTIME_ERROR"),
                                        worker.environment, reply=reply), item.index)
                if reply.get("fatal"):
                    self.hook("worker_replaced", device, "CUDA error")
                    worker.close()
                    worker = None
        except BaseException as exc:  # surfaced by run_benchmarks after the threads join
            with self.lock:
                self.errors.append(exc)
            while True:  # leave nothing for a dead thread: others stop too
                try:
                    items.get_nowait()
                except queue.Empty:
                    break
        finally:
            with self.lock:
                self.live = {w for w in self.live if w.alive}
            if worker is not None:
                worker.close()

    def interrupt(self, items: "queue.Queue[_Item]") -> None:
        """Stop: drop queued items, kill running workers, record nothing more."""
        with self.lock:
            self.stopping = True
            workers = list(self.live)
        while True:
            try:
                items.get_nowait()
            except queue.Empty:
                break
        for worker in workers:
            worker.kill()


def build_for_bench(cache, settings, defn: Definition, sol: Solution,
                    reporter: BenchReporter) -> tuple[str, str | None]:
    """Build ``sol`` (or find it built) before it is benchmarked, reporting both steps.

    Returns ``(build key, None)``; on a BuildError ``(its key, or "" when even the key cannot
    be computed, the error text)``, and the caller records COMPILE_ERROR for its workloads.
    """
    reporter.building(sol.qualified_name)
    try:
        key = cache.get_or_build(defn, sol).build_key
    except BuildError as exc:
        reporter.built(sol.qualified_name, str(exc))
        from ..compile.keys import build_key

        try:
            key = build_key(defn, sol, settings)
        except FibuildError:
            key = ""
        return key, str(exc)
    reporter.built(sol.qualified_name, None)
    return key, None


def run_benchmarks(workspace, settings, definitions: Sequence[str] = (), *,
                   solutions: Sequence[str] | None = None, device: str | None = None,
                   workload_limit: int | None = None, warmup_ms: float = DEFAULT_WARMUP_MS,
                   rep_ms: float = DEFAULT_REP_MS, graph: bool = False,
                   timeout_s: float = DEFAULT_TIMEOUT_S, reporter: BenchReporter | None = None,
                   record: bool = True, plan: BenchPlan | None = None) -> list[Evaluation]:
    """Check and time solutions; return every Evaluation (appended to
    ``workspace.registry_dir`` as it completes when ``record``).

    ``device``: ``cpu``, ``cuda`` (one worker per visible GPU) or ``cuda:N``; default from
    :func:`default_device`. ``timeout_s`` bounds each item (reference + check + timing).
    ``plan`` reuses a :func:`plan_benchmarks` result (its device wins over ``device``).
    Ctrl-C kills the workers, records nothing more and re-raises KeyboardInterrupt. Raises BenchError for bad options,
    an unusable device or a worker that cannot start; kernel failures are statuses.
    Cost: builds, then per item about ``warmup_ms + rep_ms`` for the solution (plus the
    same once per workload for the reference).
    """
    from ..compile.cache import BuildCache
    from ..compile.keys import solution_digest
    from ..devices import device_environment, device_slug
    from ..registry import Registry

    reporter = reporter or BenchReporter()
    device = plan.device if plan is not None else (device or default_device(settings))
    if graph and device == "cpu":
        raise BenchError("--graph needs a CUDA device")
    if warmup_ms < 0 or rep_ms <= 0 or timeout_s <= 0:
        raise BenchError("warm-up must be >= 0 ms, repetition time and timeout > 0")
    if plan is None:
        plan = plan_benchmarks(workspace, definitions, solutions=solutions, device=device,
                               workload_limit=workload_limit)
    for name, reason in plan.skipped:
        reporter.skipped(name, reason)
    devices = worker_devices(device)
    slugs = {dev: device_slug(dev) for dev in devices}
    slug = slugs[devices[0]]
    registry = Registry(workspace.registry_dir) if record else None
    # Workers load solutions from this workspace, whatever root the settings named.
    worker_settings = dataclasses.replace(settings, root=Path(workspace.root))
    run = _Run(worker_settings, slugs, reporter, registry,
               {"warmup_ms": warmup_ms, "rep_ms": rep_ms, "graph": graph}, timeout_s)
    reporter.starting(plan.total, slug)
    cache = BuildCache(settings)
    items: list[_Item] = []
    order: dict[tuple[str, str], int] = {}
    index = 0
    for group in plan.groups:
        defn, sol = group.definition, group.solution
        for wl in group.workloads:
            order.setdefault((defn.name, wl.uuid), len(order))
        digest = solution_digest(defn, sol)
        key, error = build_for_bench(cache, settings, defn, sol, reporter)
        if error is not None:
            env = device_environment(devices[0])
            for wl in group.workloads:
                item = _Item(index, defn, sol, wl, key, digest)
                run.finish(_evaluation(item, slug, "COMPILE_ERROR", env, error=error), index)
                index += 1
            continue
        for wl in group.workloads:
            items.append(_Item(index, defn, sol, wl, key, digest))
            index += 1
    # Workload-major order: consecutive items share a workload, so each worker computes a
    # workload's reference once.
    items.sort(key=lambda it: (order[(it.definition.name, it.workload.uuid)], it.index))
    work: queue.Queue = queue.Queue()
    for item in items:
        work.put(item)
    threads = [threading.Thread(target=run.serve, args=(dev, work), name=f"fibuild-bench-{dev}")
               for dev in devices[:max(1, len(items))]]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        run.interrupt(work)
        for t in threads:
            t.join()
        raise
    if run.errors:
        exc = run.errors[0]
        raise exc if isinstance(exc, FibuildError) else BenchError(f"benchmark run failed: {exc!r}")
    evaluations = [run.results[i] for i in sorted(run.results)]
    reporter.finished(evaluations)
    return evaluations

"""Benchmark runner: build, check and time planned (definition, solution, workloads) groups
in isolated worker processes, one per device, and record each result.

:func:`execute` is the executor: planned groups in, Evaluations out (each handed to a sink
as it completes). It builds in the parent (a BuildError becomes ``COMPILE_ERROR`` for each
of the solution's workloads), then drains the items through one worker process per device
(:mod:`fibuild.bench.worker`). Per worker and solution, a *prepare* step comes first: the
solution's load and first call, timed as ``prepare_s``. It runs under the per-item timeout,
unless the solution or its definition declares first-call work (:func:`first_call_work`: JIT
builds, autotuning, workspaces) or the first call is visibly compiling (a compiler process
runs under the worker when the timeout runs out): those get the prepare allowance
(``FIBUILD_PREPARE_TIMEOUT``). Overrunning is ``TIMEOUT`` for the solution's items, the phase
named. Only then does each item run under the per-item timeout. A crash
or a hang becomes ``RUNTIME_ERROR`` / ``TIMEOUT`` for the item, the worker is replaced and the
run goes on; a worker killed from outside (SIGKILL, SIGTERM, the OOM killer) is retried once
and then recorded ``WORKER_KILLED``, which the resolver does not hold against the kernel.
:func:`run_benchmarks` = plan + registry sink + execute.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..devices import Device, default_device, local_devices
from ..errors import BenchError, FibuildError
from ..registry import Registry
from ..spec.model import Evaluation
from .plan import BenchPlan, PlannedSolution, plan_benchmarks
from .pool import WorkerCrashed, WorkerProcess, WorkerTimeout
from .protocol import settings_to_json
from .records import BenchItem, build_items, evaluation
from .reporter import BenchReporter

DEFAULT_WARMUP_MS = 25.0
DEFAULT_REP_MS = 100.0
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RunOptions:
    """How each item is measured and bounded. ``prepare_timeout_s`` None: the settings'."""

    warmup_ms: float = DEFAULT_WARMUP_MS
    rep_ms: float = DEFAULT_REP_MS
    graph: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    prepare_timeout_s: float | None = None

    def check(self) -> None:
        """BenchError for values no run can use."""
        if self.warmup_ms < 0 or self.rep_ms <= 0 or self.timeout_s <= 0:
            raise BenchError("warm-up must be >= 0 ms, repetition time and timeout > 0")
        if self.prepare_timeout_s is not None and not self.prepare_timeout_s > 0:
            raise BenchError("the prepare timeout must be > 0 s")

    def messages(self) -> dict[str, Any]:
        """The measuring options as they travel in protocol requests."""
        return {"warmup_ms": self.warmup_ms, "rep_ms": self.rep_ms, "graph": self.graph}


#: The phase a prepare overrun names.
FIRST_CALL_PHASE = "load and first call"


def first_call_work(definition, solution) -> tuple[str, ...]:
    """Why ``solution``'s first call may take the prepare allowance, () when it may not:
    what its manifest declares (``first_call``), ``jit`` for a FlashInfer solution (its
    modules compile on first use), ``workspace`` for a distributed definition."""
    work = list(solution.first_call)
    if "flashinfer-python" in solution.dependencies and "jit" not in work:
        work.append("jit")
    if getattr(definition, "distributed", None) is not None and "workspace" not in work:
        work.append("workspace")
    return tuple(work)


def prepare_overrun(limit_s: float, tail: str, *, work: Sequence[str] = (), compiling: bool = False) -> str:
    """The TIMEOUT text of a first call that did not finish within ``limit_s``: the phase,
    and which limit applied (the prepare allowance for declared work or a visible compile,
    else ``--timeout``, with how to declare the work)."""
    if work or compiling:
        why = f"first_call: {', '.join(work)}" if work else "a compiler was running"
        limit = f"the prepare allowance of {limit_s:g} s (FIBUILD_PREPARE_TIMEOUT; {why})"
    else:
        limit = (f"--timeout {limit_s:g} s (a first call that compiles or sets up workspaces gets "
                 "FIBUILD_PREPARE_TIMEOUT when its solution.yaml declares it, e.g. first_call: [jit])")
    text = f"hang in phase '{FIRST_CALL_PHASE}': no reply within {limit}; killed"
    return f"{text}\n{tail}" if tail else text


class _Run:
    """One run's shared state: the work queue, results, the serialized hooks and sink."""

    def __init__(self, settings, devices: Sequence[Device], reporter: BenchReporter,
                 sink: Callable[[Evaluation], None] | None, options: RunOptions):
        self.settings_json = settings_to_json(settings)
        self.slugs = {d.torch_device: d.slug for d in devices}  # GPUs of one host may differ
        self.environments = {d.torch_device: d.environment() for d in devices}
        self.reporter = reporter
        self.sink = sink
        self.options = options
        self.prepare_s = options.prepare_timeout_s or settings.prepare_timeout_s
        self.lock = threading.Lock()
        self.results: dict[int, Evaluation] = {}
        self.errors: list[BaseException] = []
        self.live: set = set()  # running WorkerProcess objects, killed on interrupt
        self.unpreparable: dict[str, str] = {}  # solution -> why its first call can never finish
        self.stopping = False

    def finish(self, evaluation: Evaluation, index: int) -> None:
        with self.lock:
            if self.stopping:
                return  # interrupted: a killed worker's "crash" is not the kernel's fault
            if self.sink is not None:
                self.sink(evaluation)
            self.results[index] = evaluation
            self.reporter.item_finished(evaluation)

    def hook(self, name: str, *args) -> None:
        with self.lock:
            getattr(self.reporter, name)(*args)

    def serve(self, device: str, items: "queue.Queue[BenchItem]") -> None:
        """Drain ``items`` through a worker on ``device``, replacing it after a crash/hang."""
        slot = _WorkerSlot(self, device)
        try:
            while True:
                try:
                    item = items.get_nowait()
                except queue.Empty:
                    return
                self.hook("item_started", item.solution.qualified_name, item.workload.uuid, device)
                slot.run(item)
        except BaseException as exc:  # surfaced by execute after the threads join
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
            slot.close()

    def interrupt(self, items: "queue.Queue[BenchItem]") -> None:
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


class _WorkerSlot:
    """The worker of one device over a run: started on demand, replaced after a failure,
    with the solutions it has prepared (solution -> prepare_s)."""

    def __init__(self, run: _Run, device: str):
        self.run_state, self.device, self.slug = run, device, run.slugs[device]
        self.worker = None
        self.environment = run.environments[device]  # the worker's own, once one started
        self.prepared: dict[str, float | None] = {}

    def _ensure(self):
        if self.worker is None:
            self.worker = WorkerProcess(self.run_state.settings_json, self.device)
            with self.run_state.lock:
                self.run_state.live.add(self.worker)
            self.worker.start()
            self.environment = self.worker.environment
            self.prepared = {}
        return self.worker

    def replace(self, reason: str) -> None:
        self.run_state.hook("worker_replaced", self.device, reason)
        self.close(timeout_s=0)

    def close(self, timeout_s: float = 10.0) -> None:
        if self.worker is not None:
            self.worker.close(timeout_s=timeout_s)
            self.worker = None

    def run(self, item: BenchItem) -> None:
        """Record one item: prepare its solution if this worker has not, then run it; a
        worker killed from outside gets one more try on a fresh worker."""
        for attempt in (1, 2):
            status, reply, error = self._attempt(item, attempt)
            if status != "RETRY":
                break
        prepare_s = self.prepared.get(item.solution.qualified_name)
        if prepare_s is None and reply:
            prepare_s = reply.get("prepare_s")
        self.run_state.finish(evaluation(item, self.slug, status, self.environment, reply=reply, error=error,
                                         prepare_s=prepare_s), item.index)

    def _attempt(self, item: BenchItem, attempt: int) -> tuple[str, dict | None, str]:
        """(status, reply, error) of one try; status RETRY asks for another try."""
        run, name = self.run_state, item.solution.qualified_name
        if name in run.unpreparable:
            return "TIMEOUT", None, run.unpreparable[name]
        worker = self._ensure()
        options = run.options.messages()
        try:
            if name not in self.prepared:
                work = first_call_work(item.definition, item.solution)
                limit = run.prepare_s if work else min(run.options.timeout_s, run.prepare_s)
                try:
                    reply = worker.request(item.message("prepare", options), limit,
                                           compiling_limit_s=run.prepare_s)
                except WorkerTimeout as exc:
                    error = prepare_overrun(exc.waited_s, worker.stderr_tail(), work=work,
                                            compiling=exc.waited_s > limit)
                    with run.lock:
                        run.unpreparable[name] = error
                    self.replace("prepare timeout")
                    return "TIMEOUT", None, error
                if reply.get("status") != "PASSED":
                    self._after(reply)
                    return reply.get("status", "RUNTIME_ERROR"), reply, ""
                self.prepared[name] = reply.get("prepare_s")
            reply = worker.request(item.message("run", options), run.options.timeout_s)
        except WorkerTimeout as exc:
            self.replace("timeout")
            return "TIMEOUT", None, str(exc)
        except WorkerCrashed as exc:
            self.replace(str(exc).splitlines()[0])
            if exc.from_outside:
                return ("RETRY" if attempt == 1 else "WORKER_KILLED"), None, \
                    f"{exc}\n(killed from outside twice; not the kernel's fault)"
            return "RUNTIME_ERROR", None, str(exc)
        self._after(reply)
        return reply.get("status", "RUNTIME_ERROR"), reply, ""

    def _after(self, reply: dict) -> None:
        if reply.get("fatal"):  # the worker exits after a fatal reply: a CUDA error
            self.replace("CUDA error")


def execute(groups: Sequence[PlannedSolution], settings, device: str, *, options: RunOptions = RunOptions(),
            reporter: BenchReporter | None = None,
            sink: Callable[[Evaluation], None] | None = None) -> list[Evaluation]:
    """Build, check and time ``groups`` on this machine's ``device`` (``cpu``, ``cuda`` = one
    worker per visible GPU, ``cuda:N``) in isolated worker processes; return every
    Evaluation in item order, each passed to ``sink`` (e.g. a registry append) as it completes.

    The one entry point an executor needs: a farm engine calls it on each machine with its
    share of the groups. Workers load solutions from ``settings.root``. Ctrl-C kills the
    workers, records nothing more and re-raises KeyboardInterrupt. Raises BenchError for bad
    options or a worker that cannot start, ConfigError for an unusable device; kernel
    failures are statuses. Cost: builds, then per item about ``warmup_ms + rep_ms`` (plus the
    same once per workload for the reference), plus each solution's first call once per worker.
    """
    reporter = reporter or BenchReporter()
    options.check()
    if options.graph and device == "cpu":
        raise BenchError("--graph needs a CUDA device")
    devices = local_devices(device)
    run = _Run(settings, devices, reporter, sink, options)
    reporter.starting(sum(len(g.workloads) for g in groups), devices[0].slug)
    env = run.environments[devices[0].torch_device]
    items = build_items(groups, settings, reporter, lambda item, error: run.finish(
        evaluation(item, devices[0].slug, "COMPILE_ERROR", env, error=error), item.index))
    work: queue.Queue = queue.Queue()
    for item in items:
        work.put(item)
    threads = [threading.Thread(target=run.serve, args=(d.torch_device, work), name=f"fibuild-bench-{d.torch_device}")
               for d in devices[:max(1, len(items))]]
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


def run_benchmarks(workspace, settings, definitions: Sequence[str] = (), *,
                   solutions: Sequence[str] | None = None, device: str | None = None,
                   workload_limit: int | None = None, warmup_ms: float = DEFAULT_WARMUP_MS,
                   rep_ms: float = DEFAULT_REP_MS, graph: bool = False,
                   timeout_s: float = DEFAULT_TIMEOUT_S, prepare_timeout_s: float | None = None,
                   reporter: BenchReporter | None = None, record: bool = True,
                   plan: BenchPlan | None = None) -> list[Evaluation]:
    """Check and time solutions; return every Evaluation (appended to
    ``workspace.registry_dir`` as it completes when ``record``).

    ``device``: ``cpu``, ``cuda`` (one worker per visible GPU) or ``cuda:N``; default from
    :func:`fibuild.devices.default_device`. ``timeout_s`` bounds each item (reference +
    check + timing) after the solution's first call, which ``prepare_timeout_s`` bounds
    (default ``FIBUILD_PREPARE_TIMEOUT``). ``plan`` reuses a :func:`plan_benchmarks` result
    (its device wins over ``device``). Raises as :func:`execute` and :func:`plan_benchmarks`.
    """
    reporter = reporter or BenchReporter()
    options = RunOptions(warmup_ms, rep_ms, graph, timeout_s, prepare_timeout_s)
    options.check()
    device = plan.device if plan is not None else (device or default_device(settings))
    if graph and device == "cpu":
        raise BenchError("--graph needs a CUDA device")
    if plan is None:
        plan = plan_benchmarks(workspace, definitions, solutions=solutions, device=device,
                               workload_limit=workload_limit)
    for name, reason in plan.skipped:
        reporter.skipped(name, reason)
    registry = Registry.of(workspace) if record else None
    if record and plan.total:
        workspace.ensure_writable()  # before anything is measured, not after
    # Workers load solutions from this workspace, whatever root the settings named.
    worker_settings = dataclasses.replace(settings, root=Path(workspace.root))
    return execute(plan.groups, worker_settings, device, options=options, reporter=reporter,
                   sink=registry.append if registry is not None else None)

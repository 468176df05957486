"""Farm tasks: one (definition, solution, batch of workloads) on one device type, as JSON.

The driver builds a task with :func:`make_task`; a farm worker runs it with :func:`run_task`,
which unpacks the task's workspace bundle, builds into the worker's own cache
(``FIBUILD_CACHE_DIR`` of the worker's environment) and checks and times the workloads with
the local runner — the same isolated worker process, so a crash, a hang or a poisoned CUDA
context becomes a status exactly as on one machine. Arguments and results are plain
JSON-able dicts; no fibuild object crosses the engine.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...config import Settings
from ...devices import device_slug
from ...errors import BenchError
from ...registry import evaluation_to_dict
from ...spec.workspace import Workspace
from ..plan import PlannedSolution
from ..protocol import workload_from_json, workload_to_json
from ..reporter import BenchReporter
from ..runner import RunOptions, execute
from . import bundle as bundles

#: Resource tag of a worker's device type: ``fibuild:<device slug>`` (see :func:`device_tag`).
TAG_PREFIX = "fibuild:"


def device_tag(slug: str) -> str:
    """The engine resource that marks workers whose device has ``slug``."""
    return TAG_PREFIX + slug


def worker_device(kind: str) -> str:
    """The device a farm worker benchmarks on for tasks of ``kind``: ``cpu``, or ``cuda:0``
    (a GPU worker sees one GPU: its launcher sets ``CUDA_VISIBLE_DEVICES``)."""
    return "cpu" if kind == "cpu" else "cuda:0"


def make_task(root, defn, sol, workloads: Sequence[Any], *, kind: str, slug: str, bundle: Mapping[str, Any],
              options: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON task that benchmarks ``workloads`` of ``sol`` on a ``kind`` worker with ``slug``.

    ``bundle`` is :func:`fibuild.bench.farm.bundle.pack` of the pair (shared by its tasks);
    ``options``: ``warmup_ms``, ``rep_ms``, ``graph``, ``timeout_s``.
    """
    loads = []
    for workload in workloads:
        data = workload_to_json(workload)
        data["source"] = bundles.workload_source(root, workload)
        loads.append(data)
    return {"definition": defn.name, "solution": sol.qualified_name, "workloads": loads, "kind": kind,
            "slug": slug, "bundle": dict(bundle), "options": dict(options)}


class _StopBetweenItems(BenchReporter):
    """Stops the runner before its next item once ``is_set()`` is true (driver cancelled)."""

    def __init__(self, is_set):
        self._is_set = is_set

    def item_started(self, solution, workload_uuid, worker_device):
        if self._is_set():
            raise BenchError("the farm was cancelled")


def _check_fields(task: Any) -> None:
    """BenchError naming the first field of ``task`` that is missing or of the wrong type."""
    if not isinstance(task, Mapping):
        raise BenchError(f"farm task: expected a JSON object, got {type(task).__name__}")
    for field, kind in (("definition", str), ("solution", str), ("kind", str), ("slug", str),
                        ("bundle", Mapping), ("options", Mapping), ("workloads", list)):
        if not isinstance(task.get(field), kind):
            raise BenchError(f"farm task: {field!r} must be a {'list' if kind is list else kind.__name__}, "
                             f"got {task.get(field)!r:.80}")
    for option in ("warmup_ms", "rep_ms", "timeout_s"):
        value = task["options"].get(option)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BenchError(f"farm task: options.{option} must be a number, got {value!r:.80}")


def run_task(task: Mapping[str, Any], *, stop=None, worker: str = "") -> dict[str, Any]:
    """Benchmark one farm task on this worker; returns ``{"records": [...], "slug",
    "worker", "host"}`` with one evaluation dict per workload (``registry`` format).

    ``stop``: a callable polled before each item (true: stop); ``worker``: the engine's name
    of this worker, returned as ``"worker"``. Raises
    BenchError when the worker's device is not the task's, or the worker process cannot
    start; kernel failures are statuses in the records. Cost: as the local runner for
    ``len(task["workloads"])`` items, plus one bundle unpack per worker and pair.
    """
    _check_fields(task)
    device = worker_device(task["kind"])
    slug = device_slug(device)
    if slug != task["slug"]:
        raise BenchError(f"farm task for {task['slug']} reached a worker with {slug}")
    settings = Settings.from_env()
    root = bundles.unpack(task.get("bundle"), settings.cache_dir)
    workspace = Workspace(root)
    definition, _, name = str(task["solution"]).partition("/")
    defn = workspace.definition(definition)
    sol = workspace.solution(name, definition=definition)
    workloads = []
    for i, data in enumerate(task["workloads"]):
        try:
            data = dict(data)
            if data.get("source") and data["source"] != "declared":
                data["source"] = str(Path(root) / bundles.safe_relpath(str(data["source"])))
            workloads.append(workload_from_json(data))
        except (AttributeError, KeyError, TypeError, ValueError, BenchError) as exc:
            raise BenchError(f"farm task: workloads[{i}] is not a workload ({type(exc).__name__}: {exc})") from None
    opts = task["options"]
    options = RunOptions(warmup_ms=float(opts["warmup_ms"]), rep_ms=float(opts["rep_ms"]),
                         graph=bool(opts.get("graph")), timeout_s=float(opts["timeout_s"]))
    evaluations = execute([PlannedSolution(defn, sol, tuple(workloads))],
                          dataclasses.replace(settings, root=Path(root)), device, options=options,
                          reporter=_StopBetweenItems(stop or (lambda: False)))
    return {"records": [evaluation_to_dict(ev) for ev in evaluations], "slug": slug,
            "worker": worker or f"pid {os.getpid()}", "host": socket.gethostname()}

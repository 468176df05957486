"""The farm on Dask distributed: start or join a cluster, tag workers by device, run tasks.

Imported only when ``--executor dask`` runs (Dask is an optional dependency:
``pip install 'fibuild[farm]'``). Workers declare what they offer with Dask resources —
``GPU=1`` (one GPU a worker, ``CUDA_VISIBLE_DEVICES`` set, as ``dask cuda worker`` does) or
``CPU=1`` — and a worker plugin adds ``fibuild:<device slug>`` on every worker when it
starts or restarts, so a task asks for ``{GPU: 1, fibuild:<slug>: 1}`` and lands only on a
free GPU of its device type. A worker that dies mid-task has its task rescheduled by the
scheduler, and :func:`run_dask_task` counts the runs: the third start of a task (two
workers died under it) runs nothing and the driver records its items as RUNTIME_ERROR with
the reason.

Task arguments and results are JSON-able dicts; Dask's own transport of the task function
(a reference to :func:`run_dask_task`) and of this plugin is Dask's
business, not fibuild's.
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import dask
from distributed import (
    Client,
    Event,
    LocalCluster,
    Nanny,
    Scheduler,
    SpecCluster,
    WorkerPlugin,
    get_client,
    get_worker,
)
from distributed import wait as dask_wait
from distributed.core import Status
from distributed.worker import thread_state

from ...devices import device_slug
from ...errors import BenchError
from .task import TAG_PREFIX, device_tag, run_task, worker_device

# Heavy or optional dependencies, imported inside the functions that use them: torch.

#: Seconds to wait for an existing cluster to show at least one worker.
JOIN_TIMEOUT_S = 60.0
#: Runs of a task after a worker died under it (counted by the task itself, see run_dask_task).
RETRIES = 1
_RESOURCE = {"cpu": "CPU", "cuda": "GPU"}
_DASK_LOG = logging.getLogger("distributed")


class DeviceTagPlugin(WorkerPlugin):
    """Adds the resource ``fibuild:<slug>`` for each device a worker declares (GPU, CPU)."""

    name = "fibuild-device-tag"

    async def setup(self, worker) -> None:
        declared = worker.state.total_resources
        tags = {}
        loop = asyncio.get_running_loop()
        for kind, resource in _RESOURCE.items():
            if declared.get(resource, 0) >= 1:
                try:  # probing CUDA imports torch: keep it off the worker's event loop
                    slug = await loop.run_in_executor(None, device_slug, worker_device(kind))
                except Exception as exc:  # an unusable GPU: the worker gets no fibuild task
                    logging.getLogger("fibuild.farm").error("fibuild: %s worker without a usable device: %s",
                                                            resource, exc)
                    continue
                tags[device_tag(slug)] = 1
        new = {tag: 1 for tag in tags if declared.get(tag, 0) < 1}
        if new:
            await worker.set_resources(**new)
            # The scheduler re-places tasks waiting for a resource only when a worker starts
            # running; a tag added after registration needs that signal.
            if worker.status == Status.running:
                worker.status = Status.paused
                worker.status = Status.running


def run_dask_task(task: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """:func:`fibuild.bench.farm.task.run_task` on a Dask worker, counting attempts.

    Each start is logged as a scheduler event; a task that starts a third time has seen two
    workers die under it, so it runs nothing and returns ``{"lost": reason}``. Between items
    it stops when the run's stop event is set (the driver was interrupted).
    """
    worker, client, key = get_worker(), get_client(), str(thread_state.key)
    topic = f"fibuild-farm-{run_id}"
    earlier = [msg["worker"] for _, msg in client.get_events(topic) if msg.get("key") == key]
    worker.log_event(topic, {"key": key, "worker": worker.address})
    if len(earlier) > RETRIES:
        return {"lost": f"the farm workers running this task died under it {len(earlier)} times "
                        f"({', '.join(earlier)}); not retried again"}
    stop = Event(f"fibuild-farm-stop-{run_id}", client=client)  # polled from the runner's threads
    return run_task(task, stop=stop.is_set, worker=worker.address)


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class DaskEngine:
    """A Dask cluster for one farm run: joined at ``address``, or started locally (and
    stopped on exit) with ``local_workers`` CPU workers, or one worker per visible GPU.

    Use as a context manager. Raises BenchError when no cluster can be reached or started.
    """

    name = "dask"

    def __init__(self, address: str | None = None, *, kind: str = "cpu", local_workers: int = 2):
        self.address = address
        self.kind = kind
        self.local_workers = local_workers
        self.cluster = None
        self.client: Client | None = None
        self.run_id = uuid.uuid4().hex
        self._event: Event | None = None
        self._log_level = logging.NOTSET

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> DaskEngine:
        # Dask logs every scheduler event at INFO; fibuild's own log level governs it here.
        self._log_level = _DASK_LOG.level
        _DASK_LOG.setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
        try:
            if self.address:
                self.client = Client(self.address, timeout=JOIN_TIMEOUT_S)
                self.client.wait_for_workers(1, timeout=JOIN_TIMEOUT_S)
            else:
                self.cluster = self._local_cluster()
                self.client = Client(self.cluster)
                self.client.wait_for_workers(len(self.cluster.workers), timeout=JOIN_TIMEOUT_S)
            self.client.register_plugin(DeviceTagPlugin())
            self._event = Event(f"fibuild-farm-stop-{self.run_id}", client=self.client)
        except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
            self.__exit__(None, None, None)
            where = f"the Dask scheduler at {self.address}" if self.address else "a local Dask cluster"
            raise BenchError(f"cannot use {where}: {type(exc).__name__}: {exc}") from None
        return self

    def _local_cluster(self):
        with dask.config.set({"distributed.scheduler.allowed-failures": 3}):  # a backstop: see run_dask_task
            # Tags declared at start survive a worker's restart (the nanny starts it alike).
            common = {"nthreads": 1, "silence_logs": logging.ERROR}
            if self.kind == "cpu":
                return LocalCluster(n_workers=self.local_workers, threads_per_worker=1, processes=True,
                                    resources={"CPU": 1, device_tag(device_slug("cpu")): 1},
                                    dashboard_address=None, silence_logs=logging.ERROR)
            gpus = _visible_gpus()
            if not gpus:
                raise BenchError("device cuda: no CUDA device is visible for a local farm")
            workers = {f"gpu{gpu}": {"cls": Nanny, "options": {
                **common, "resources": {"GPU": 1, device_tag(device_slug(f"cuda:{i}")): 1},
                "env": {"CUDA_VISIBLE_DEVICES": gpu}}} for i, gpu in enumerate(gpus)}
            scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
            return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)

    def __exit__(self, *exc_info) -> None:
        try:
            if self.client is not None:
                self.client.close()
                self.client = None
            if self.cluster is not None:
                self.cluster.close()
                self.cluster = None
        finally:
            _DASK_LOG.setLevel(self._log_level)

    # -- workers -------------------------------------------------------------------------
    def pools(self, kind: str) -> dict[str, list[str]]:
        """Device slug -> addresses of the workers that offer ``kind`` (``cpu``/``cuda``)."""
        resource = _RESOURCE[kind]
        pools: dict[str, list[str]] = {}
        for address, info in self.client.scheduler_info(n_workers=-1)["workers"].items():
            resources = info.get("resources") or {}
            if resources.get(resource, 0) < 1:
                continue
            for tag in resources:
                if tag.startswith(TAG_PREFIX):
                    slug = tag[len(TAG_PREFIX):]
                    if (slug.startswith("cpu")) == (kind == "cpu"):
                        pools.setdefault(slug, []).append(address)
        return {slug: sorted(addrs) for slug, addrs in sorted(pools.items())}

    # -- tasks ---------------------------------------------------------------------------
    def submit(self, task: Mapping[str, Any], key: str):
        """Queue ``task`` on a free worker of its kind and device; returns its future."""
        resources = {_RESOURCE[task["kind"]]: 1, device_tag(task["slug"]): 1}
        return self.client.submit(run_dask_task, dict(task), self.run_id, key=key, resources=resources,
                                  pure=False)

    def wait(self, futures: Sequence, timeout_s: float) -> list:
        """The futures of ``futures`` that are done, waiting at most ``timeout_s`` for one."""
        if not futures:
            return []
        try:
            done, _ = dask_wait(list(futures), timeout=timeout_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return []
        return list(done)

    @staticmethod
    def outcome(future) -> tuple[dict[str, Any] | None, str]:
        """``(result, "")`` for a finished task; ``(None, reason)`` for a failed one."""
        if future.status == "finished":
            result = future.result()
            return (None, result["lost"]) if "lost" in result else (result, "")
        exc = future.exception()
        if type(exc).__name__ == "KilledWorker":
            return None, f"the farm workers running this task died under it ({exc})"
        return None, f"farm task failed: {type(exc).__name__}: {exc}"

    def running(self) -> dict[str, list[str]]:
        """Worker address -> keys of the tasks the scheduler has placed there."""
        return {addr: [str(k) for k in keys] for addr, keys in self.client.processing().items()}

    def cancel(self, futures: Sequence) -> None:
        """Drop ``futures`` (queued ones never run; a running one is let go)."""
        if futures and self.client is not None:
            self.client.cancel(list(futures), force=True)

    def stop(self, futures: Sequence) -> None:
        """Stop the farm: running tasks stop before their next item, ``futures`` are dropped."""
        if self.client is None or self.client.status not in ("running", Status.running):
            return
        try:
            self._event.set()
            self.cancel(futures)
        except Exception as exc:  # the cluster is going away anyway; closing comes next
            logging.getLogger("fibuild.farm").warning("stopping the farm: %s", exc)

"""A process group of benchmark ranks, seen from the parent: start, ask, merge, tear down.

A :class:`RankGroup` is ``world_size`` ``python -m fibuild.bench.distributed_rank``
processes in one OS process group, joined into one torch.distributed group through a
FileStore in a fresh temporary directory, each spoken to in JSON lines (see
:mod:`fibuild.bench.distributed_rank`). Every wait is bounded; :meth:`RankGroup.kill`
(one ``killpg``) leaves no rank behind. :func:`merge_outcome` turns the ranks' answers to
one request into one status.
"""
from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import BenchError
from .pool import describe_exit, killed_from_outside
from .protocol import stderr_tail

#: Seconds the ranks may take to import torch and join the group.
START_TIMEOUT_S = 180.0
#: Once one rank has failed or gone, seconds the others get to answer before all are killed.
GRACE_S = 5.0
#: Seconds ranks get to leave after ``exit`` before they are killed.
EXIT_TIMEOUT_S = 10.0
#: Variables every rank gets: NVLink multicast off (NCCL NVLS, torch symmetric memory,
#: NVSHMEM NVLS), which the lent multi-GPU machines require.
RANK_ENVIRONMENT = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                    "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass
class GroupOutcome:
    """The ranks' answers to one request: ``replies`` by rank, ``gone`` (rank -> how it
    exited, with its stderr tail), ``silent`` (ranks that did not answer in time) and
    ``killed`` (ranks gone by a signal from outside)."""

    replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    gone: dict[int, str] = field(default_factory=dict)
    silent: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        """Whether the group must be torn down (a rank failed, left, or hung)."""
        return bool(self.gone or self.silent or any(r.get("fatal") for r in self.replies.values()))


def _join_process_group(pgid: int) -> dict[str, Any]:
    """Popen arguments that put the child in OS process group ``pgid`` (0: a new one it leads)."""
    if sys.version_info >= (3, 11):
        return {"process_group": pgid}
    return {"preexec_fn": functools.partial(os.setpgid, 0, pgid)}


class RankGroup:
    """``world_size`` rank processes in one OS process group, one JSON-lines pipe each.

    Not thread-safe. :meth:`close` (orderly) or :meth:`kill` always leaves no process behind.
    """

    def __init__(self, settings_json: dict[str, Any], devices: Sequence[str], backend: str, timeout_s: float):
        """``timeout_s``: the longest a request may take (the collectives' own timeout
        outwaits it, so a hang is the parent's TIMEOUT, not a collective's error)."""
        self.devices = list(devices)
        self.world_size = len(devices)
        self.backend = backend
        self.timeout_s = timeout_s
        self.environment: dict[str, Any] = {}
        self._settings_json = settings_json
        self._store_dir = tempfile.mkdtemp(prefix="fibuild-group-")
        self._lines: queue.Queue = queue.Queue()
        self._stderr = [tempfile.TemporaryFile() for _ in devices]
        self._procs: list[subprocess.Popen] = []
        self._readers: list[threading.Thread] = []
        self.pgid: int | None = None
        env = {**os.environ, **RANK_ENVIRONMENT}
        try:
            for rank in range(self.world_size):
                # Rank 0 leads a new OS process group and the others join it, so one killpg
                # reaches every rank (and whatever a rank spawned).
                proc = subprocess.Popen(
                    [sys.executable, "-m", "fibuild.bench.distributed_rank"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=self._stderr[rank], text=True, encoding="utf-8",
                    bufsize=1, env=env, **_join_process_group(self.pgid or 0))
                self._procs.append(proc)
                if self.pgid is None:
                    self.pgid = proc.pid
                reader = threading.Thread(target=self._read, args=(rank, proc), daemon=True,
                                          name=f"fibuild-rank-{rank}")
                reader.start()
                self._readers.append(reader)
        except OSError as exc:
            self.kill()
            raise BenchError(f"cannot start the ranks: {exc}") from None

    def _read(self, rank: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._lines.put((rank, line))
        self._lines.put((rank, None))  # EOF: the rank is gone

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "RankGroup":
        """Send init to every rank and wait for all to join; BenchError (group killed) if not."""
        for rank, device in enumerate(self.devices):
            self._send(rank, {"op": "init", "settings": self._settings_json, "device": device, "rank": rank,
                              "world_size": self.world_size, "backend": self.backend,
                              "store_path": str(Path(self._store_dir) / "store"),
                              # Collectives outwait the parent's deadline, so a hang is
                              # reported as TIMEOUT, not as a collective's timeout error.
                              "timeout_s": self.timeout_s + GRACE_S + 60.0})
        outcome = self.collect(timeout_s)
        problems = [f"rank {r}: {reply.get('error', reply)}" for r, reply in sorted(outcome.replies.items())
                    if reply.get("op") != "ready"]
        problems += [f"rank {r}: {how}" for r, how in sorted(outcome.gone.items())]
        problems += [f"rank {r}: not ready within {timeout_s:g} s" for r in outcome.silent]
        if problems:
            self.kill()
            raise BenchError(f"{self.world_size} ranks ({self.backend}) did not start:\n" + "\n".join(problems))
        self.environment = dict(outcome.replies[0].get("environment") or {})
        return self

    def _send(self, rank: int, message: dict[str, Any]) -> None:
        proc = self._procs[rank]
        try:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the rank is gone; its EOF tells collect()

    def request(self, message: dict[str, Any], timeout_s: float) -> GroupOutcome:
        """Send ``message`` to every rank and gather their answers (see :meth:`collect`)."""
        for rank in range(self.world_size):
            self._send(rank, message)
        return self.collect(timeout_s)

    def collect(self, timeout_s: float) -> GroupOutcome:
        """One answer per rank, waiting at most ``timeout_s``; once a rank fails or leaves,
        the others get at most GRACE_S more (they are likely stuck in a collective)."""
        out = GroupOutcome()
        deadline = time.monotonic() + timeout_s
        while len(set(out.replies) | set(out.gone)) < self.world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                rank, line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                if rank not in out.replies:
                    out.gone[rank] = self._exit_message(rank)
                    if killed_from_outside(self._procs[rank].returncode):
                        out.killed.append(rank)
                    deadline = min(deadline, time.monotonic() + GRACE_S)
                continue
            try:
                reply = json.loads(line)
            except ValueError:
                continue  # not a protocol line; ranks only write JSON here
            out.replies[rank] = reply
            if reply.get("fatal") or reply.get("op") == "error":
                deadline = min(deadline, time.monotonic() + GRACE_S)
        out.silent = [r for r in range(self.world_size) if r not in out.replies and r not in out.gone]
        return out

    def _exit_message(self, rank: int) -> str:
        proc = self._procs[rank]
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            pass  # closed its stdout but still running: killed with the group
        tail = stderr_tail(self._stderr[rank])
        text = f"rank {rank} {describe_exit(proc.returncode)}"
        return f"{text}\n{tail}" if tail else text

    def stderr_tail(self) -> str:
        """The end of every rank's stderr (build logs, warnings), rank by rank."""
        parts = [(r, stderr_tail(err, 1500)) for r, err in enumerate(self._stderr)]
        return "\n".join(f"rank {r}:\n{tail}" for r, tail in parts if tail)

    def kill(self) -> None:
        """Kill every rank (the whole OS process group) and reap them."""
        if self.pgid is not None:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # every member already exited
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._release()

    def close(self, timeout_s: float = EXIT_TIMEOUT_S) -> None:
        """Ask the ranks to leave the group and exit; kill what is left after ``timeout_s``."""
        for rank in range(len(self._procs)):
            self._send(rank, {"op": "exit"})
        deadline = time.monotonic() + timeout_s
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        self.kill()

    def _release(self) -> None:
        for reader in self._readers:  # at EOF now that every rank is dead
            reader.join(timeout=EXIT_TIMEOUT_S)
        for proc in self._procs:
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        for err in self._stderr:
            err.close()
        shutil.rmtree(self._store_dir, ignore_errors=True)


def _slowest(replies: dict[int, dict[str, Any]], key: str) -> tuple[dict[str, Any] | None, list[float]]:
    """The stats (JSON form) of the rank with the largest median (a collective is as slow
    as its slowest rank), and every rank's median in rank order."""
    measured = [reply[key] for _, reply in sorted(replies.items()) if reply.get(key)]
    medians = [float(stats["median_us"]) for stats in measured]
    return (max(measured, key=lambda stats: float(stats["median_us"])) if measured else None), medians


def merge_outcome(outcome: GroupOutcome, timeout_s: float, *,
                  silent_status: str = "TIMEOUT") -> tuple[str, dict[str, Any], str]:
    """(status, merged reply, error text) for one item from every rank's answer.

    A rank killed from outside makes it WORKER_KILLED (the others' failures follow from
    it); else a rank that left without answering makes it RUNTIME_ERROR; else a rank's
    failing status (lowest rank first); else ``silent_status`` when some rank did not
    answer; else PASSED with the slowest rank's latency. Max errors and ``prepare_s`` are
    the largest over the ranks.
    """
    replies = outcome.replies
    errors = [how for _, how in sorted(outcome.gone.items())]
    failing = [(r, reply) for r, reply in sorted(replies.items()) if reply.get("status") != "PASSED"]
    errors += [f"rank {r}: {reply.get('status')}: {reply.get('error', '')}".rstrip() for r, reply in failing]
    if outcome.silent:
        errors.append(f"rank{'s' if len(outcome.silent) > 1 else ''} "
                      f"{', '.join(map(str, outcome.silent))} did not answer within {timeout_s:g} s; "
                      "all ranks killed")
    if outcome.killed:
        status = "WORKER_KILLED"
    elif outcome.gone:
        status = "RUNTIME_ERROR"
    elif failing:
        status = failing[0][1].get("status") or "RUNTIME_ERROR"
    elif outcome.silent:
        status = silent_status
    else:
        status = "PASSED"
    latency, medians = _slowest(replies, "latency")
    ref, ref_medians = _slowest(replies, "reference_latency")
    merged: dict[str, Any] = {"latency": latency if status == "PASSED" else None, "reference_latency": ref}
    for name in ("max_abs_error", "max_rel_error", "prepare_s"):
        values = [reply[name] for reply in replies.values() if reply.get(name) is not None]
        merged[name] = max(values) if values else None
    timing = next((reply.get("timing") for _, reply in sorted(replies.items()) if reply.get("timing")), None)
    if timing and status == "PASSED":
        merged["timing"] = {**timing, "rank_median_us": medians, "reference_rank_median_us": ref_medians}
    return status, merged, "\n".join(errors)

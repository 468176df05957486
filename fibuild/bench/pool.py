"""The parent's side of a benchmark worker: start, ask, time out, replace.

A :class:`WorkerProcess` is one ``python -m fibuild.bench.worker`` subprocess bound to one
device, spoken to in JSON lines (see :mod:`fibuild.bench.worker`). :meth:`request` waits
at most ``timeout_s`` for the reply; a hang kills the process (``WorkerTimeout``), an exit
without a reply (segfault, abort, ``os._exit``) raises ``WorkerCrashed`` with the exit
signal and the tail of the worker's stderr. The caller records the status and starts a
fresh worker. :func:`killed_from_outside` tells a crash of the kernel (a signal the process
raised itself: SIGSEGV, SIGBUS, SIGABRT...) from a kill by someone else (SIGKILL, SIGTERM, the
OOM killer), which is not the kernel's fault.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from ..errors import BenchError
from .protocol import stderr_tail

#: Seconds a worker may take to import torch and probe its device.
START_TIMEOUT_S = 180.0
#: Signals a process does not raise on itself by faulting: sent by a person, a supervisor or
#: the OOM killer (SIGKILL). Linux does not tell a parent who sent a signal, so the signal
#: is the evidence; a kernel that kills itself with one of these is retried once, then
#: recorded as WORKER_KILLED.
OUTSIDE_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})


def killed_from_outside(returncode: int | None) -> bool:
    """Whether a child's return code says it died by a signal sent from outside."""
    return returncode is not None and returncode < 0 and -returncode in {int(s) for s in OUTSIDE_SIGNALS}


class WorkerCrashed(Exception):
    """The worker exited without replying; the message says how (signal, exit code, stderr);
    ``returncode`` is the child's (negative: the signal)."""

    def __init__(self, message: str, returncode: int | None = None):
        super().__init__(message)
        self.returncode = returncode

    @property
    def from_outside(self) -> bool:
        return killed_from_outside(self.returncode)


class WorkerTimeout(Exception):
    """The worker did not reply in time and was killed; ``waited_s`` is how long it had."""

    def __init__(self, message: str, waited_s: float = 0.0):
        super().__init__(message)
        self.waited_s = waited_s


#: Process names (``/proc/<pid>/comm``) of compilers and build drivers: a worker with one of
#: these below it is visibly compiling (FlashInfer's JIT runs ninja and nvcc; Triton ptxas).
COMPILERS = frozenset({"nvcc", "cicc", "ptxas", "cudafe++", "fatbinary", "nvlink", "ninja", "cc1plus",
                       "cc1", "c++", "g++", "gcc", "cc", "clang", "clang++", "ld", "as", "collect2"})


def compilers_below(pid: int) -> list[str]:
    """Names of the compiler processes (COMPILERS) among ``pid``'s descendants, sorted; []
    where ``/proc`` is not there. Cost: one read of ``/proc/*/stat`` (a few ms)."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue  # exited meanwhile
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry))
            names[int(entry)] = name
    found, todo = [], list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        if names.get(child) in COMPILERS:
            found.append(names[child])
        todo += children.get(child, ())
    return sorted(found)


def describe_exit(returncode: int | None) -> str:
    """``killed by SIGSEGV`` / ``exited with code 3`` for a subprocess return code."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class WorkerProcess:
    """One worker subprocess on ``device`` (``cpu`` or ``cuda:N``); not thread-safe."""

    def __init__(self, settings_json: dict[str, Any], device: str):
        self.device = device
        self._settings_json = settings_json
        self._stderr = tempfile.TemporaryFile()
        self._lines: queue.Queue = queue.Queue()
        self.environment: dict[str, Any] = {}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "fibuild.bench.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, encoding="utf-8", bufsize=1,
            env={**os.environ, "_FIBUILD_PARENT_PID": str(os.getpid())})  # see lifeline.die_with_parent
        self._reader = threading.Thread(target=self._read, name=f"fibuild-worker-{device}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)  # EOF: the worker is gone

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "WorkerProcess":
        """Send init and wait for ready; BenchError when the worker cannot start."""
        try:
            reply = self._exchange({"op": "init", "settings": self._settings_json, "device": self.device},
                                   timeout_s)
        except (WorkerCrashed, WorkerTimeout) as exc:
            raise BenchError(f"benchmark worker on {self.device} did not start: {exc}") from None
        if reply.get("op") != "ready":
            self.kill()
            raise BenchError(f"benchmark worker on {self.device}: {reply.get('error', reply)}")
        self.environment = dict(reply.get("environment") or {})
        return self

    def request(self, message: dict[str, Any], timeout_s: float, *,
                compiling_limit_s: float | None = None) -> dict[str, Any]:
        """Send ``message``, return the reply; WorkerTimeout / WorkerCrashed (process gone).

        ``compiling_limit_s``: while a compiler runs below the worker when ``timeout_s``
        runs out, keep waiting (``timeout_s`` at a time) up to this many seconds in all.
        """
        return self._exchange(message, timeout_s, compiling_limit_s)

    def compiling(self) -> list[str]:
        """Compiler processes running below this worker now (see :func:`compilers_below`)."""
        return compilers_below(self._proc.pid) if self._proc.poll() is None else []

    def _exchange(self, message: dict[str, Any], timeout_s: float,
                  compiling_limit_s: float | None = None) -> dict[str, Any]:
        try:
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._proc.wait()
            raise WorkerCrashed(self._crash_message(), self._proc.returncode) from None
        start = time.monotonic()
        deadline = start + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                waited = time.monotonic() - start
                if compiling_limit_s is not None and waited < compiling_limit_s and self.compiling():
                    deadline = min(start + compiling_limit_s, time.monotonic() + timeout_s)
                    continue  # visibly compiling: its allowance is the longer one
                self.kill()
                limit = round(deadline - start, 1)
                raise WorkerTimeout(f"no reply within {limit:g} s; worker killed", limit) from None
            if line is None:
                self._proc.wait()
                raise WorkerCrashed(self._crash_message(), self._proc.returncode)
            try:
                return json.loads(line)
            except ValueError:
                continue  # not a protocol line; the worker only writes JSON here

    def _crash_message(self) -> str:
        tail = stderr_tail(self._stderr)
        text = f"worker {describe_exit(self._proc.returncode)}"
        return f"{text}\n{tail}" if tail else text

    def stderr_tail(self) -> str:
        """The end of what the worker wrote to stderr (build logs, warnings)."""
        return stderr_tail(self._stderr)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def kill(self) -> None:
        """Kill the worker (this process's own child) and reap it."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout_s``."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=timeout_s)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.kill()
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._stderr.close()

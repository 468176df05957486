"""Recording traced calls as workloads: deduplicated, buffered, flushed under the registry lock.

Per definition and dedup bucket (the var-axis values; attention adapters bucket by batch and
average lengths instead) the first ``per_key`` calls become workloads; workloads already in
``registry/<definition>/workloads.jsonl`` count towards that, so several processes tracing the
same traffic do not multiply it: the file is read when a definition is first traced, and read
again at each flush under its lock, where records whose bucket other processes have filled
meanwhile are dropped (with their blobs). Records wait in memory and go out every ``flush_every``
records, at :meth:`TraceRecorder.flush` and at interpreter exit: structural tensors first (one
safetensors blob per workload, renamed into place), then every workload line of a definition
in one locked append (:meth:`fibuild.registry.Registry.append_workloads`). A killed process
loses at most its buffer; the files only ever hold whole lines and whole blobs.

Call counts (per definition and axes) and calls that could not be mapped (per op and reason)
are appended, as deltas, to ``registry/_trace/calls.jsonl`` at each flush; ``fibuild trace
report`` sums them.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable, Mapping

from fibuild.errors import FibuildError
from fibuild.registry import Registry, append_lines

log = logging.getLogger("fibuild.integrations")

#: Folder under registry/ for call summaries; a leading "_" can never be a definition name.
CALLS_DIR = "_trace"
CALLS_FILE = "calls.jsonl"

Bucket = Callable[[Mapping[str, int]], tuple]


def axes_bucket(axes: Mapping[str, int]) -> tuple:
    """The default dedup bucket: the var-axis values themselves."""
    return tuple(sorted(axes.items()))


def calls_path(registry_dir: str | Path) -> Path:
    return Path(registry_dir) / CALLS_DIR / CALLS_FILE


class TraceRecorder:
    """Buffers workloads and call counts of one process; see the module docstring.

    Thread-safe. ``per_key`` >= 1 workloads are kept per dedup bucket; ``flush_every`` >= 1
    records trigger a flush. Cost of a call that is only counted: one list-cell increment
    (done by the caller's handler, see :meth:`counter`).
    """

    def __init__(self, registry: Registry, *, per_key: int = 2, flush_every: int = 64):
        self.registry = registry
        self.per_key = max(1, int(per_key))
        self.flush_every = max(1, int(flush_every))
        self._lock = threading.RLock()
        self._pending: list[tuple[str, dict[str, Any], dict[str, Any] | None, Bucket]] = []
        self._kept: dict[str, dict[tuple, int]] = {}      # definition -> bucket -> workloads kept
        self._counters: dict[tuple, list[int]] = {}       # (definition, op, axes json, reason) -> [calls]
        self._flushed: dict[tuple, int] = {}
        self.written = 0

    # -- dedup ---------------------------------------------------------------------------
    def wants(self, definition: str, axes: Mapping[str, int], bucket: Bucket = axes_bucket) -> bool:
        """True while fewer than ``per_key`` workloads of this bucket are kept (file included)."""
        with self._lock:
            kept = self._kept_of(definition, bucket)
            return kept.get(bucket(axes), 0) < self.per_key

    def _kept_of(self, definition: str, bucket: Bucket) -> dict[tuple, int]:
        kept = self._kept.get(definition)
        if kept is None:
            kept = self._kept[definition] = {}
            for axes in _recorded_axes(self.registry.workloads_path(definition)):
                key = bucket(axes)
                kept[key] = kept.get(key, 0) + 1
        return kept

    # -- recording -----------------------------------------------------------------------
    def add(self, definition: str, axes: Mapping[str, int], inputs: Mapping[str, Any],
            blobs: Mapping[str, Any] | None = None, bucket: Bucket = axes_bucket) -> bool:
        """Buffer one workload unless its bucket is full; returns whether it was kept.

        ``inputs`` maps input names to workload input specs (``random``/``scalar``); every
        name in ``blobs`` (CPU tensors, already copied off the caller's buffers) becomes a
        ``safetensors`` input of the workload's own blob.
        """
        with self._lock:
            kept = self._kept_of(definition, bucket)
            key = bucket(axes)
            if kept.get(key, 0) >= self.per_key:
                return False
            kept[key] = kept.get(key, 0) + 1
            record = {"uuid": f"traced-{uuidlib.uuid4().hex[:16]}",
                      "axes": {k: int(v) for k, v in axes.items()}, "inputs": dict(inputs)}
            self._pending.append((definition, record, dict(blobs) if blobs else None, bucket))
            if len(self._pending) >= self.flush_every:
                self.flush()
            return True

    def counter(self, definition: str | None, op: str, axes: Mapping[str, int] | None = None,
                reason: str | None = None) -> list[int]:
        """The call-count cell of (definition, axes) or of an unmapped (op, reason); the
        caller increments ``cell[0]`` per call."""
        key = (definition, op, json.dumps(dict(axes), sort_keys=True) if axes else None, reason)
        with self._lock:
            cell = self._counters.get(key)
            if cell is None:
                cell = self._counters[key] = [0]
            return cell

    # -- flushing ------------------------------------------------------------------------
    def flush(self) -> int:
        """Write buffered workloads (blobs first) and call-count deltas; returns workloads written.

        A definition whose write fails keeps nothing of this batch and is logged; other
        definitions still flush. Never raises for I/O problems (tracing must not break the
        traced process).
        """
        with self._lock:
            pending, self._pending = self._pending, []
            by_def: dict[str, list[dict[str, Any]]] = {}
            buckets: dict[str, Bucket] = {}  # record uuid -> its dedup bucket
            for definition, record, blobs, bucket in pending:
                try:
                    if blobs:
                        # Workload paths are relative to the workspace root.
                        path = self.registry.write_blob(definition, record["uuid"], blobs)
                        for name in blobs:
                            record["inputs"][name] = {"type": "safetensors", "path": path, "tensor_key": name}
                    by_def.setdefault(definition, []).append(record)
                    buckets[record["uuid"]] = bucket
                except FibuildError as exc:
                    log.warning("fibuild: trace of %s dropped: %s", definition, exc)
            written = 0
            for definition, records in by_def.items():
                chosen: list = []

                def select(path: Path, records: list) -> list:
                    chosen[:] = self._not_yet_recorded(path, records, buckets)
                    return chosen

                try:
                    self.registry.append_workloads(definition, records, select=select)
                    written += len(chosen)
                except FibuildError as exc:
                    log.warning("fibuild: %d traced workloads of %s dropped: %s", len(records), definition, exc)
                kept = {r["uuid"] for r in chosen}
                self._drop_blobs(definition, [r for r in records if r["uuid"] not in kept])
            self._flush_counts()
            self.written += written
            return written

    def _not_yet_recorded(self, path: Path, records: list, buckets: Mapping[str, Bucket]) -> list:
        """``records`` minus those whose bucket ``path`` already holds ``per_key`` of (other
        processes' flushes included). Called under the workloads file's lock."""
        recorded = _recorded_axes(path)
        counts: dict[Any, dict[tuple, int]] = {}
        chosen = []
        for record in records:
            bucket = buckets[record["uuid"]]
            seen = counts.get(bucket)
            if seen is None:
                seen = counts[bucket] = {}
                for axes in recorded:
                    seen[bucket(axes)] = seen.get(bucket(axes), 0) + 1
            key = bucket(record["axes"])
            if seen.get(key, 0) < self.per_key:
                seen[key] = seen.get(key, 0) + 1
                chosen.append(record)
        return chosen

    def _drop_blobs(self, definition: str, records: list) -> None:
        """Remove the blobs of records that were not written (their bucket was full)."""
        for record in records:
            for spec in record["inputs"].values():
                if isinstance(spec, dict) and spec.get("type") == "safetensors":
                    try:
                        (self.registry.root.parent / spec["path"]).unlink(missing_ok=True)
                    except OSError:
                        pass

    def _flush_counts(self) -> None:
        lines = []
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        for key, cell in self._counters.items():
            delta = cell[0] - self._flushed.get(key, 0)
            if delta <= 0:
                continue
            definition, op, axes, reason = key
            lines.append(json.dumps({"definition": definition, "op": op,
                                     "axes": json.loads(axes) if axes else None, "reason": reason,
                                     "calls": delta, "pid": os.getpid(), "time": now},
                                    sort_keys=True, separators=(",", ":")) + "\n")
            self._flushed[key] = cell[0]
        if lines:
            try:
                append_lines(calls_path(self.registry.root), "".join(lines), "call counts", self.registry.root)
            except Exception as exc:  # noqa: BLE001 - counts are best effort, workloads are not
                log.warning("fibuild: call counts not written: %s", exc)


def _recorded_axes(path: Path) -> list[dict[str, int]]:
    """Axes of the workloads already in ``path`` (unreadable lines skipped)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    out = []
    for line in raw.split(b"\n"):
        try:
            axes = json.loads(line).get("axes") if line.strip() else None
        except (ValueError, AttributeError, UnicodeDecodeError):
            continue
        if isinstance(axes, dict):
            out.append({str(k): v for k, v in axes.items() if isinstance(v, int)})
    return out


def read_calls(registry_dir: str | Path) -> list[dict[str, Any]]:
    """Every call-count line of ``registry/_trace/calls.jsonl`` (torn lines skipped)."""
    out = []
    try:
        raw = calls_path(registry_dir).read_bytes()
    except OSError:
        return out
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("calls"), int):
            out.append(data)
    return out

"""Counters of the patched APIs: what each call did, always on, one integer add per call.

Per patched API (``flashinfer.norm.rmsnorm``, ``flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper``)
a :class:`Counters` holds one list cell per outcome: ``substituted`` (a fibuild solution
ran), ``original`` (fibuild chose the original: nothing better, or tracing only),
``fallback`` per reason (fibuild could not take the call and the original ran), and, for
attention wrappers, ``plan`` per entry (``plan``, ``begin_forward``, ``fast_decode_plan``,
``unseen``). ``borrowed`` counts, among those calls, the ones whose choice rests on another
device's evaluations (same compute capability: this device has none of its own). A handler
is given its cell once, when it is made, and does ``cell[0] += 1`` per call; nothing else is
counted on the hot path.

:func:`snapshot` turns the cells into the dict ``fibuild.integrations.stats()`` returns;
:func:`format_stats` prints it (``FIBUILD_STATS=1`` at exit); :func:`append_stats` /
:func:`read_stats` keep per-process totals in ``registry/_trace/stats.jsonl`` for
``fibuild trace report``.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from fibuild.registry import append_lines

from .tracing import CALLS_DIR

STATS_FILE = "stats.jsonl"

#: outcomes a cell counts; "fallback" and "plan" cells also carry a reason / entry name
OUTCOMES = ("substituted", "original", "fallback", "plan", "borrowed")


class Counters:
    """The cells of one patched API. Thread-safe to create; the adds are the callers'."""

    def __init__(self, api: str):
        self.api = api
        self._cells: dict[tuple[str, str | None], list[int]] = {}
        self._lock = threading.Lock()

    def cell(self, outcome: str, reason: str | None = None) -> list[int]:
        """The cell of ``outcome`` (one of :data:`OUTCOMES`; ``reason`` for fallbacks and plans)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        key = (outcome, reason)
        with self._lock:
            found = self._cells.get(key)
            if found is None:
                found = self._cells[key] = [0]
            return found

    def snapshot(self) -> dict[str, Any]:
        """``{"calls", "substituted", "original", "fallbacks": {reason: n}[, "plans": {entry: n}]
        [, "borrowed": n]}``; ``calls`` counts runs/calls, not plans (``borrowed`` calls are among
        them); reasons and entries never taken are left out."""
        out: dict[str, Any] = {"calls": 0, "substituted": 0, "original": 0, "fallbacks": {}}
        plans: dict[str, int] = {}
        with self._lock:
            cells = list(self._cells.items())
        for (outcome, reason), cell in cells:
            n = cell[0]
            if not n:
                continue
            if outcome == "plan":
                plans[str(reason)] = plans.get(str(reason), 0) + n
                continue
            if outcome == "borrowed":
                out["borrowed"] = out.get("borrowed", 0) + n
                continue
            out["calls"] += n
            if outcome == "fallback":
                out["fallbacks"][str(reason)] = out["fallbacks"].get(str(reason), 0) + n
            else:
                out[outcome] += n
        if plans:
            out["plans"] = plans
        return out


class Stats:
    """Every API's :class:`Counters` of one enabled integration."""

    def __init__(self):
        self._apis: dict[str, Counters] = {}
        self._lock = threading.Lock()

    def of(self, api: str) -> Counters:
        with self._lock:
            found = self._apis.get(api)
            if found is None:
                found = self._apis[api] = Counters(api)
            return found

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            apis = list(self._apis.items())
        return {api: c.snapshot() for api, c in sorted(apis)}


def counted(handler: Callable, cell: list[int]) -> Callable:
    """``handler`` with ``cell[0] += 1`` per call."""
    def handler_counted(*args, **kwargs):
        cell[0] += 1
        return handler(*args, **kwargs)

    handler_counted.__wrapped__ = handler
    return handler_counted


def merge(total: dict[str, dict[str, Any]], part: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add the snapshot ``part`` into ``total`` (in place; returned)."""
    for api, row in part.items():
        into = total.setdefault(api, {"calls": 0, "substituted": 0, "original": 0, "fallbacks": {}})
        for key in ("calls", "substituted", "original"):
            into[key] += int(row.get(key, 0))
        if row.get("borrowed"):
            into["borrowed"] = into.get("borrowed", 0) + int(row["borrowed"])
        for group in ("fallbacks", "plans"):
            for reason, n in (row.get(group) or {}).items():
                into.setdefault(group, {})
                into[group][reason] = into[group].get(reason, 0) + int(n)
    return total


def format_stats(snapshot: dict[str, dict[str, Any]]) -> str:
    """The snapshot as plain text lines (one per API, then its fallbacks and plans)."""
    if not snapshot:
        return "fibuild: no patched API was called"
    lines = ["fibuild: calls of the patched APIs (substituted / original / fallback)"]
    for api, row in snapshot.items():
        fallbacks = sum(row["fallbacks"].values())
        lines.append(f"  {api}: {row['calls']} calls, {row['substituted']} substituted, "
                     f"{row['original']} original, {fallbacks} fallback"
                     + (f"; {row['borrowed']} chosen on borrowed evaluations" if row.get("borrowed") else ""))
        for reason, n in sorted(row["fallbacks"].items(), key=lambda kv: -kv[1]):
            lines.append(f"      {n:>10}  fallback: {reason}")
        for entry, n in sorted((row.get("plans") or {}).items()):
            lines.append(f"      {n:>10}  planned by {entry}")
    return "\n".join(lines)


def stats_path(registry_dir: str | Path) -> Path:
    return Path(registry_dir) / CALLS_DIR / STATS_FILE


def append_stats(registry_dir: str | Path, snapshot: dict[str, dict[str, Any]]) -> None:
    """Append this process's totals as one line (best effort: never raises)."""
    if not snapshot:
        return
    line = json.dumps({"pid": os.getpid(), "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                       "stats": snapshot}, sort_keys=True, separators=(",", ":")) + "\n"
    try:
        append_lines(stats_path(registry_dir), line, "call statistics", Path(registry_dir))
    except Exception:  # noqa: BLE001 - statistics are best effort
        pass


def read_stats(registry_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The sum of every process's totals in ``registry/_trace/stats.jsonl`` (torn lines skipped)."""
    total: dict[str, dict[str, Any]] = {}
    try:
        raw = stats_path(registry_dir).read_bytes()
    except OSError:
        return total
    for line in raw.split(b"\n"):
        try:
            data = json.loads(line) if line.strip() else None
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("stats"), dict):
            merge(total, data["stats"])
    return total

"""Bench side of plan/run solutions: plans made once per input set, their time measured apart.

The bench times what a serving engine repeats every layer, the run; the plan is made once
per workload (per rotated input set) before timing and before any CUDA-graph capture, and
timed on its own so the evaluation shows both (``plan_latency`` beside ``latency``).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..compile.plans import PlannedEntry
from ..spec.model import LatencyStats
from .timing import MIN_REPS, repetitions, summarize

# Heavy or optional dependencies, imported inside the functions that use them: torch.

#: At most this many plans are timed (a plan may allocate; hundreds add nothing).
MAX_PLAN_REPS = 100


def prepare_plans(entry: Any, arg_sets: Sequence[Sequence[Any]], *, device: str,
                  rep_ms: float) -> LatencyStats | None:
    """For a plan/run ``entry``: time ``plan`` on the first input set (host wall clock, the
    device synchronized after each plan), then make and keep the plan of every input set.

    Returns None for an entry that is not plan/run. Raises whatever ``plan`` raises.
    Cost: about ``rep_ms`` (at least MIN_REPS plans) plus one plan per input set.
    """
    if not isinstance(entry, PlannedEntry):
        return None
    sync = _synchronizer(device)
    structural = entry.structural(arg_sets[0])
    t0 = time.perf_counter()
    entry.plan(*structural)
    sync()
    first_ms = (time.perf_counter() - t0) * 1e3
    samples = []
    for _ in range(repetitions(rep_ms, first_ms, low=MIN_REPS, high=MAX_PLAN_REPS)):
        t0 = time.perf_counter()
        entry.plan(*structural)
        sync()
        samples.append((time.perf_counter() - t0) * 1e6)
    for args in arg_sets:
        entry.prepare(args)
    sync()
    return summarize(samples)


def _synchronizer(device: str) -> Callable[[], None]:
    if device == "cpu":
        return lambda: None
    import torch

    return lambda: torch.cuda.synchronize(device)

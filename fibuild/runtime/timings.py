"""One solution's measurements at one key (:class:`Timing`), and how the table combines them:
field-wise medians over a key's workloads, host intervals widened for the host's drift.

Pure: no I/O, no torch.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from fibuild.bench.compare import GRAPH, caller_cost, host_slowdown, spanning
from fibuild.spec.model import ApplyKey, LatencyStats

# Heavy or optional dependencies, imported inside the functions that use them: statistics.


@dataclass(frozen=True)
class Timing:
    """One solution's measurements at one key (field-wise medians over the key's workloads).

    ``gpu``: the timed latency (CUDA events or graph replays; wall clock on CPUs). ``host``:
    the host time per call on CUDA devices, None on CPUs and in records older than schema 2.
    """

    solution: str
    gpu: LatencyStats
    host: LatencyStats | None = None

    @property
    def median_us(self) -> float:
        return self.gpu.median_us

    @property
    def p80_us(self) -> float:
        return self.gpu.p80_us

    def cost(self, mode: str) -> LatencyStats:
        """What a caller pays per call in ``mode``: :func:`fibuild.bench.compare.caller_cost`."""
        return caller_cost(self.gpu, self.host, mode)

    def rank(self, mode: str = GRAPH) -> tuple[float, float, str]:
        """Sort order: lower cost median, then lower p80, then name (deterministic ties)."""
        cost = self.cost(mode)
        return (cost.median_us, cost.p80_us, self.solution)


def aggregate(stats: Iterable[LatencyStats | None]) -> LatencyStats | None:
    """Field-wise medians of several workloads' stats (None when any is missing; n summed)."""
    import statistics  # slow path only: statistics pulls in decimal and fractions

    items = list(stats)
    if not items or any(s is None for s in items):
        return None
    if len(items) == 1:
        return items[0]

    def med(name: str) -> float | None:
        values = [getattr(s, name) for s in items]
        return None if any(v is None for v in values) else statistics.median(values)

    return LatencyStats(median_us=med("median_us"), p20_us=med("p20_us"), p80_us=med("p80_us"),
                        mean_us=med("mean_us"), n=sum(s.n for s in items), min_us=med("min_us"),
                        q1_us=med("q1_us"), q3_us=med("q3_us"))


def with_host_drift(timings: Mapping[ApplyKey, list[Timing]],
                    slowdown: float | None = None) -> tuple[dict[ApplyKey, list[Timing]], float]:
    """``(timings with each host time's interval spanning its solution's host times at every
    key and its upper ends at least slowdown times its lowest median, slowdown)``
    (:func:`fibuild.bench.compare.spanning`: host cost drifts between bench items).
    ``slowdown`` None: the one these timings show (:func:`fibuild.bench.compare.host_slowdown`)."""
    hosts: dict[str, list[LatencyStats]] = defaultdict(list)
    for ts in timings.values():
        for t in ts:
            if t.host is not None:
                hosts[t.solution].append(t.host)
    if slowdown is None:
        slowdown = host_slowdown([h.median_us for h in hs] for hs in hosts.values())
    return {k: [t if t.host is None else dataclasses.replace(t, host=spanning(t.host, hosts[t.solution], slowdown))
                for t in ts] for k, ts in timings.items()}, slowdown

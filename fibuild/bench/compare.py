"""Noise-aware comparison of two latency measurements: FAST, SLOW, SAME or AMBIGUOUS.

The rule (``docs/resolution.md`` says why) follows nvbench's *compare robust*: a measurement is
read as an interval ``[min, q3]`` around its median (records older than schema 2 carry no
min/q1/q3 and use ``[p20, p80]``), and

- **FAST**: the challenger's median is at least :data:`MIN_GAIN` (2 %) below the incumbent's
  *and* its interval lies wholly below the incumbent's (challenger q3 < incumbent min);
- **SLOW**: the same the other way round;
- **SAME**: the medians differ by less than half of :data:`MIN_GAIN` (1 %), whatever the spread;
- **AMBIGUOUS**: anything else: a gain too small to matter yet above the SAME band, or one
  that the spread of either measurement could explain.

The band between SAME and FAST is deliberate: a difference near the threshold reads as
AMBIGUOUS rather than flipping between SAME and FAST from one run to the next.

Pure and cheap (no imports beyond the model): the resolver calls it per key, ``fibuild table``
per cell. :func:`noisy` flags one measurement whose own spread is too wide to rank on.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Protocol, Sequence

from fibuild.spec.model import LatencyStats

FAST = "FAST"
SLOW = "SLOW"
SAME = "SAME"
AMBIGUOUS = "AMBIGUOUS"
VERDICTS = (FAST, SLOW, SAME, AMBIGUOUS)

#: The smallest gain of the median that counts as a win (a fraction of the incumbent's median).
MIN_GAIN = 0.02
#: A measurement is noisy when its interquartile range (p20..p80 for old records) exceeds this
#: fraction of its median: on a loaded machine a rank taken from it means little.
NOISY_SPREAD = 0.25
#: The name of the rule, as ``explain`` and ``fibuild table`` print it.
RULE = (f"robust interval rule: a win needs >= {MIN_GAIN:.0%} on the median and q3 below the "
        f"other's minimum; within {MIN_GAIN / 2:.0%} is SAME; otherwise AMBIGUOUS")


#: How the caller runs a kernel. ``graph``: inside a captured CUDA graph, where only GPU time
#: counts; ``eager``: launched from Python one call at a time, where the next launch waits for
#: the host side of this one, so a call costs the larger of its host and GPU times.
EAGER = "eager"
GRAPH = "graph"
MODES = (EAGER, GRAPH)


class Spread(Protocol):
    """What the rule reads of a measurement (a LatencyStats, or a cost made of two)."""

    median_us: float
    p20_us: float
    p80_us: float
    min_us: float | None
    q1_us: float | None
    q3_us: float | None


@dataclass(frozen=True)
class Interval:
    """Where most samples of one measurement lie: ``low`` (min, or p20), ``median``, ``high``
    (q3, or p80), in µs."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, stats: Spread) -> "Interval":
        low = stats.min_us if stats.min_us is not None else stats.p20_us
        high = stats.q3_us if stats.q3_us is not None else stats.p80_us
        return cls(min(low, stats.median_us), stats.median_us, max(high, stats.median_us))


@dataclass(frozen=True)
class Comparison:
    """The verdict on a challenger against an incumbent, with the numbers behind it.

    ``gain``: 1 - challenger median / incumbent median (positive: the challenger is faster).
    ``disjoint``: the two intervals do not overlap.
    """

    verdict: str
    gain: float
    disjoint: bool

    def describe(self) -> str:
        """``FAST (4.1% faster, intervals apart)``: the verdict and why, for decision traces."""
        how = f"{abs(self.gain):.1%} {'faster' if self.gain >= 0 else 'slower'}"
        return f"{self.verdict} ({how}, intervals {'apart' if self.disjoint else 'overlap'})"


def compare(challenger: Spread, incumbent: Spread) -> Comparison:
    """The verdict on ``challenger`` against ``incumbent`` (see the module docstring).

    A non-positive incumbent median (no measurement) gives AMBIGUOUS. Cost: a few float ops.
    """
    a, b = Interval.of(challenger), Interval.of(incumbent)
    if not b.median > 0:
        return Comparison(AMBIGUOUS, 0.0, False)
    gain = 1.0 - a.median / b.median
    below, above = a.high < b.low, a.low > b.high
    if gain >= MIN_GAIN and below:
        verdict = FAST
    elif -gain >= MIN_GAIN and above:
        verdict = SLOW
    elif abs(gain) < MIN_GAIN / 2:
        verdict = SAME
    else:
        verdict = AMBIGUOUS
    return Comparison(verdict, gain, below or above)


def caller_cost(gpu: LatencyStats, host: LatencyStats | None, mode: str) -> LatencyStats:
    """The cost per call a caller in ``mode`` pays: ``gpu`` in graph mode (or without a host
    time), else the field-wise larger of ``host`` and ``gpu`` (an upper envelope of the two
    distributions: exact where one side dominates, which is the usual case).

    Raises ValueError for an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected {' or '.join(MODES)}")
    if mode == GRAPH or host is None:
        return gpu

    def larger(name: str) -> float | None:
        a, b = getattr(gpu, name), getattr(host, name)
        return None if a is None or b is None else max(a, b)

    return LatencyStats(median_us=larger("median_us"), p20_us=larger("p20_us"), p80_us=larger("p80_us"),
                        mean_us=larger("mean_us"), n=min(gpu.n, host.n), min_us=larger("min_us"),
                        q1_us=larger("q1_us"), q3_us=larger("q3_us"))


#: Solutions with host times at fewer keys than this do not inform :func:`host_slowdown`.
SLOWDOWN_MIN_KEYS = 3


def host_slowdown(medians: Iterable[Sequence[float]]) -> float:
    """How much slower than at its best a launch path ran on this host: for each solution
    with host medians at >= :data:`SLOWDOWN_MIN_KEYS` keys (``medians``, one sequence a
    solution), its largest over its smallest; the median of those ratios (1.0 if none).

    The host's state (its clock, a neighbour's load) slows every launch path alike, in
    stretches of a second or two: on the H100, every SiLU×mul solution ran 1.4-1.7x slower
    on the host for the items of one batch size, a different one in each of two runs. A
    solution whose items all fell outside such stretches shows none of it at its own keys,
    yet the next run may catch it there. The median over solutions is what any one of them
    can expect, and no single solution whose host cost truly grows with the shape sets it.
    """
    import statistics  # slow path only: statistics pulls in decimal and fractions

    ratios = [max(ms) / min(ms) for ms in map(list, medians)
              if len(ms) >= SLOWDOWN_MIN_KEYS and min(ms) > 0]
    return max(1.0, statistics.median(ratios)) if ratios else 1.0


def spanning(stats: LatencyStats, others: Iterable[LatencyStats], slowdown: float = 1.0) -> LatencyStats:
    """``stats`` with the interval the rule reads (min..q3, p20..p80) stretched to cover
    ``others``' intervals, and its upper ends to at least ``slowdown`` times the lowest median
    among them (:func:`host_slowdown`); median, q1, mean and n unchanged.

    For host times: the host cost of a launch path does not depend on the shape, but it drifts
    between the stretches in which a bench times one item after another (on the H100, one
    RMSNorm measured 14.7 µs a call at batch 7 and 10.1 µs at batch 32, each within +-8 %).
    One item's spread cannot see that drift; the same solution's items at its other keys can,
    and the slowdown other solutions saw says how far it can go where this one's items did
    not happen to meet it. Only upper ends grow: a win must hold at the slow end.
    """
    pool = [stats, *others]
    floor = min(s.median_us for s in pool) * slowdown

    def stretched(name: str, pick, at_least: float | None = None) -> float | None:
        own = getattr(stats, name)
        if own is None:
            return None
        value = pick(v for v in (getattr(s, name) for s in pool) if v is not None)
        return value if at_least is None else max(value, at_least)

    return replace(stats, min_us=stretched("min_us", min), q3_us=stretched("q3_us", max, floor),
                   p20_us=stretched("p20_us", min), p80_us=stretched("p80_us", max, floor))


def relative_spread(stats: Spread) -> float:
    """(q3 - q1) / median, or (p80 - p20) / median for records without quartiles."""
    if stats.median_us <= 0:
        return 0.0
    if stats.q1_us is not None and stats.q3_us is not None:
        return (stats.q3_us - stats.q1_us) / stats.median_us
    return (stats.p80_us - stats.p20_us) / stats.median_us


def noisy(stats: Spread | None) -> bool:
    """Whether a measurement's spread is too wide to rank on (:data:`NOISY_SPREAD`)."""
    return stats is not None and relative_spread(stats) > NOISY_SPREAD

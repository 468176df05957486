"""Timing statistics and the CPU timer, on a synthetic clock."""
from __future__ import annotations

import pytest

from fibuild.bench.timing import MAX_REPS, MIN_REPS, percentile, repetitions, summarize, time_calls, time_cpu
from fibuild.errors import BenchError


def test_summarize_matches_hand_computed_quantiles():
    stats = summarize([5, 1, 4, 2, 3])
    assert (stats.median_us, stats.p20_us, stats.p80_us, stats.mean_us, stats.n) == (3, 1.8, 4.2, 3, 5)
    assert summarize([7]).p20_us == 7
    assert percentile([0, 10], 0.25) == 2.5
    with pytest.raises(ValueError):
        summarize([])


def test_repetitions_clamps():
    assert repetitions(100, 1.0) == 100
    assert repetitions(100, 1000.0) == MIN_REPS
    assert repetitions(100, 1e-9) == MAX_REPS
    assert repetitions(10, 0.0) == MAX_REPS


class FakeClock:
    """A clock in ns that advances only when the timed function runs."""

    def __init__(self, durations_ns):
        self.now = 0
        self.durations = list(durations_ns)
        self.calls = []

    def __call__(self):
        return self.now

    def fn(self, *args):
        self.calls.append(args)
        self.now += self.durations[(len(self.calls) - 1) % len(self.durations)]


def test_cpu_timer_on_a_synthetic_clock():
    # Calls take 1, 2, 3, 4, 5 us in turn; 10 ms of warm-up at 3 us mean -> ~3334 calls,
    # then 1 ms of repetitions at 3 us -> 333 samples.
    clock = FakeClock([1000, 2000, 3000, 4000, 5000])
    sets = [("a",), ("b",), ("c",)]
    timing = time_cpu(clock.fn, sets, warmup_ms=10, rep_ms=1, clock=clock)
    warm = len(clock.calls) - timing.stats.n
    assert timing.stats.n == 333
    assert warm * 3000 >= 10e6 > (warm - 5) * 3000
    assert timing.stats.median_us == 3.0
    assert 1.0 <= timing.stats.p20_us <= 2.0
    assert 4.0 <= timing.stats.p80_us <= 5.0
    assert timing.stats.mean_us == pytest.approx(3.0, abs=0.02)
    assert {c[0] for c in clock.calls} == {"a", "b", "c"}  # input sets are rotated
    assert clock.calls[0] == ("a",) and clock.calls[1] == ("b",) and clock.calls[3] == ("a",)
    assert timing.method["method"] == "perf_counter_ns" and timing.method["input_sets"] == 3


def test_cpu_timer_runs_real_calls():
    import torch

    x = torch.randn(256, 256)
    timing = time_calls(torch.mm, [(x, x), (x.clone(), x.clone())], device="cpu", warmup_ms=2, rep_ms=5)
    assert timing.stats.n >= MIN_REPS
    assert 0 < timing.stats.p20_us <= timing.stats.median_us <= timing.stats.p80_us


def test_timer_errors():
    with pytest.raises(BenchError, match="at least one input set"):
        time_cpu(lambda: None, [], warmup_ms=1, rep_ms=1)
    with pytest.raises(BenchError, match="CUDA-graph"):
        time_calls(lambda: None, [()], device="cpu", warmup_ms=1, rep_ms=1, graph=True)

"""The comparison rule (FAST / SLOW / SAME / AMBIGUOUS), the caller's cost per mode, and the
noise flag, on hand-made statistics; and the bench report's noisy-measurement warning."""
from __future__ import annotations

import types

import pytest

from fibuild.bench.compare import (
    AMBIGUOUS,
    FAST,
    SAME,
    SLOW,
    Interval,
    caller_cost,
    compare,
    host_slowdown,
    noisy,
    relative_spread,
    spanning,
)
from fibuild.cli.bench_report import noisy_measurements, report_evaluations
from fibuild.spec.model import Evaluation, LatencyStats


def stats(median, *, low=None, high=None, p20=None, p80=None, q1=None) -> LatencyStats:
    """Schema-2 stats with min ``low`` and q3 ``high`` (defaults ±1 %), or schema-1 ones
    (``low``/``high`` None and p20/p80 given)."""
    if p20 is not None:
        return LatencyStats(median, p20, p80, median, 100)
    low = median * 0.99 if low is None else low
    high = median * 1.01 if high is None else high
    return LatencyStats(median, low, high * 1.01, median, 100, min_us=low, q1_us=q1 or (low + median) / 2,
                        q3_us=high)


@pytest.mark.parametrize("challenger, incumbent, verdict", [
    (stats(9.0), stats(10.0), FAST),                                # 10 % faster, intervals apart
    (stats(11.0), stats(10.0), SLOW),
    (stats(9.95), stats(10.0), SAME),                               # 0.5 %: within 1 %
    (stats(9.91, low=9.9, high=9.92), stats(10.0, low=9.99, high=10.01), SAME),  # 0.9 %, apart: below the band
    (stats(9.85, low=9.84, high=9.86), stats(10.0, low=9.99, high=10.01), AMBIGUOUS),  # 1.5 %: in the band
    (stats(9.0, high=10.5), stats(10.0), AMBIGUOUS),                # 10 % by the median, q3 above the min
    (stats(9.0, p20=8.0, p80=9.5), stats(10.0, p20=9.6, p80=10.5), FAST),  # schema 1: p20..p80
    (stats(9.0, p20=8.0, p80=9.8), stats(10.0, p20=9.6, p80=10.5), AMBIGUOUS),
])
def test_verdicts(challenger, incumbent, verdict):
    result = compare(challenger, incumbent)
    assert result.verdict == verdict, result
    # The rule is symmetric: FAST one way is SLOW the other; SAME and AMBIGUOUS stay.
    mirror = {FAST: SLOW, SLOW: FAST}.get(verdict, verdict)
    assert compare(incumbent, challenger).verdict == mirror


def test_describe_and_gain():
    c = compare(stats(9.0), stats(10.0))
    assert c.gain == pytest.approx(0.1) and c.disjoint
    assert c.describe() == "FAST (10.0% faster, intervals apart)"
    assert compare(stats(5.0), LatencyStats(0.0, 0.0, 0.0, 0.0, 5)).verdict == AMBIGUOUS


def test_interval_uses_min_and_q3_else_p20_p80():
    assert Interval.of(stats(10.0, low=9.0, high=10.5)) == Interval(9.0, 10.0, 10.5)
    assert Interval.of(stats(10.0, p20=9.5, p80=11.0)) == Interval(9.5, 10.0, 11.0)


def test_caller_cost_by_mode():
    gpu = stats(5.0)
    host = stats(17.0)
    assert caller_cost(gpu, host, "graph") is gpu
    assert caller_cost(gpu, None, "eager") is gpu  # no host time recorded (CPU, schema 1)
    eager = caller_cost(gpu, host, "eager")
    assert eager.median_us == 17.0 and eager.min_us == host.min_us and eager.q3_us == host.q3_us
    mixed = caller_cost(stats(20.0), host, "eager")
    assert mixed.median_us == 20.0
    with pytest.raises(ValueError, match="unknown mode 'lazy'"):
        caller_cost(gpu, host, "lazy")


def test_host_slowdown_is_the_median_solutions_largest_over_smallest():
    # the H100's first stability run, SiLU×mul host medians at four keys
    steady, fi, triton = [10.14, 10.16, 9.82, 9.81], [12.73, 20.92, 13.14, 12.55], [12.15, 18.78, 11.94, 12.28]
    assert host_slowdown([steady, fi, triton]) == pytest.approx(18.78 / 11.94)
    assert host_slowdown([steady, [12.0, 30.0]]) == pytest.approx(10.16 / 9.81)  # two keys: not evidence
    assert host_slowdown([]) == 1.0 and host_slowdown([[5.0, 5.0, 5.0]]) == 1.0


def test_spanning_covers_other_keys_and_reaches_the_slowdown():
    own, other = stats(10.0, low=9.8, high=10.2), stats(12.0, low=11.0, high=14.0)
    wide = spanning(own, [own, other])
    assert (wide.median_us, wide.min_us, wide.q3_us, wide.q1_us) == (10.0, 9.8, 14.0, own.q1_us)
    slowed = spanning(own, [own], slowdown=1.5)  # upper ends only: a win must hold at the slow end
    assert (slowed.min_us, slowed.q3_us, slowed.p80_us) == (9.8, 15.0, 15.0)
    assert spanning(own, [own], slowdown=1.01).q3_us == pytest.approx(10.2)  # never lowered


def test_noisy_flags_wide_spreads_only():
    assert relative_spread(stats(10.0, q1=9.0, high=11.0)) == pytest.approx(0.2)
    assert not noisy(stats(10.0, q1=9.0, high=11.0))
    assert noisy(stats(10.0, q1=8.0, high=13.0))  # IQR 50 % of the median
    assert noisy(stats(25.0, p20=5.0, p80=48.0))  # schema 1: the loaded 2-core machine's kind
    assert not noisy(None)


def evaluation(solution, latency, status="PASSED"):
    return Evaluation(definition="d", solution=solution, solution_digest="", build_key="", workload_uuid="w1",
                      axes={"n": 1}, status=status, device="cpu-test", latency=latency)


def test_bench_report_warns_of_noisy_measurements(capsys, tmp_path):
    evs = [evaluation("steady", stats(10.0)), evaluation("shaky", stats(25.0, p20=5.0, p80=48.0)),
           evaluation("broken", None, status="RUNTIME_ERROR")]
    assert [(ev.solution, round(s, 2)) for ev, s in noisy_measurements(evs)] == [("shaky", 1.72)]
    args = types.SimpleNamespace(json=True, allow_failures=True)
    assert report_evaluations(args, None, None, evs, tmp_path) == 0
    captured = capsys.readouterr()
    assert '"noisy"' in captured.out and '"shaky"' in captured.out
    assert "warning: 1 of 3 measurements are noisy" in captured.err and "--ambiguous" in captured.err

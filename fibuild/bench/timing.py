"""Latency measurement: CPU (``perf_counter_ns``), GPU (CUDA events, L2 flush) and CUDA graphs.

Every timer calls ``fn(*args)`` on input sets rotated round-robin (several cloned sets,
so a kernel that caches its last output cannot win), warms up for ``warmup_ms``, then
times one call per sample for about ``rep_ms`` (at least ``MIN_REPS``, at most
``MAX_REPS`` samples). :func:`summarize` turns samples into median / p20 / p80 / mean / min /
quartiles. The CUDA timers also time the host side of each call (:func:`time_host`): an eager
caller pays the larger of the two.
Each timer returns a :class:`Measurement`: the stats plus a description of the method, which
goes into the evaluation's environment. :func:`time_graph_replays` is the one CUDA-graph
timer; the distributed ranks call it too, with a barrier before the timed replays.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import BenchError
from ..spec.model import LatencyStats

# Heavy or optional dependencies, imported inside the functions that use them: torch.

MIN_REPS = 5
MAX_REPS = 10_000
#: Calls captured per CUDA graph in graph mode: enough to amortize the replay launch.
GRAPH_CALLS = 20


@dataclass(frozen=True)
class Measurement:
    """Latency ``stats`` of one timed function and ``method``: how they were measured.

    ``host``: on CUDA devices, the host time per call (what an eager caller waits before its
    next launch), None on CPUs, where ``stats`` is host time already.
    """

    stats: LatencyStats
    method: dict[str, Any] = field(default_factory=dict)
    host: LatencyStats | None = None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ascending ``sorted_values``, linear interpolation."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac


def summarize(samples_us: Sequence[float]) -> LatencyStats:
    """Median, p20, p80, mean, minimum and quartiles of samples in microseconds (ValueError
    when empty): what :mod:`fibuild.bench.compare` needs to judge a difference against noise."""
    values = sorted(float(s) for s in samples_us)
    if not values:
        raise ValueError("no latency samples")
    return LatencyStats(median_us=percentile(values, 0.5), p20_us=percentile(values, 0.2),
                        p80_us=percentile(values, 0.8), mean_us=sum(values) / len(values), n=len(values),
                        min_us=values[0], q1_us=percentile(values, 0.25), q3_us=percentile(values, 0.75))


def repetitions(budget_ms: float, per_call_ms: float, *, low: int = MIN_REPS, high: int = MAX_REPS) -> int:
    """How many calls of ``per_call_ms`` fit ``budget_ms``, clamped to [low, high]."""
    if per_call_ms <= 0:
        return high
    return max(low, min(high, int(budget_ms / per_call_ms)))


def _check_sets(arg_sets: Sequence[Sequence[Any]]) -> None:
    if not arg_sets:
        raise BenchError("timing needs at least one input set")


def time_cpu(fn: Callable, arg_sets: Sequence[Sequence[Any]], *, warmup_ms: float, rep_ms: float,
             clock: Callable[[], int] = time.perf_counter_ns) -> Measurement:
    """Time ``fn`` on the CPU with ``clock`` (ns), one sample per call.

    Warm-up runs until ``warmup_ms`` has passed (at least one call); its mean per-call time
    sets the number of samples. Cost: about ``warmup_ms + rep_ms``.
    """
    _check_sets(arg_sets)
    k = len(arg_sets)
    calls, start = 0, clock()
    while True:
        fn(*arg_sets[calls % k])
        calls += 1
        elapsed_ns = clock() - start
        if elapsed_ns >= warmup_ms * 1e6:
            break
    reps = repetitions(rep_ms, elapsed_ns / 1e6 / calls)
    samples = []
    for i in range(reps):
        args = arg_sets[(calls + i) % k]
        t0 = clock()
        fn(*args)
        samples.append((clock() - t0) / 1e3)
    return Measurement(summarize(samples), {"method": "perf_counter_ns", "input_sets": k,
                                       "warmup_ms": warmup_ms, "rep_ms": rep_ms})


def l2_flush_buffer(device) -> Any:
    """An int8 buffer twice the device's L2 size; zeroing it evicts the L2."""
    import torch

    l2 = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0)
    nbytes = 2 * l2 if l2 > 0 else 256 * 1024 * 1024  # unknown L2: more than any current GPU's
    return torch.empty(nbytes, dtype=torch.int8, device=device)


def _estimate_cuda_ms(fn: Callable, arg_sets, calls: int = 5) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(calls):
        fn(*arg_sets[i % len(arg_sets)])
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


#: Samples queued behind one GPU sleep (well under the driver's launch-queue depth).
AHEAD_CHUNK = 32
#: An upper bound of SM clocks (cycles/s): a sleep of ``s * SLEEP_CYCLES_PER_S`` cycles lasts
#: at least ``s`` seconds on any current GPU.
SLEEP_CYCLES_PER_S = 2.0e9


def _host_seconds_per_sample(fn: Callable, arg_sets, flush, calls: int = 8) -> float:
    """Host time to queue one sample (flush, two events, the call), measured without syncing."""
    import torch

    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    t0 = time.perf_counter()
    for i in range(calls):
        flush.zero_()
        events[0].record()
        fn(*arg_sets[i % len(arg_sets)])
        events[1].record()
    elapsed = (time.perf_counter() - t0) / calls
    torch.cuda.synchronize()
    return elapsed


#: Host-time samples at most (each one call); the budget is a quarter of ``rep_ms``.
MAX_HOST_SAMPLES = 2_000


def time_host(fn: Callable, arg_sets: Sequence[Sequence[Any]], *, device, rep_ms: float,
              gpu_ms: float = 0.0) -> LatencyStats:
    """Host time per call of ``fn`` on a CUDA ``device``: each call timed alone with
    ``perf_counter_ns`` while a GPU sleep queued ahead of each chunk of calls keeps the launch
    queue from filling, so a sample is the caller's own cost (Python, argument handling,
    launch), not a wait for the GPU. Synchronizes between chunks (untimed).

    ``gpu_ms``: the GPU time of one call, so that GPU-bound calls take fewer samples.
    Cost: about ``rep_ms / 4`` of host time and at most as much GPU time.
    """
    import torch

    k = len(arg_sets)
    host_s = _host_seconds_per_call(fn, arg_sets)
    reps = repetitions(rep_ms / 4, max(host_s * 1e3, gpu_ms), high=MAX_HOST_SAMPLES)
    samples: list[float] = []
    clock = time.perf_counter_ns
    for first in range(0, reps, AHEAD_CHUNK):
        chunk = min(AHEAD_CHUNK, reps - first)
        torch.cuda._sleep(int((chunk * host_s * 2 + 50e-6) * SLEEP_CYCLES_PER_S))
        for i in range(first, first + chunk):
            args = arg_sets[i % k]
            t0 = clock()
            fn(*args)
            samples.append((clock() - t0) / 1e3)
        torch.cuda.synchronize(device)
    return summarize(samples)


def _host_seconds_per_call(fn: Callable, arg_sets, calls: int = 8) -> float:
    """A first estimate of the host time per call (no sleep ahead; a GPU-bound call blocks)."""
    import torch

    t0 = time.perf_counter()
    for i in range(calls):
        fn(*arg_sets[i % len(arg_sets)])
    elapsed = (time.perf_counter() - t0) / calls
    torch.cuda.synchronize()
    return elapsed


def time_cuda(fn: Callable, arg_sets: Sequence[Sequence[Any]], *, warmup_ms: float, rep_ms: float,
              device=None) -> Measurement:
    """Time ``fn`` with CUDA events around each call, the L2 flushed before each sample.

    Runs on the current stream of ``device`` (default: the current device). The flush is
    outside the events. Samples are queued in chunks behind a GPU sleep long enough for the
    host to queue the whole chunk, so an event pair times the GPU work of the call and not
    the host's launch gaps (which otherwise dominate kernels of a few microseconds).
    Cost: about ``warmup_ms + rep_ms`` of GPU time plus the flushes and sleeps.
    """
    import torch

    _check_sets(arg_sets)
    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    k = len(arg_sets)
    flush = l2_flush_buffer(device)
    fn(*arg_sets[0])
    torch.cuda.synchronize(device)
    est_ms = _estimate_cuda_ms(fn, arg_sets)
    for i in range(repetitions(warmup_ms, est_ms, low=1)):
        fn(*arg_sets[i % k])
    host_s = _host_seconds_per_sample(fn, arg_sets, flush)
    reps = repetitions(rep_ms, est_ms)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if i % AHEAD_CHUNK == 0:
            ahead = min(AHEAD_CHUNK, reps - i) * host_s * 1.5 + 20e-6
            torch.cuda._sleep(int(ahead * SLEEP_CYCLES_PER_S))
        flush.zero_()
        starts[i].record()
        fn(*arg_sets[i % k])
        ends[i].record()
    torch.cuda.synchronize(device)
    samples = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    host = time_host(fn, arg_sets, device=device, rep_ms=rep_ms, gpu_ms=est_ms)
    return Measurement(summarize(samples), {"method": "cuda_events", "l2_flush_bytes": flush.numel(),
                                       "input_sets": k, "warmup_ms": warmup_ms, "rep_ms": rep_ms,
                                       "queued_ahead": AHEAD_CHUNK, "host": "perf_counter_ns"}, host)


def capture_cuda_graph(fn: Callable, arg_sets: Sequence[Sequence[Any]], *, device,
                       calls_per_graph: int = GRAPH_CALLS):
    """A CUDA graph of ``calls_per_graph`` calls of ``fn``, rotating ``arg_sets``.

    Three warm-up calls run on a side stream first (capture needs them: lazy workspaces,
    cuBLAS handles). Raises whatever capture raises for calls that cannot be captured.
    """
    import torch

    k = len(arg_sets)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for i in range(3):
            fn(*arg_sets[i % k])
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls_per_graph):
            fn(*arg_sets[i % k])
    torch.cuda.synchronize(device)
    return graph


def time_graph_replays(graph, *, device, warmup_ms: float, rep_ms: float, calls_per_graph: int,
                       input_sets: int, estimate_ms: Callable[[float], float] | None = None,
                       before_timing: Callable[[], None] | None = None) -> Measurement:
    """Time the replays of a captured CUDA ``graph`` of ``calls_per_graph`` calls with CUDA
    events; a sample is one replay divided by the calls in it.

    ``estimate_ms`` may turn this process's estimate of one replay into the one every
    process uses (the ranks agree on the slowest, so all replay equally often);
    ``before_timing`` runs after the warm-up, just before the timed replays (a barrier).
    Cost: about ``warmup_ms + rep_ms`` of GPU time.
    """
    import torch

    t0 = time.perf_counter_ns()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize(device)
    est_ms = (time.perf_counter_ns() - t0) / 3e6
    if estimate_ms is not None:
        est_ms = estimate_ms(est_ms)
    for _ in range(repetitions(warmup_ms, est_ms, low=1)):
        graph.replay()
    reps = repetitions(rep_ms, est_ms)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda.synchronize(device)
    if before_timing is not None:
        before_timing()
    for i in range(reps):
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize(device)
    samples = [s.elapsed_time(e) * 1e3 / calls_per_graph for s, e in zip(starts, ends)]
    return Measurement(summarize(samples), {"method": "cuda_graph", "calls_per_graph": calls_per_graph,
                                            "input_sets": input_sets, "warmup_ms": warmup_ms,
                                            "rep_ms": rep_ms})


def time_cuda_graph(fn: Callable, arg_sets: Sequence[Sequence[Any]], *, warmup_ms: float, rep_ms: float,
                    device=None, calls_per_graph: int = GRAPH_CALLS) -> Measurement:
    """Capture ``calls_per_graph`` calls (rotating the input sets) in one CUDA graph and time
    its replays (:func:`time_graph_replays`).

    For launch-bound kernels: launch overhead is gone and the L2 is not flushed between
    calls. Raises whatever capture raises for kernels that cannot be captured.
    """
    import torch

    _check_sets(arg_sets)
    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    graph = capture_cuda_graph(fn, arg_sets, device=device, calls_per_graph=calls_per_graph)
    timed = time_graph_replays(graph, device=device, warmup_ms=warmup_ms, rep_ms=rep_ms,
                               calls_per_graph=calls_per_graph, input_sets=len(arg_sets))
    # The eager host time too: the same record then answers both ways of calling.
    host = time_host(fn, arg_sets, device=device, rep_ms=rep_ms, gpu_ms=timed.stats.median_us / 1e3)
    return Measurement(timed.stats, {**timed.method, "host": "perf_counter_ns"}, host)


def time_calls(fn: Callable, arg_sets: Sequence[Sequence[Any]], *, device: str, warmup_ms: float,
               rep_ms: float, graph: bool = False) -> Measurement:
    """Pick the timer for ``device`` (``cpu``, ``cuda``, ``cuda:N``) and ``graph`` mode."""
    if device == "cpu":
        if graph:
            raise BenchError("CUDA-graph timing needs a CUDA device")
        return time_cpu(fn, arg_sets, warmup_ms=warmup_ms, rep_ms=rep_ms)
    if graph:
        return time_cuda_graph(fn, arg_sets, warmup_ms=warmup_ms, rep_ms=rep_ms, device=device)
    return time_cuda(fn, arg_sets, warmup_ms=warmup_ms, rep_ms=rep_ms, device=device)

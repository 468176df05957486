"""The benchmark runner on a CUDA GPU: the rmsnorm CUDA solution end to end, CUDA-graph mode,
and our event timer against triton.testing.do_bench."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
SOLUTION = "cuda_row_per_block"


@pytest.fixture
def workspace(tmp_path):
    from fibuild.config import Settings
    from fibuild.spec.workspace import Workspace

    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "defs", ws / "defs")
    shutil.copytree(ROOT / "solutions", ws / "solutions")
    settings = Settings.from_env({"FIBUILD_CACHE_DIR": str(tmp_path / "cache")}, root=ws)
    return Workspace(ws), settings


@pytest.mark.parametrize("graph", [False, True], ids=["events", "graph"])
def test_bench_rmsnorm_cuda(workspace, graph):
    import torch

    from fibuild.bench.runner import run_benchmarks
    from fibuild.devices import device_slug
    from fibuild.registry import Registry

    ws, settings = workspace
    evaluations = run_benchmarks(ws, settings, ["rmsnorm_h4096"], solutions=[SOLUTION], device="cuda:0",
                                 workload_limit=4, warmup_ms=10, rep_ms=50, graph=graph)
    assert [e.axes["batch_size"] for e in evaluations] == [1, 7, 32, 128]
    for ev in evaluations:
        assert ev.status == "PASSED", ev.error
        assert ev.device == device_slug("cuda:0")
        assert 0.5 < ev.latency.median_us < 1000, ev.latency  # sane for a 4096-wide row norm
        assert ev.latency.p20_us <= ev.latency.median_us <= ev.latency.p80_us
        assert ev.speedup and ev.speedup > 0
        timing = ev.environment["timing"]
        assert timing["method"] == ("cuda_graph" if graph else "cuda_events")
        if not graph:
            l2 = torch.cuda.get_device_properties(0).L2_cache_size
            assert timing["l2_flush_bytes"] == 2 * l2
        major, minor = torch.cuda.get_device_capability(0)
        assert ev.environment["compute_capability"] == f"{major}.{minor}"
        # Schema 2: the spread the comparison rule reads, and the host time per call (eager cost).
        lat, host = ev.latency, ev.host_latency
        assert lat.min_us <= lat.q1_us <= lat.median_us <= lat.q3_us <= lat.p80_us
        assert host is not None and 1.0 < host.median_us < 200, host  # a launch from Python
        assert ev.reference_host_latency is not None and ev.reference_host_latency.n >= 5
        assert timing["host"] == "perf_counter_ns"
    recorded = Registry(ws.registry_dir).read("rmsnorm_h4096", device_slug("cuda:0"))
    assert len(recorded) == 4 and recorded == evaluations


def test_event_timer_agrees_with_triton_do_bench(workspace):
    import torch
    import triton.testing

    from fibuild.bench.inputs import clone_inputs, make_inputs
    from fibuild.bench.timing import time_cuda
    from fibuild.compile.cache import BuildCache

    ws, settings = workspace
    defn = ws.definition("rmsnorm_h4096")
    kernel = BuildCache(settings).get_or_build(defn, ws.solution(SOLUTION, definition="rmsnorm_h4096"))
    workload = next(w for w in defn.workloads if w.axes["batch_size"] == 8192)
    args = make_inputs(defn, workload, device="cuda")
    ours = time_cuda(kernel.call, [clone_inputs(args) for _ in range(4)], warmup_ms=25, rep_ms=200).stats
    theirs_ms = triton.testing.do_bench(lambda: kernel.call(*args), warmup=25, rep=200, return_mode="median")
    theirs_us = theirs_ms * 1e3
    torch.cuda.synchronize()
    assert abs(ours.median_us - theirs_us) / theirs_us < 0.10, (ours, theirs_us)


def test_event_timer_times_the_gpu_not_host_launch_gaps(workspace):
    """At one row the kernel runs for a few microseconds, less than the host needs to launch
    it; the event timer must still report GPU time, close to a CUDA-graph replay's."""

    from fibuild.bench.inputs import clone_inputs, make_inputs
    from fibuild.bench.timing import time_cuda, time_cuda_graph
    from fibuild.compile.cache import BuildCache

    ws, settings = workspace
    defn = ws.definition("rmsnorm_h4096")
    kernel = BuildCache(settings).get_or_build(defn, ws.solution(SOLUTION, definition="rmsnorm_h4096"))
    workload = next(w for w in defn.workloads if w.axes["batch_size"] == 1)
    args = make_inputs(defn, workload, device="cuda")
    sets = [clone_inputs(args) for _ in range(4)]

    def slow_host_call(*a):  # 30 µs of host work per call, far more than the kernel takes
        import time
        deadline = time.perf_counter() + 30e-6
        while time.perf_counter() < deadline:
            pass
        return kernel.call(*a)

    events = time_cuda(slow_host_call, sets, warmup_ms=10, rep_ms=50).stats
    graph = time_cuda_graph(kernel.call, sets, warmup_ms=10, rep_ms=50).stats
    assert events.median_us < 2 * graph.median_us + 5.0, (events, graph)


def test_host_time_is_the_callers_not_the_gpus():
    """A launch-bound call (tiny add) has a host time near its launch cost; a GPU-bound one
    (a long sleep) still reports the host side alone, since the queue never fills."""
    import torch

    from fibuild.bench.timing import time_cuda, time_host

    x = torch.ones(16, device="cuda")
    small = time_cuda(lambda a: a + 1, [(x,)], warmup_ms=5, rep_ms=20)
    assert small.host is not None and small.host.median_us < 100
    long = time_host(lambda: torch.cuda._sleep(2_000_000), [()], device="cuda", rep_ms=20, gpu_ms=1.0)
    assert long.median_us < 200, long  # ~1 ms of GPU work a call, a few µs of host work

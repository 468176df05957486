"""The distributed runner on several GPUs: NCCL, one GPU a rank, CUDA-graph timing.

Every solution of allreduce_add_rmsnorm_h4096 on world size 2 (and 4 / 8 where that many GPUs
are visible). The FlashInfer solutions must pass where flashinfer-python is installed, and
otherwise fail with a message naming the package. Their first call JIT-builds FlashInfer's
trtllm_comm module (minutes): the runner's prepare step allows it PREPARE_S, after which each
item gets ITEM_S; the whole test is bounded by TEST_S (SIGALRM: the runner then kills the ranks
and the test fails instead of hanging the suite).
"""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import signal
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = "allreduce_add_rmsnorm_h4096"
HAS_FLASHINFER = importlib.util.find_spec("flashinfer") is not None
PREPARE_S = 900.0  # FlashInfer's trtllm_comm build took ~300 s on an H200 host
ITEM_S = 120.0
TEST_S = 1800


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise TimeoutError in this (main) thread after ``seconds``; the runner's clean-up
    kills every rank on the way out."""
    def expire(signum, frame):
        raise TimeoutError(f"the distributed GPU test did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture
def workspace(tmp_path):
    from fibuild.config import Settings
    from fibuild.spec.workspace import Workspace

    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "defs" / "allreduce", ws / "defs" / "allreduce")
    shutil.copytree(ROOT / "solutions" / DEFINITION, ws / "solutions" / DEFINITION)
    shutil.copytree(ROOT / "solutions" / "_lib", ws / "solutions" / "_lib")  # the libraries they name
    settings = Settings.from_env({"FIBUILD_CACHE_DIR": str(tmp_path / "cache")}, root=ws)
    return Workspace(ws), settings


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_every_solution_on_nccl_ranks(workspace, world_size):
    if _gpus() < world_size:
        pytest.skip(f"needs {world_size} CUDA GPUs, {_gpus()} visible")
    from fibuild.bench.distributed import run_distributed
    from fibuild.registry import Registry

    ws, settings = workspace
    with deadline(TEST_S):
        evaluations = run_distributed(ws, settings, DEFINITION, world_size=world_size, device="cuda",
                                      workload_limit=3, warmup_ms=10, rep_ms=50, timeout_s=ITEM_S,
                                      prepare_timeout_s=PREPARE_S)
    assert {e.solution for e in evaluations} == {"torch_nccl_then_rmsnorm", "flashinfer_oneshot",
                                                 "flashinfer_twoshot"}
    for ev in evaluations:
        assert ev.axes["world_size"] == world_size
        assert ev.environment["backend"] == "nccl"
        tokens = ev.axes["num_tokens"]
        if ev.solution == "torch_nccl_then_rmsnorm" or (HAS_FLASHINFER and ev.solution == "flashinfer_oneshot"):
            expected = "PASSED"
        elif ev.solution == "flashinfer_twoshot" and HAS_FLASHINFER:
            expected = "PASSED" if tokens > world_size else "RUNTIME_ERROR"
        else:
            expected = "RUNTIME_ERROR"
        assert ev.status == expected, (ev.solution, tokens, ev.error)
        if ev.status == "PASSED":
            assert ev.environment["timing"]["method"] == "cuda_graph"
            assert ev.latency.median_us > 0 and ev.prepare_s is not None and ev.prepare_s >= 0
            assert len(ev.environment["timing"]["rank_median_us"]) == world_size
        elif not HAS_FLASHINFER:
            assert "flashinfer-python" in ev.error
    assert len(Registry(ws.registry_dir).read(DEFINITION)) == len(evaluations)

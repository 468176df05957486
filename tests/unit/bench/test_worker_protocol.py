"""The worker protocol's JSON forms, and a worker process answering over pipes."""
from __future__ import annotations

from pathlib import Path

import pytest

from fibuild.bench.pool import WorkerCrashed, WorkerProcess, describe_exit
from fibuild.bench.protocol import settings_from_json, settings_to_json, workload_from_json, workload_to_json
from fibuild.config import Settings
from fibuild.spec.model import InputSpec, Workload

ROOT = Path(__file__).resolve().parents[3]


def test_settings_and_workloads_round_trip_through_json():
    import json

    settings = Settings.from_env({"FIBUILD_CUDA_ARCH_LIST": "8.0;9.0a", "FIBUILD_CACHE_DIR": "/tmp/x"},
                                 root=Path("/somewhere"))
    assert settings_from_json(json.loads(json.dumps(settings_to_json(settings)))) == settings
    wl = Workload("w", {"n": 3}, {"x": InputSpec("scalar", value=1.5),
                                  "y": InputSpec("safetensors", path="a.safetensors", tensor_key="k")}, "f.jsonl")
    assert workload_from_json(json.loads(json.dumps(workload_to_json(wl)))) == wl


def test_describe_exit():
    assert describe_exit(-11) == "killed by SIGSEGV"
    assert describe_exit(3) == "exited with code 3"


def test_worker_answers_then_reports_its_death(tmp_path):
    settings = Settings.from_env({"FIBUILD_CACHE_DIR": str(tmp_path / "cache")}, root=ROOT)
    worker = WorkerProcess(settings_to_json(settings), "cpu").start()
    try:
        assert worker.environment["device_kind"] == "cpu"
        defn_name = "rmsnorm_h4096"
        from fibuild.spec.workspace import Workspace

        wl = Workspace(ROOT).workloads(defn_name)[0]
        reply = worker.request({"op": "run", "id": 7, "definition": defn_name, "solution": f"{defn_name}/torch_fp32",
                                "workload": workload_to_json(wl), "warmup_ms": 1, "rep_ms": 2, "graph": False},
                               timeout_s=120)
        assert reply["id"] == 7 and reply["status"] == "PASSED", reply["error"]
        assert reply["latency"]["n"] >= 5 and reply["reference_latency"]["median_us"] > 0
        bad = worker.request({"op": "run", "id": 8, "definition": "no_such_def", "solution": "x/y",
                              "workload": workload_to_json(wl), "warmup_ms": 1, "rep_ms": 2}, timeout_s=60)
        assert bad["status"] == "RUNTIME_ERROR" and "no_such_def" in bad["error"]
        worker.kill()
        with pytest.raises(WorkerCrashed, match="killed by SIGKILL"):
            worker.request({"op": "run"}, timeout_s=10)
    finally:
        worker.close()


class _Kernel:
    def __init__(self, exc):
        self.exc = exc

    def call(self, *args):
        raise self.exc


@pytest.mark.parametrize("collective", [False, True])
def test_a_variant_beyond_the_devices_shared_memory_does_not_cost_the_worker(collective):
    """Triton's OutOfResources is raised by its launcher before anything runs (the H100 refused
    grid variants needing 240 and 256 KiB): the item is a RUNTIME_ERROR naming the limit and the
    worker stays, except beside a collective; any other exception on a GPU stays fatal."""
    from triton.runtime.errors import OutOfResources

    from fibuild.bench.worker import first_call_reply

    def reply(exc):
        return first_call_reply({"id": 7}, lambda: (), lambda: _Kernel(exc), lambda: None, fatal=True,
                                collective=collective)

    refused = reply(OutOfResources(262144, 232448, "shared memory"))
    assert refused["status"] == "RUNTIME_ERROR" and "Required: 262144" in refused["error"]
    assert refused["fatal"] is collective
    crashed = reply(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert crashed["status"] == "RUNTIME_ERROR" and crashed["fatal"] is True

"""The farm on two GPUs: a local Dask cluster of one worker per GPU benches rmsnorm_h4096 and
records the same items, in the same shape, with latencies close to the local executor's."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
DEF = "rmsnorm_h4096"
ARGS = [DEF, "--device", "cuda", "--workload-limit", "4", "--warmup", "10", "--rep", "50"]


def _two_gpus() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() >= 2


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    if not _two_gpus():
        pytest.skip("needs 2 CUDA GPUs")
    pytest.importorskip("distributed", reason="needs Dask distributed (pip install 'fibuild[farm]')")
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(tmp_path / "cache"))
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "defs", ws / "defs")
    shutil.copytree(ROOT / "solutions", ws / "solutions")
    return ws


def _records(ws: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((ws / "registry" / DEF).glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def test_two_gpu_workers_bench_like_the_local_executor(workspace, capsys):
    from fibuild.cli import main
    from fibuild.devices import device_slug
    from fibuild.spec.schema import validate

    assert main(["--root", str(workspace), "bench", *ARGS]) == 0
    local = _records(workspace)
    shutil.rmtree(workspace / "registry")
    capsys.readouterr()

    assert main(["--root", str(workspace), "bench", *ARGS, "--executor", "dask", "--task-size", "2"]) == 0
    err = capsys.readouterr().err
    farm = _records(workspace)

    def identity(rec):
        return (rec["solution"], rec["workload_uuid"], rec["status"], rec["device"], rec["solution_digest"],
                rec["build_key"])

    assert sorted(map(identity, farm)) == sorted(map(identity, local))
    assert {r["device"] for r in farm} == {device_slug("cuda:0")}  # one slug for the two GPUs
    assert any(r["status"] == "PASSED" and r["solution"] != "torch_fp32" for r in farm)
    for rec in farm:
        assert validate("evaluation", rec) == []
        assert set(rec) == set(local[0]) and set(rec["environment"]) == set(local[0]["environment"])
    # Both GPU workers took items.
    workers = [line for line in err.splitlines() if line.startswith("worker tcp://")]
    assert len(workers) == 2 and all(" 0 done, 0 failed" not in line for line in workers), err
    # Latencies within noise of the local executor's (same GPU type, same timer).
    by_key = {(r["solution"], r["workload_uuid"]): r for r in local if r["status"] == "PASSED"}
    for rec in farm:
        ref = by_key.get((rec["solution"], rec["workload_uuid"]))
        if rec["status"] == "PASSED" and ref is not None:
            ratio = rec["latency"]["median_us"] / ref["latency"]["median_us"]
            assert 0.67 < ratio < 1.5, (rec["solution"], rec["workload_uuid"], ratio)

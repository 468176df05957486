"""The benchmark farm on a local Dask cluster of 2 CPU workers: the same records as the local
executor, node loss retried then recorded, ``--resume``, Ctrl-C leaves no process behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fibuild.cli import main
from fibuild.cli.bench_report import NOTHING_RAN
from fibuild.devices import device_slug
from fibuild.spec.schema import validate

if os.environ.get("CI"):  # CI installs fibuild[farm]: a missing engine is a failure there
    import distributed  # noqa: F401
else:
    pytest.importorskip("distributed")
import psutil  # a dependency of distributed

ROOT = Path(__file__).resolve().parents[3]
FARM_FIXTURE = ROOT / "tests" / "fixtures" / "farm"
FAST = ["--device", "cpu", "--warmup", "0", "--rep", "1", "--timeout", "120"]
DASK = ["--executor", "dask", "--farm-workers", "2", "--task-size", "1"]
#: A C++ and a torch solution, and a definition with a custom input generator: the kinds of
#: shipped solution a CPU farm runs, at a cost CI can pay on two cores.
SHIPPED_DEFS = ("rmsnorm_h4096", "gqa_paged_decode_h32_kv8_d128_ps1")


def registry_records(ws: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((ws / "registry").glob("*/*.jsonl"))
            if path.name != "workloads.jsonl" for line in path.read_text().splitlines()]


def identity(rec: dict) -> tuple:
    return (rec["definition"], rec["solution"], rec["workload_uuid"], rec["status"], rec["device"],
            rec["solution_digest"], rec["build_key"])


@pytest.fixture
def shipped(tmp_path, settings_env):
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "defs", ws / "defs")
    shutil.copytree(ROOT / "solutions", ws / "solutions")
    return ws


@pytest.fixture
def farm_ws(tmp_path, settings_env, monkeypatch):
    ws = tmp_path / "farm"
    shutil.copytree(FARM_FIXTURE, ws)
    monkeypatch.setenv("FIBUILD_TEST_FARM_MARKER", str(tmp_path / "killed-once"))
    return ws


@pytest.mark.slow
@pytest.mark.build
def test_farm_records_match_local_executor_and_resume_runs_nothing(shipped, capsys):
    argv = ["--root", str(shipped), "bench", *SHIPPED_DEFS, "--workload-limit", "2", *FAST]
    assert main(argv) == 0
    local = registry_records(shipped)
    shutil.rmtree(shipped / "registry")
    capsys.readouterr()

    assert main([*argv, *DASK, "--task-size", "2"]) == 0  # the last --task-size wins: 2 items a task
    err = capsys.readouterr().err
    farm = registry_records(shipped)
    assert sorted(map(identity, farm)) == sorted(map(identity, local))
    assert len(farm) == 6 and {r["status"] for r in farm} == {"PASSED"}
    assert {r["device"] for r in farm} == {device_slug("cpu")}
    for rec in farm:
        assert validate("evaluation", rec) == []
        assert set(rec) == set(local[0])  # the same record shape, field for field
        assert set(rec["environment"]) == set(local[0]["environment"])
        assert rec["latency"]["median_us"] > 0
    # Piped progress: one line per item, then one per worker with its counts (both worked).
    item_lines = [line for line in err.splitlines() if line.startswith("[")]
    assert len(item_lines) == len(farm) and all(" PASSED " in line for line in item_lines)
    worker_lines = [line for line in err.splitlines() if line.startswith("worker tcp://")]
    assert len(worker_lines) == 2
    assert sum(int(line.split(": ")[1].split(" done")[0]) for line in worker_lines) == len(farm)

    # --resume: every (workload, solution, digest, device) is recorded, so nothing runs (exit 5).
    assert main([*argv, *DASK, "--resume"]) == NOTHING_RAN
    err = capsys.readouterr().err
    assert f"resume: {len(farm)} item(s) already recorded on {device_slug('cpu')}" in err
    assert "farm: 0 item(s)" in err
    assert len(registry_records(shipped)) == len(farm)
    # The local executor resumes the same way.
    assert main([*argv, "--resume"]) == NOTHING_RAN
    assert len(registry_records(shipped)) == len(farm)


@pytest.mark.slow
def test_node_killed_mid_task_is_retried_once_then_recorded(farm_ws, capsys, tmp_path):
    argv = ["--root", str(farm_ws), "bench", "farm_scale", "--solution", "ok", "--solution", "kills_node",
            "--solution", "kills_node_once", "--workload-limit", "1", *FAST, *DASK]
    assert main(argv) == 1  # an evaluation is not PASSED (kills_node): bench says so in its exit code
    records = {r["solution"]: r for r in registry_records(farm_ws)}
    assert sorted(records) == ["kills_node", "kills_node_once", "ok"]
    assert records["ok"]["status"] == "PASSED"
    # Killed its worker once; the retry elsewhere found the marker and passed.
    assert (tmp_path / "killed-once").exists()
    assert records["kills_node_once"]["status"] == "PASSED", records["kills_node_once"]["error"]
    lost = records["kills_node"]
    assert lost["status"] == "RUNTIME_ERROR"
    assert "died under it 2 times" in lost["error"] and "not retried again" in lost["error"]
    assert lost["device"] == device_slug("cpu") and validate("evaluation", lost) == []
    assert "RUNTIME_ERROR" in capsys.readouterr().err


def _processes_with(token: str) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FIBUILD_TEST_FARM_TOKEN") == token:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.slow
def test_ctrl_c_cancels_the_farm_and_leaves_no_process(farm_ws, settings_env, tmp_path):
    token = uuid.uuid4().hex
    env = {**os.environ, "FIBUILD_TEST_FARM_TOKEN": token, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        # Ctrl-C reaches a foreground command whose SIGINT is not ignored; a test run started in
        # the background by a non-interactive shell (`cmd &`) passes SIGINT on ignored: undo that.
        driver = subprocess.Popen(
            [sys.executable, "-m", "fibuild", "--root", str(farm_ws), "bench", "farm_scale", "--solution", "hangs",
             *FAST, *DASK], env=env, stdout=sink, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            # Wait until a benchmark worker (grandchild) runs the hanging kernel.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                kids = [p for p in psutil.Process(driver.pid).children(recursive=True)
                        if "fibuild.bench.worker" in " ".join(p.cmdline())]
                if kids:
                    break
                time.sleep(0.5)
            assert kids, out.read_text()
            time.sleep(1.0)
            driver.send_signal(signal.SIGINT)
            try:
                code = driver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                tree = [" ".join(p.cmdline())[:160] for p in psutil.Process(driver.pid).children(recursive=True)]
                pytest.fail("the farm did not stop within 60 s of SIGINT; its output:\n" + out.read_text()
                            + "\nits processes:\n" + "\n".join(tree))
            assert code == 130, out.read_text()
        finally:
            if driver.poll() is None:
                driver.kill()
    deadline = time.monotonic() + 15
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_with(token) == []
    assert "interrupted" in out.read_text()
    assert not list((farm_ws / "registry").glob("*/*.jsonl"))  # nothing recorded for the cancelled items

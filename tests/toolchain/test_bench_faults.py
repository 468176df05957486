"""Fault isolation: C++ solutions that crash, hang, miscompute, misshape or fail to build each
get their status, the worker is replaced, and the run goes on (tests/fixtures/faults)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fibuild.bench.reporter import BenchReporter
from fibuild.bench.runner import run_benchmarks
from fibuild.config import Settings
from fibuild.registry import Registry
from fibuild.spec.schema import validate
from fibuild.spec.workspace import Workspace

pytestmark = pytest.mark.build

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "tests" / "fixtures" / "faults"


class Recorder(BenchReporter):
    def __init__(self):
        self.events = []

    def item_started(self, solution, workload_uuid, worker_device):
        self.events.append(("started", solution))

    def item_finished(self, evaluation):
        self.events.append(("finished", evaluation.solution, evaluation.status))

    def worker_replaced(self, worker_device, reason):
        self.events.append(("replaced", reason.split()[0]))


def test_each_fault_gets_its_status_and_the_run_goes_on(tmp_path):
    shutil.copytree(FAULTS, tmp_path / "ws")
    settings = Settings.from_env({"FIBUILD_CACHE_DIR": str(tmp_path / "cache")}, root=tmp_path / "ws")
    workspace = Workspace(settings.root)
    recorder = Recorder()
    evaluations = run_benchmarks(workspace, settings, ["fault_scale"], device="cpu", workload_limit=1,
                                 warmup_ms=1, rep_ms=5, timeout_s=5, reporter=recorder)
    by_solution = {e.solution: e for e in evaluations}
    assert {s: e.status for s, e in by_solution.items()} == {
        "compile_error": "COMPILE_ERROR", "hang": "TIMEOUT", "ok": "PASSED", "segfault": "RUNTIME_ERROR",
        "wrong_shape": "INCORRECT_SHAPE", "wrong_values": "INCORRECT_NUMERICAL"}
    assert "undeclared_identifier" in by_solution["compile_error"].error
    assert "SIGSEGV" in by_solution["segfault"].error
    assert "no reply within 5 s" in by_solution["hang"].error
    assert "(4, 65)" in by_solution["wrong_shape"].error
    wrong = by_solution["wrong_values"]
    assert wrong.max_abs_error > 0 and wrong.max_rel_error == pytest.approx(0.5)
    assert by_solution["ok"].latency.median_us > 0 and by_solution["ok"].max_abs_error == 0
    # Solutions run in name order: the hang and the segfault each cost a worker, and the
    # solutions after them still ran.
    order = [e[1] for e in recorder.events if e[0] == "started"]
    assert order == ["fault_scale/hang", "fault_scale/ok", "fault_scale/segfault", "fault_scale/wrong_shape",
                     "fault_scale/wrong_values"]
    assert [e[1] for e in recorder.events if e[0] == "replaced"] == ["timeout", "worker"]
    # Every result is a valid registry line.
    recorded = Registry(workspace.registry_dir).read("fault_scale")
    assert sorted(e.status for e in recorded) == sorted(e.status for e in evaluations)
    from fibuild.registry import evaluation_to_dict

    assert all(validate("evaluation", evaluation_to_dict(e)) == [] for e in recorded)

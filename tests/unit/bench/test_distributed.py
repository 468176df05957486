"""The distributed runner on CPU: 2 gloo ranks, real rank processes, real registry files."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fibuild.bench.distributed import run_distributed
from fibuild.bench.distributed_rank import rank_inputs
from fibuild.bench.plan import plan_distributed
from fibuild.bench.rank_group import GroupOutcome, merge_outcome
from fibuild.bench.reporter import BenchReporter
from fibuild.cli import main
from fibuild.compile.keys import solution_digest
from fibuild.config import Settings
from fibuild.devices import device_slug
from fibuild.errors import BenchError
from fibuild.registry import Registry
from fibuild.runtime.api import resolve
from fibuild.spec.documents import parse_yaml_mapping
from fibuild.spec.model import Evaluation, LatencyStats
from fibuild.spec.schema import validate
from fibuild.spec.semantics import check_definition
from fibuild.spec.workspace import Workspace

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "distributed"
TOY = "toy_allreduce_add_rmsnorm"
SHIPPED = "allreduce_add_rmsnorm_h4096"
FAST = {"warmup_ms": 1.0, "rep_ms": 5.0}


@pytest.fixture
def toy(tmp_path, settings_env):
    """A writable copy of the fixture workspace (its registry is written by the runs)."""
    ws = tmp_path / "ws"
    shutil.copytree(FIXTURE / "defs", ws / "defs")
    shutil.copytree(FIXTURE / "solutions", ws / "solutions")
    return ws


@pytest.fixture
def shipped(tmp_path, settings_env):
    ws = tmp_path / "shipped"
    shutil.copytree(ROOT / "defs" / "allreduce", ws / "defs" / "allreduce")
    shutil.copytree(ROOT / "solutions" / SHIPPED, ws / "solutions" / SHIPPED)
    shutil.copytree(ROOT / "solutions" / "_lib", ws / "solutions" / "_lib")  # the libraries it names
    return ws


def live_children() -> set[int]:
    """Pids of this process's children that have not exited (zombies excluded)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


class Recorder(BenchReporter):
    def __init__(self):
        self.calls: list[tuple] = []

    def item_started(self, solution, workload_uuid, worker_device):
        self.calls.append(("started", solution, workload_uuid, worker_device))

    def worker_replaced(self, worker_device, reason):
        self.calls.append(("replaced", worker_device, reason))


# -- pure parts ----------------------------------------------------------------------------

def test_rank_inputs_differ_per_rank_only_where_declared():
    defn = Workspace(FIXTURE).definition(TOY)
    workload = defn.workloads[0]
    r0, r1 = rank_inputs(defn, workload, 0), rank_inputs(defn, workload, 1)
    assert not torch.equal(r0[0], r1[0])  # hidden_states: this rank's partial sum
    assert torch.equal(r0[1], r1[1]) and torch.equal(r0[2], r1[2])  # residual, weight: replicated
    assert torch.equal(r1[0], rank_inputs(defn, workload, 1)[0])  # deterministic
    assert r0[0].shape == (3, 64) and r0[0].dtype == torch.bfloat16


def test_definition_checks_reject_a_bad_distributed_section():
    data, problems = parse_yaml_mapping((FIXTURE / "defs" / "allreduce" / f"{TOY}.yaml").read_text())
    assert problems == []
    assert check_definition(data) == []
    unknown = copy.deepcopy(data)
    unknown["distributed"] = {"world_size_axis": "ranks", "per_rank_inputs": ["partials"]}
    problems = dict(check_definition(unknown))
    assert "unknown axis 'ranks'" in problems["/distributed/world_size_axis"]
    assert "unknown input 'partials'" in problems["/distributed/per_rank_inputs/0"]
    in_shape = copy.deepcopy(data)
    in_shape["distributed"] = {"world_size_axis": "num_tokens"}
    assert "cannot be a tensor dimension" in dict(check_definition(in_shape))["/distributed/world_size_axis"]
    extra = copy.deepcopy(data)
    extra["distributed"]["ranks"] = 2
    assert validate("definition", extra) != []


def test_plan_keeps_the_world_size_workloads_and_refuses_bad_requests():
    ws = Workspace(FIXTURE)
    plan = plan_distributed(ws, TOY, world_size=2, solutions=["torch_separate"], device="cpu")
    assert [(g.solution.name, [w.axes for w in g.workloads]) for g in plan.groups] == [
        ("torch_separate", [{"num_tokens": 3, "world_size": 2}, {"num_tokens": 16, "world_size": 2}])]
    four = plan_distributed(ws, TOY, world_size=4, device="cpu").groups[0].workloads
    assert [w.axes["world_size"] for w in four] == [4]
    with pytest.raises(BenchError, match=r"no workloads with world_size=3 .*\[2, 4\]"):
        plan_distributed(ws, TOY, world_size=3, device="cpu")
    with pytest.raises(BenchError, match="no solution named nope"):
        plan_distributed(ws, TOY, world_size=2, solutions=["nope"], device="cpu")
    with pytest.raises(BenchError, match="cpu or cuda"):
        plan_distributed(ws, TOY, world_size=2, device="cuda:1")
    with pytest.raises(BenchError, match="without --world-size"):
        plan_distributed(Workspace(ROOT), "rmsnorm_h4096", world_size=2, device="cpu")


def test_merge_outcome_names_the_failing_rank():
    ok = {"status": "PASSED", "latency": {"median_us": 5.0, "p20_us": 4.0, "p80_us": 6.0, "mean_us": 5.0, "n": 9},
          "max_abs_error": 0.01, "timing": {"method": "perf_counter_ns+barrier"}}
    slow = {**ok, "latency": {**ok["latency"], "median_us": 7.0}, "max_abs_error": 0.02}
    status, merged, error = merge_outcome(GroupOutcome(replies={0: ok, 1: slow}), 10)
    assert (status, error) == ("PASSED", "")
    assert merged["latency"]["median_us"] == 7.0 and merged["max_abs_error"] == 0.02
    assert merged["timing"]["rank_median_us"] == [5.0, 7.0]
    bad = {"status": "INCORRECT_NUMERICAL", "error": "output 'output': max abs error 3"}
    status, merged, error = merge_outcome(GroupOutcome(replies={0: ok, 1: bad}), 10)
    assert status == "INCORRECT_NUMERICAL" and error.startswith("rank 1: INCORRECT_NUMERICAL")
    assert merged["latency"] is None
    status, _, error = merge_outcome(GroupOutcome(replies={0: ok}, gone={1: "rank 1 killed by SIGSEGV"}), 10)
    assert status == "RUNTIME_ERROR" and error.startswith("rank 1 killed by SIGSEGV")
    status, _, error = merge_outcome(GroupOutcome(replies={}, silent=[0, 1]), 4)
    assert status == "TIMEOUT" and "ranks 0, 1 did not answer within 4 s" in error


# -- real ranks ----------------------------------------------------------------------------

def test_reference_and_torch_solution_across_ranks(shipped, tmp_path):
    """Both ranks return the all-reduced sum + residual, normalized: checked against the sum
    computed here from the same per-rank inputs; load() keys calls with the group's size."""
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "FIBUILD_ROOT": str(shipped)}
    procs = [subprocess.Popen([sys.executable, str(FIXTURE / "rank_outputs.py"), str(shipped), SHIPPED,
                               "torch_nccl_then_rmsnorm", "16", str(rank), "2", str(tmp_path / "store"), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    total = ranks[0]["hidden_states"].float() + ranks[1]["hidden_states"].float()
    residual_out = (total + ranks[0]["residual"].float()).to(torch.bfloat16)
    x = residual_out.float()
    output = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * ranks[0]["weight"].float()).bfloat16()
    for r in ranks:
        assert torch.equal(r["ref_residual_out"], residual_out)  # fp32 sum of two: order-free
        assert torch.equal(r["ref_output"], output)
        torch.testing.assert_close(r["sol_residual_out"], residual_out, atol=8e-2, rtol=2e-2)
        torch.testing.assert_close(r["sol_output"], output, atol=8e-2, rtol=2e-2)
    assert not torch.equal(ranks[0]["hidden_states"], ranks[1]["hidden_states"])
    assert (output.float() - ranks[0]["ref_output"].float()).abs().max() == 0
    # Skipping the all-reduce would be far off: the check above can fail.
    alone = (ranks[0]["hidden_states"].float() + ranks[0]["residual"].float()).bfloat16()
    assert (alone.float() - residual_out.float()).abs().max() > 1.0
    for r in range(2):
        assert json.loads((out / f"rank{r}.json").read_text())["keys"] == [[16, 2]]


def test_shipped_cpu_solution_passes_on_two_ranks(shipped):
    ws = Workspace(shipped)
    evs = run_distributed(ws, Settings.from_env(), SHIPPED, world_size=2, device="cpu", workload_limit=2,
                          record=False, **FAST)
    assert [(e.solution, e.axes, e.status) for e in evs] == [
        ("torch_nccl_then_rmsnorm", {"num_tokens": 1, "world_size": 2}, "PASSED"),
        ("torch_nccl_then_rmsnorm", {"num_tokens": 4, "world_size": 2}, "PASSED")]
    assert all(e.environment["backend"] == "gloo" and e.environment["world_size"] == 2 for e in evs)
    assert not (shipped / "registry").exists()  # record=False writes nothing


def test_records_one_evaluation_per_item_and_survives_a_crashing_rank(toy):
    before = live_children()
    reporter = Recorder()
    evs = run_distributed(Workspace(toy), Settings.from_env(), TOY, world_size=2, device="cpu",
                          solutions=["torch_separate", "wrong_on_rank1", "crash_on_rank1", "multicast_off",
                                     "broken_syntax"],
                          reporter=reporter, timeout_s=60, **FAST)
    assert live_children() <= before  # every rank was reaped

    path = toy / "registry" / TOY / f"{device_slug('cpu')}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(evs) == 10  # 5 solutions x 2 workloads of world size 2
    for rec in lines:
        assert validate("evaluation", rec) == []
        assert rec["axes"]["world_size"] == 2 and rec["environment"]["world_size"] == 2
    status = {(r["solution"], r["axes"]["num_tokens"]): r for r in lines}
    for tokens in (3, 16):
        ok = status[("torch_separate", tokens)]
        assert ok["status"] == "PASSED", ok["error"]
        assert status[("multicast_off", tokens)]["status"] == "PASSED"  # NVLS / symm-mem multicast off
        assert ok["latency"]["median_us"] > 0 and len(ok["environment"]["timing"]["rank_median_us"]) == 2
        wrong = status[("wrong_on_rank1", tokens)]
        assert wrong["status"] == "INCORRECT_NUMERICAL" and wrong["error"].startswith("rank 1:")
        assert wrong["latency"] is None
        broken = status[("broken_syntax", tokens)]
        assert broken["status"] == "COMPILE_ERROR" and "kernel.py" in broken["error"]  # built, never run
        crash = status[("crash_on_rank1", tokens)]
        assert crash["status"] == "RUNTIME_ERROR"
        assert crash["error"].startswith("rank 1 killed by SIGSEGV"), crash["error"]
    # Workload-major, solutions in workspace order: each crash tears the group down and the
    # items after it (which pass above) run on a fresh group.
    started = [c[1].split("/")[1] if c[0] == "started" else c[0] for c in reporter.calls]
    assert started == ["crash_on_rank1", "replaced", "multicast_off", "torch_separate", "wrong_on_rank1"] * 2
    assert [c[1] for c in reporter.calls if c[0] == "replaced"] == ["2 ranks on cpu (gloo)"] * 2


def test_a_hanging_rank_becomes_timeout_and_leaves_nothing_running(toy):
    before = live_children()
    evs = run_distributed(Workspace(toy), Settings.from_env(), TOY, world_size=2, device="cpu",
                          solutions=["hang_on_rank1"], workload_limit=1, timeout_s=4, record=False, **FAST)
    assert [(e.solution, e.status) for e in evs] == [("hang_on_rank1", "TIMEOUT")]
    assert "did not answer within 4 s" in evs[0].error
    assert live_children() <= before


def _record(ws: Path, solution: str, tokens: int, world: int, median_us: float) -> Evaluation:
    w = Workspace(ws)
    defn, sol = w.definition(TOY), w.solution(solution, definition=TOY)
    stats = LatencyStats(median_us=median_us, p20_us=median_us, p80_us=median_us, mean_us=median_us, n=10)
    return Evaluation(definition=TOY, solution=solution, solution_digest=solution_digest(defn, sol),
                      build_key="", workload_uuid=f"{TOY}-num_tokens{tokens}-world_size{world}",
                      axes={"num_tokens": tokens, "world_size": world}, status="PASSED",
                      device=device_slug("cpu"), latency=stats, timestamp="2026-01-01T00:00:00Z")


def test_resolve_picks_per_world_size(toy):
    registry = Registry(toy / "registry")
    for tokens in (3, 16):  # bf16 all-reduce wins on 2 ranks, fp32 on 4 (resolver input)
        registry.append(_record(toy, "torch_separate", tokens, 2, 10.0))
        registry.append(_record(toy, "torch_fp32_allreduce", tokens, 2, 20.0))
        registry.append(_record(toy, "torch_separate", tokens, 4, 40.0))
        registry.append(_record(toy, "torch_fp32_allreduce", tokens, 4, 30.0))
    settings = Settings.from_env(root=toy)
    for world, winner in ((2, "torch_separate"), (4, "torch_fp32_allreduce")):
        res = resolve(TOY, {"num_tokens": 16, "world_size": world}, device="cpu", settings=settings)
        assert (res.solution.name, res.key, res.policy) == (winner, (16, world), "nearest")
    res = resolve(TOY, {"num_tokens": 12, "world_size": 4}, device="cpu", settings=settings)
    # 12 tokens: the nearer evaluated bucket (16, ratio 1.33; 3 is at ratio 4)
    assert res.solution.name == "torch_fp32_allreduce" and res.evaluated_key == (16, 4)


def test_cli_bench_table_and_resolve_with_world_size(toy, capsys):
    root = ["--root", str(toy)]
    assert main([*root, "bench", TOY, "--world-size", "2", "--device", "cpu", "--solution", "torch_separate",
                 "--warmup", "1", "--rep", "5"]) == 0
    out = capsys.readouterr().out
    assert f"{TOY}/torch_separate" in out and "records appended" in out
    assert main([*root, "table", TOY]) == 0
    table = capsys.readouterr().out
    rows = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    assert "num_tokens," in table and "world_size" in table and rows == ["3, 2", "16, 2"]
    # The records are keyed by world size: torch_separate is ranked at (16, 2), chosen or,
    # when the reference measured faster on this busy machine, named as slower than it.
    assert main([*root, "resolve", TOY, "--axes", "num_tokens=16,world_size=2", "--device", "cpu",
                 "--explain"]) == 0
    explained = capsys.readouterr().out
    assert "torch_separate" in explained and "torch_separate: no evaluation" not in explained

    assert main([*root, "bench", TOY, "--world-size", "3", "--device", "cpu"]) == 1
    assert "no workloads with world_size=3" in capsys.readouterr().err
    assert main(["bench", "rmsnorm_h4096", "--world-size", "2", "--device", "cpu"]) == 1
    assert "without --world-size" in capsys.readouterr().err
    assert main([*root, "bench", "--world-size", "2", "--device", "cpu", "--dry-run"]) == 1
    assert "runs one distributed definition" in capsys.readouterr().err
    # Without --world-size the single-device runner leaves it out.
    assert main([*root, "bench", TOY, "--device", "cpu", "--dry-run"]) == 0
    assert "bench it with --world-size N" in capsys.readouterr().out

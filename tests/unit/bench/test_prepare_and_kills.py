"""The runners' prepare step (first calls under their own limit), workers killed from outside,
and target-hardware matching shared with the resolver: real worker and rank processes on CPU."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from fibuild.bench.distributed import run_distributed
from fibuild.bench.plan import plan_benchmarks
from fibuild.bench.reporter import BenchReporter
from fibuild.bench.runner import run_benchmarks
from fibuild.config import Settings
from fibuild.devices import Device
from fibuild.registry import Registry, evaluation_to_dict
from fibuild.runtime.collect import collect_table
from fibuild.spec.schema import validate
from fibuild.spec.workspace import Workspace

ROOT = Path(__file__).resolve().parents[3]
DEF = "rmsnorm_h4096"
TOY = "toy_allreduce_add_rmsnorm"
FAST = {"warmup_ms": 1.0, "rep_ms": 5.0}

RMSNORM = '''
import os, signal, time
import torch


def _norm(hidden_states, weight):
    x = hidden_states.float()
    x = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + 1e-5)
    return (x * weight.float()).to(hidden_states.dtype)

_calls = 0


def rmsnorm(hidden_states, weight):
    global _calls
    _calls += 1
    {body}
    return _norm(hidden_states, weight)
'''

TOY_RUN = '''
import time
import torch
import torch.distributed as dist

_calls = 0


@torch.no_grad()
def run(hidden_states, residual, weight):
    global _calls
    _calls += 1
    {body}
    total = hidden_states.clone()
    dist.all_reduce(total)
    residual_out = (total.float() + residual.float()).to(residual.dtype)
    x = residual_out.float()
    x = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + 1e-5)
    return (x * weight.float()).to(hidden_states.dtype), residual_out
'''


def add_solution(ws: Path, definition: str, name: str, source: str, entry: str, targets: str = "[cpu]",
                 extra: str = ""):
    folder = ws / "solutions" / definition / name
    folder.mkdir(parents=True)
    (folder / "kernel.py").write_text(source)
    (folder / "solution.yaml").write_text(
        f"name: {name}\ndefinition: {definition}\nauthor: fibuild tests\nlanguage: python\n"
        f"entry_point: kernel.py::{entry}\nsources: [kernel.py]\ntarget_hardware: {targets}\n"
        f"destination_passing_style: false\n{extra}")


@pytest.fixture
def ws(tmp_path, settings_env):
    """The shipped rmsnorm definition with test solutions only."""
    root = tmp_path / "ws"
    shutil.copytree(ROOT / "defs" / "rmsnorm", root / "defs" / "rmsnorm")
    (root / "solutions" / DEF).mkdir(parents=True)
    return root


class Recorder(BenchReporter):
    def __init__(self):
        self.skips: list[tuple[str, str]] = []
        self.replaced: list[str] = []

    def skipped(self, solution, reason):
        self.skips.append((solution, reason))

    def worker_replaced(self, worker_device, reason):
        self.replaced.append(reason)


def test_declared_first_call_work_gets_the_prepare_limit_not_the_item_timeout(ws, monkeypatch):
    jit = "first_call: [jit]\n"
    add_solution(ws, DEF, "slow_first", RMSNORM.format(body="if _calls == 1: time.sleep(4)"), "rmsnorm", extra=jit)
    add_solution(ws, DEF, "never_ready", RMSNORM.format(body="if _calls == 1: time.sleep(600)"), "rmsnorm",
                 extra=jit)
    add_solution(ws, DEF, "blackwell_only", RMSNORM.format(body="pass"), "rmsnorm", targets="[sm100]")
    monkeypatch.setenv("FIBUILD_PREPARE_TIMEOUT", "10")  # read at call time
    reporter = Recorder()
    started = time.monotonic()
    evs = run_benchmarks(Workspace(ws), Settings.from_env(), [DEF], device="cpu", workload_limit=2,
                         timeout_s=2, reporter=reporter, **FAST)
    elapsed = time.monotonic() - started
    by = {(e.solution, e.workload_uuid): e for e in evs}
    assert sorted({e.solution for e in evs}) == ["never_ready", "slow_first"]  # sm100: not benched
    assert reporter.skips == [(f"{DEF}/blackwell_only",
                               f"target_hardware [sm100] does not include {Device.parse('cpu').slug}")]
    for (solution, _), ev in by.items():
        if solution == "slow_first":  # 4 s first call > 2 s item timeout, < 10 s prepare limit
            assert ev.status == "PASSED", ev.error
            assert 4.0 <= ev.prepare_s < 10 and ev.latency.median_us > 0
        else:  # overran the prepare allowance: a hang in the first call, named so
            assert ev.status == "TIMEOUT"
            assert "hang in phase 'load and first call'" in ev.error
            assert "prepare allowance of 10 s (FIBUILD_PREPARE_TIMEOUT; first_call: jit)" in ev.error
    assert reporter.replaced == ["prepare timeout"]  # the second workload was not tried again
    assert elapsed < 60
    for ev in Registry(ws / "registry").read(DEF):
        assert validate("evaluation", evaluation_to_dict(ev)) == []
    # The resolver excludes what the runner skipped, by the same rule.
    workspace = Workspace(ws)
    table = collect_table(workspace, Settings.from_env(root=ws), workspace.definition(DEF),
                          Device.parse("cpu").slug, here=True)
    assert "target_hardware [sm100] does not include" in table.excluded["blackwell_only"]


def test_an_undeclared_first_call_gets_the_item_timeout_unless_it_is_visibly_compiling(ws, tmp_path, monkeypatch):
    """Without declared first-call work, a first call that hangs is TIMEOUT after --timeout,
    not after FIBUILD_PREPARE_TIMEOUT; one that runs a compiler past --timeout gets the
    allowance (here a stand-in ``nvcc`` that takes 4 s)."""
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nsleep 4\n")
    fake.chmod(0o755)
    compile_first = f"if _calls == 1: __import__('subprocess').run([{str(fake)!r}], check=True)"
    add_solution(ws, DEF, "compiles_first", RMSNORM.format(body=compile_first), "rmsnorm")
    add_solution(ws, DEF, "hangs_first", RMSNORM.format(body="if _calls == 1: time.sleep(600)"), "rmsnorm")
    monkeypatch.setenv("FIBUILD_PREPARE_TIMEOUT", "60")
    started = time.monotonic()
    evs = run_benchmarks(Workspace(ws), Settings.from_env(), [DEF], device="cpu", workload_limit=1,
                         timeout_s=1.5, reporter=Recorder(), **FAST)
    elapsed = time.monotonic() - started
    by = {e.solution: e for e in evs}
    assert by["compiles_first"].status == "PASSED", by["compiles_first"].error
    assert by["compiles_first"].prepare_s >= 4.0
    hung = by["hangs_first"]
    assert hung.status == "TIMEOUT"
    assert "hang in phase 'load and first call': no reply within --timeout 1.5 s" in hung.error
    assert "first_call: [jit]" in hung.error                       # says how to declare the work
    assert elapsed < 40                                             # not the 60 s allowance


def test_first_call_work_is_declared_or_implied():
    from fibuild.bench.runner import first_call_work

    shipped = Workspace(ROOT)
    defn = shipped.definition(DEF)
    assert first_call_work(defn, shipped.solution("torch_fp32", DEF)) == ()
    assert first_call_work(defn, shipped.solution("flashinfer", DEF)) == ("jit",)
    dist = shipped.definition("allreduce_add_rmsnorm_h4096")
    assert "workspace" in first_call_work(dist, shipped.solutions(dist)[0])


def test_plan_matches_target_hardware_like_the_resolver(ws, monkeypatch):
    """On an H100 (probed as one), sm90 and cuda solutions are planned, sm100 is not; the
    resolver on that slug excludes the sm100 solution even with a PASSED record."""
    h100 = Device("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0), "nvidia-h100-80gb-hbm3-sm90")
    import fibuild.devices as devices

    real = devices._probe
    monkeypatch.setattr(devices, "_probe", lambda kind, index: h100 if kind == "cuda" else real(kind, index))
    for name, targets in (("hopper", "[sm_90a]"), ("any_gpu", "[cuda]"), ("blackwell", "[sm100]"),
                          ("by_name", "[h100]"), ("cpu_only", "[cpu]")):
        add_solution(ws, DEF, name, RMSNORM.format(body="pass"), "rmsnorm", targets=targets)
    plan = plan_benchmarks(Workspace(ws), [DEF], device="cuda")
    assert sorted(g.solution.name for g in plan.groups) == ["any_gpu", "by_name", "hopper"]
    assert sorted(name for name, _ in plan.skipped) == [f"{DEF}/blackwell", f"{DEF}/cpu_only"]
    table_device = Device.from_slug("nvidia-h100-80gb-hbm3-sm90")
    assert table_device.compute_capability == (9, 0) and not table_device.local
    from fibuild.runtime.collect import hardware_mismatch

    sols = {s.name: s for s in Workspace(ws).solutions(DEF)}
    assert {n for n, s in sols.items() if hardware_mismatch(s, h100.slug)} == {"blackwell", "cpu_only"}


def _killer(pid_file: Path, kills: int, before_last=None) -> threading.Thread:
    """Kill (SIGKILL, from this test) each new pid written to ``pid_file``, ``kills`` times."""
    def loop():
        seen: set[int] = set()
        deadline = time.monotonic() + 240
        while len(seen) < kills and time.monotonic() < deadline:
            pids = [int(p) for p in pid_file.read_text().split()] if pid_file.exists() else []
            for pid in pids:
                if pid not in seen:
                    seen.add(pid)
                    if len(seen) == kills and before_last is not None:
                        before_last()
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_worker_killed_from_outside_is_retried_then_not_blamed_on_the_kernel(ws, tmp_path, monkeypatch):
    pid_file, flag = tmp_path / "pids", tmp_path / "hold"
    monkeypatch.setenv("FIBUILD_TEST_PIDS", str(pid_file))
    monkeypatch.setenv("FIBUILD_TEST_HOLD", str(flag))
    body = ("if os.path.exists(os.environ['FIBUILD_TEST_HOLD']):\n"
            "        open(os.environ['FIBUILD_TEST_PIDS'], 'a').write(f'{os.getpid()}\\n')\n"
            "        time.sleep(120)")
    add_solution(ws, DEF, "killable", RMSNORM.format(body=body), "rmsnorm")
    workspace, settings = Workspace(ws), Settings.from_env()
    run = dict(device="cpu", workload_limit=1, timeout_s=150, **FAST)

    # Killed once: the retry (on a fresh worker, the flag gone) passes.
    flag.touch()
    killer = _killer(pid_file, 1, before_last=flag.unlink)
    reporter = Recorder()
    [ev] = run_benchmarks(workspace, settings, [DEF], reporter=reporter, **run)
    killer.join()
    assert ev.status == "PASSED", ev.error
    assert reporter.replaced == ["worker killed by SIGKILL"]

    # Killed twice: WORKER_KILLED, with the signal named; the resolver keeps the PASSED record.
    pid_file.unlink()
    flag.touch()
    killer = _killer(pid_file, 2)
    [ev] = run_benchmarks(workspace, settings, [DEF], **run)
    killer.join()
    assert ev.status == "WORKER_KILLED"
    assert "killed by SIGKILL" in ev.error and "not the kernel's fault" in ev.error
    recorded = Registry(ws / "registry").read(DEF)
    assert [e.status for e in recorded] == ["PASSED", "WORKER_KILLED"]
    assert all(validate("evaluation", evaluation_to_dict(e)) == [] for e in recorded)
    defn = workspace.definition(DEF)
    table = collect_table(workspace, Settings.from_env(root=ws), defn, Device.parse("cpu").slug, here=True)
    assert "killable" not in table.failed and "killable" not in table.excluded
    key = tuple(int(ev.axes[a]) for a in defn.var_axes)
    assert [t.solution for t in table.ranked[key]] == ["killable"]


def test_a_segfault_is_the_kernels_fault_and_not_retried(ws, monkeypatch):
    add_solution(ws, DEF, "segv", RMSNORM.format(body="os.kill(os.getpid(), signal.SIGSEGV)"), "rmsnorm")
    reporter = Recorder()
    [ev] = run_benchmarks(Workspace(ws), Settings.from_env(), [DEF], device="cpu", workload_limit=1,
                          reporter=reporter, record=False, **FAST)
    assert ev.status == "RUNTIME_ERROR" and "killed by SIGSEGV" in ev.error
    assert reporter.replaced == ["worker killed by SIGSEGV"]  # one worker: no second try


@pytest.fixture
def toy(tmp_path, settings_env):
    root = tmp_path / "toy"
    shutil.copytree(ROOT / "tests" / "fixtures" / "distributed" / "defs", root / "defs")
    (root / "solutions" / TOY).mkdir(parents=True)
    return root


def test_distributed_first_calls_get_the_prepare_limit(toy):
    add_solution(toy, TOY, "slow_first", TOY_RUN.format(body="if _calls == 1: time.sleep(4)"), "run")
    add_solution(toy, TOY, "never_ready",
                 TOY_RUN.format(body="if _calls == 1 and dist.get_rank() == 1: time.sleep(600)"), "run")
    reporter = Recorder()
    evs = run_distributed(Workspace(toy), Settings.from_env(), TOY, world_size=2, device="cpu",
                          workload_limit=2, timeout_s=2, prepare_timeout_s=10, reporter=reporter,
                          record=False, **FAST)
    by = {(e.solution, e.axes["num_tokens"]): e for e in evs}
    for tokens in (3, 16):
        ok = by[("slow_first", tokens)]
        assert ok.status == "PASSED", ok.error
        assert 4.0 <= ok.prepare_s < 10 and ok.environment["backend"] == "gloo"
        stuck = by[("never_ready", tokens)]
        assert stuck.status == "TIMEOUT"
        assert "prepare allowance of 10 s (FIBUILD_PREPARE_TIMEOUT; first_call: workspace)" in stuck.error
    assert len(reporter.replaced) == 1  # the group was torn down once, for never_ready

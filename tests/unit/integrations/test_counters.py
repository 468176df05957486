"""Counters of the patched APIs: ``fibuild.integrations.stats()``, ``FIBUILD_STATS=1`` at exit,
and ``fibuild trace report``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from integration_helpers import STUB_DIR

import fibuild
import fibuild.integrations
from fibuild.integrations.counters import Counters, format_stats, merge

BF16 = torch.bfloat16
RMSNORM = "flashinfer.norm.rmsnorm"


def test_counters_sum_outcomes_and_keep_plans_apart():
    c = Counters("api")
    c.cell("substituted")[0] += 3
    c.cell("original")[0] += 1
    c.cell("fallback", "odd")[0] += 2
    c.cell("fallback", "odd")[0] += 1   # the same cell
    c.cell("plan", "begin_forward")[0] += 4
    snap = c.snapshot()
    assert snap == {"calls": 7, "substituted": 3, "original": 1, "fallbacks": {"odd": 3},
                    "plans": {"begin_forward": 4}}
    total = merge({}, {"api": snap})
    merge(total, {"api": snap})
    assert total["api"]["calls"] == 14 and total["api"]["plans"] == {"begin_forward": 8}
    text = format_stats(total)
    assert "api: 14 calls, 6 substituted, 2 original, 6 fallback" in text and "planned by begin_forward" in text


def test_stats_count_every_call_by_outcome_and_survive_disable(flashinfer_stub, small_ws):
    small_ws.add_counted_solution("rmsnorm_h64")
    small_ws.record("rmsnorm_h64", "counted", {"batch_size": 4})
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    x, w = torch.randn(4, 64, dtype=BF16), torch.rand(64, dtype=BF16)
    for _ in range(5):
        flashinfer.rmsnorm(x, w, 1e-5)                                # substituted
    flashinfer.rmsnorm(torch.randn(4, 128, dtype=BF16)[:, :64], w, 1e-5)   # strided rows, per call
    flashinfer.rmsnorm(torch.randn(2, 96, dtype=BF16), torch.rand(96, dtype=BF16), 1e-5)  # no definition
    row = fibuild.integrations.stats()[RMSNORM]
    assert row["calls"] == 7 and row["substituted"] == 5 and row["original"] == 0
    assert row["fallbacks"]["an input is not contiguous or not on the kernel's device"] == 1
    assert sum(row["fallbacks"].values()) == 2
    assert flashinfer.CALLS["rmsnorm"] == 2
    fibuild.disable()
    assert fibuild.integrations.stats()[RMSNORM]["calls"] == 7   # the last integration's, after disable


def test_fibuild_stats_prints_at_exit_and_keeps_the_totals(small_ws, tmp_path):
    small_ws.add_counted_solution("rmsnorm_h64")
    small_ws.record("rmsnorm_h64", "counted", {"batch_size": 4})
    script = (f"import sys; sys.path.insert(0, {str(STUB_DIR)!r})\n"
              "from fibuild.integrations.activation import start_from_env\n"
              "start_from_env()\n"
              "import torch, flashinfer\n"
              "x, w = torch.randn(4, 64, dtype=torch.bfloat16), torch.rand(64, dtype=torch.bfloat16)\n"
              "for _ in range(3): flashinfer.norm.rmsnorm(x, w, 1e-5)\n")
    env = dict(os.environ, FIBUILD_ROOT=str(small_ws.root), FIBUILD_CACHE_DIR=str(tmp_path / "cache"),
               FIBUILD_DEVICE="cpu", FIBUILD_APPLY="1", FIBUILD_STATS="1", FIBUILD_TRACE="0")
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"{RMSNORM}: 3 calls, 3 substituted, 0 original, 0 fallback" in proc.stderr
    from fibuild.integrations.counters import read_stats

    assert read_stats(small_ws.root / "registry")[RMSNORM]["substituted"] == 6   # both processes kept theirs


def test_trace_report_shows_the_kept_counters(small_ws, capsys):
    from fibuild.cli import main
    from fibuild.integrations.counters import append_stats

    registry = small_ws.root / "registry"
    append_stats(registry, {RMSNORM: {"calls": 3, "substituted": 2, "original": 0, "fallbacks": {"odd": 1}}})
    append_stats(registry, {RMSNORM: {"calls": 1, "substituted": 1, "original": 0, "fallbacks": {}}})
    with open(registry / "_trace" / "stats.jsonl", "a") as f:
        f.write('{"pid": 1, "stats": {"x": ')   # a torn last line is skipped
    assert main(["--root", str(small_ws.root), "trace", "report", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stats"] == {RMSNORM: {"calls": 4, "substituted": 3, "original": 0, "fallbacks": {"odd": 1}}}
    assert main(["--root", str(small_ws.root), "trace", "report"]) == 0
    text = capsys.readouterr().out
    assert f"{RMSNORM}: 4 calls, 3 substituted, 0 original, 1 fallback" in text and "fallback: odd" in text

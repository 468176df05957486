"""Benchmark the shipped C++ CPU solutions of rmsnorm and fused_add_rmsnorm end to end."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fibuild.cli import main
from fibuild.devices import device_slug

pytestmark = pytest.mark.build

ROOT = Path(__file__).resolve().parents[2]


def test_cpp_cpu_solutions_pass_and_are_timed(tmp_path, settings_env, capsys):
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "defs", ws / "defs")
    shutil.copytree(ROOT / "solutions", ws / "solutions")
    defs = ["rmsnorm_h4096", "fused_add_rmsnorm_h4096"]
    assert main(["--root", str(ws), "bench", *defs, "--solution", "cpp_bf16", "--workload-limit", "3",
                 "--device", "cpu", "--warmup", "1", "--rep", "5"]) == 0
    for definition in defs:
        path = ws / "registry" / definition / f"{device_slug('cpu')}.jsonl"
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["axes"]["batch_size"] for r in recs] == [1, 7, 32]
        assert all(r["status"] == "PASSED" and r["latency"]["median_us"] > 0 for r in recs), recs
    capsys.readouterr()
    assert main(["--root", str(ws), "table", "fused_add_rmsnorm_h4096", "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    # Each row is starred with what resolve runs there: the baseline (torch_fp32 without
    # FlashInfer), which was never measured here, keeps every key until it is.
    assert board["solutions"] == ["cpp_bf16"] and board["wins"] == {"cpp_bf16": 0, "torch_fp32": 3}
    for row in board["rows"]:
        assert main(["--root", str(ws), "resolve", "fused_add_rmsnorm_h4096", "--device", "cpu", "--json",
                     "--axes", f"batch_size={row['axes']['batch_size']}"]) == 0
        assert json.loads(capsys.readouterr().out)["solution"] == row["winner"] == "torch_fp32"

"""`fibuild bench` and `fibuild table` end to end on CPU, in a temp copy of the workspace."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fibuild.cli import main
from fibuild.devices import device_slug
from fibuild.spec.schema import validate

ROOT = Path(__file__).resolve().parents[3]
DEFS = ("rmsnorm_h4096", "fused_add_rmsnorm_h4096")
FAST = ["--device", "cpu", "--warmup", "1", "--rep", "5"]


@pytest.fixture
def workspace(tmp_path, settings_env):
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "defs", ws / "defs")
    shutil.copytree(ROOT / "solutions", ws / "solutions")
    return ws


def records(ws: Path, definition: str) -> list[dict]:
    path = ws / "registry" / definition / f"{device_slug('cpu')}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bench_then_table(workspace, capsys, tmp_path):
    argv = ["--root", str(workspace), "bench", *DEFS, "--solution", "torch_fp32", "--workload-limit", "2", *FAST]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "rmsnorm_h4096/torch_fp32" in out and "fused_add_rmsnorm_h4096/torch_fp32" in out
    for definition in DEFS:
        recs = records(workspace, definition)
        assert [r["workload_uuid"] for r in recs] == [f"{definition}-batch_size1", f"{definition}-batch_size7"]
        for rec in recs:
            assert validate("evaluation", rec) == []
            assert rec["status"] == "PASSED", rec["error"]
            assert rec["solution"] == "torch_fp32" and len(rec["build_key"]) == 64
            assert 0 < rec["latency"]["p20_us"] <= rec["latency"]["median_us"] <= rec["latency"]["p80_us"]
            assert rec["reference_latency"]["median_us"] > 0 and rec["speedup"] > 0
            assert rec["environment"]["timing"]["method"] == "perf_counter_ns"
            assert rec["environment"]["device"] == device_slug("cpu")
    # A second run appends; table keeps the latest record per (solution, workload).
    assert main(["--root", str(workspace), "bench", "rmsnorm_h4096", "--solution", "torch_fp32",
                 "--workload-limit", "1", *FAST]) == 0
    assert len(records(workspace, "rmsnorm_h4096")) == 3
    capsys.readouterr()

    assert main(["--root", str(workspace), "table", "rmsnorm_h4096"]) == 0
    table = capsys.readouterr().out
    rows = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    assert "batch_size" in table and rows == ["1", "7"] and "torch_fp32" in table and "*" in table

    plot = tmp_path / "plots" / "rmsnorm.png"
    assert main(["--root", str(workspace), "table", "rmsnorm_h4096", "--json", "--plot", str(plot)]) == 0
    board = json.loads(capsys.readouterr().out)
    assert board["device"] == device_slug("cpu") and board["solutions"] == ["torch_fp32"]
    assert [r["axes"]["batch_size"] for r in board["rows"]] == [1, 7]
    latest = records(workspace, "rmsnorm_h4096")[-1]
    assert board["rows"][0]["cells"]["torch_fp32"]["median_us"] == latest["latency"]["median_us"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The star is what resolve runs: the baseline (torch_fp32), or the reference where it was
    # measured clearly faster (the two are the same code; on a loaded machine either may win).
    for row in board["rows"]:
        assert main(["--root", str(workspace), "resolve", "rmsnorm_h4096", "--axes",
                     f"batch_size={row['axes']['batch_size']}", "--policy", "exact", "--json"]) == 0
        resolved = json.loads(capsys.readouterr().out)
        assert row["winner"] == resolved["solution"] in ("torch_fp32", "reference")


def test_dry_run_plans_and_writes_nothing(workspace, capsys):
    assert main(["--root", str(workspace), "bench", "rmsnorm_h4096", "--dry-run", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "run  rmsnorm_h4096/torch_fp32" in out
    assert "skip rmsnorm_h4096/triton_row" in out  # cuda-only: skipped with a note on CPU
    assert not (workspace / "registry" / "rmsnorm_h4096").exists()


def test_recorded_benches_only_the_registry_workloads(workspace, capsys):
    """--recorded: the traced (or imported) workloads of registry/<def>/workloads.jsonl, not
    the six the manifest declares."""
    folder = workspace / "registry" / "rmsnorm_h4096"
    folder.mkdir(parents=True)
    (folder / "workloads.jsonl").write_text(json.dumps(
        {"definition": "rmsnorm_h4096", "uuid": "traced-b3", "axes": {"batch_size": 3}, "inputs": {}}) + "\n")
    every = ["--root", str(workspace), "--json", "bench", "rmsnorm_h4096", "--dry-run", "--device", "cpu",
             "--solution", "torch_fp32"]
    assert main(every) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 7
    assert main(every + ["--recorded"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 1
    assert main(["--root", str(workspace), "bench", "fused_add_rmsnorm_h4096", "--recorded", "--dry-run",
                 "--device", "cpu"]) == 0  # nothing recorded: every solution skipped, said so
    assert "has no workloads" in capsys.readouterr().out


def test_user_errors_exit_1_without_traceback(workspace, capsys):
    assert main(["--root", str(workspace), "table", "rmsnorm_h4096"]) == 1
    assert "no evaluations of rmsnorm_h4096 yet" in capsys.readouterr().err
    assert main(["--root", str(workspace), "table", "no_such_def"]) == 1
    assert "no_such_def" in capsys.readouterr().err
    assert main(["--root", str(workspace), "bench", "rmsnorm_h4096", "--solution", "nope", *FAST]) == 1
    err = capsys.readouterr().err
    assert "no solution named nope" in err and "Traceback" not in err
    assert main(["--root", str(workspace), "bench", "rmsnorm_h4096", "--graph", *FAST]) == 1
    assert "--graph needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(workspace), "bench", "--workload-limit", "0"])
    assert exit_info.value.code == 2


def test_benching_without_the_baseline_says_it_decides_nothing(workspace, capsys):
    """Only a challenger measured: the resolver keeps the baseline (it cannot be shown to lose),
    and bench says so with the command that measures it."""
    argv = ["--root", str(workspace), "bench", "rmsnorm_h4096", "--solution", "cpp_bf16", "--workload-limit", "1",
            *FAST]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert ("rmsnorm_h4096's baseline torch_fp32 has no current evaluation on " + device_slug("cpu")) in err
    assert "fibuild bench rmsnorm_h4096 --solution torch_fp32" in err
    assert main(["--root", str(workspace), "resolve", "rmsnorm_h4096", "--axes", "batch_size=1", "--json"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["solution"] == "torch_fp32" and resolved["policy"] == "baseline"
    assert main(argv[:5] + ["torch_fp32"] + argv[6:]) == 0
    assert "has no current evaluation" not in capsys.readouterr().err

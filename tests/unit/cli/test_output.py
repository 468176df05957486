"""Output that reads the same in a terminal and in a log: text with brackets printed as
given, one line per benchmarked item when piped, rows told apart at 80 columns, a distinct
exit status when bench ran nothing, ``"ok"`` in every JSON document."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from fibuild.bench.leaderboard import leaderboard, rich_table
from fibuild.cli import main
from fibuild.cli.bench_report import NOTHING_RAN
from fibuild.devices import device_slug
from fibuild.registry import Registry
from fibuild.spec.workspace import Workspace, shipped_root

from cli_support import PYTHON_SOLUTION, make_workspace

FAST = ["--device", "cpu", "--warmup", "1", "--rep", "5"]
BRACKETED = "x must be [num_tokens, hidden] and [red]contiguous[/red]"


@pytest.fixture
def ws(tmp_path, settings_env, monkeypatch):
    monkeypatch.delenv("FIBUILD_ROOT", raising=False)
    root = make_workspace(tmp_path / "ws")
    folder = root / "solutions" / "toy_double" / "picky"
    folder.mkdir()
    (folder / "solution.yaml").write_text(PYTHON_SOLUTION.format(name="picky", extra=""))
    (folder / "kernel.py").write_text(f"def run(x):\n    raise ValueError({BRACKETED!r})\n")
    return root


def test_messages_with_brackets_print_as_given(ws, capsys):
    """A skip reason (``target_hardware [sm_90a]``) and a kernel's error text holding rich
    markup (``[red]...[/red]``) reach the terminal whole."""
    code = main(["--root", str(ws), "bench", "toy_double", "--solution", "picky", "--solution", "cuda_double",
                 *FAST, "--workload-limit", "1"])
    assert code == 1
    captured = capsys.readouterr()
    assert f"toy_double/cuda_double: target_hardware [sm_90a] does not include {device_slug('cpu')}" in captured.err
    assert f"ValueError: {BRACKETED} │" in captured.out


def test_bench_prints_one_line_per_item_when_piped(ws, settings_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIBUILD_")}
    env.update(settings_env, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "fibuild", "--root", str(ws), "bench", "toy_double",
                           "--solution", "torch", "--solution", "picky", *FAST],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert len(lines) == 4, proc.stderr                       # 2 solutions x 2 workloads, as they finish
    assert [ln.split("]")[0] + "]" for ln in lines] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert sum("PASSED" in ln and "toy_double/torch" in ln and "µs" in ln for ln in lines) == 2
    assert sum("RUNTIME_ERROR" in ln and "[red]contiguous[/red]" in ln for ln in lines) == 2


def test_bench_that_ran_nothing_exits_with_its_own_status(ws, capsys):
    # a solution that cannot run here: skipped, nothing measured
    assert main(["--root", str(ws), "bench", "toy_double", "--solution", "cuda_double", *FAST]) == NOTHING_RAN
    assert "nothing ran" in capsys.readouterr().err
    # --resume over items already recorded (failures included): nothing runs again
    argv = ["--root", str(ws), "bench", "toy_double", "--solution", "wrong", *FAST, "--workload-limit", "1"]
    assert main(argv) == 1
    capsys.readouterr()
    assert main([*argv, "--resume", "--json"]) == NOTHING_RAN
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["ran"] == 0
    assert NOTHING_RAN not in (0, 1)


@pytest.mark.parametrize("definition,device", [
    ("rmsnorm_h4096", "nvidia-h100-80gb-hbm3-sm90"),                  # 6 solutions, one var axis
    ("gqa_paged_decode_h32_kv8_d128_ps1", "nvidia-h200-sm90"),        # 4 var axes
])
def test_table_at_80_columns_tells_every_row_apart(definition, device):
    """The shipped library's committed records, rendered 80 columns wide: every row label
    whole (values only; the axis names head the column), every solution name whole."""
    shipped = Workspace(shipped_root())
    defn = shipped.definition(definition)
    # Stars and the widest verdict on every row (the resolver's own answers are tested elsewhere).
    board = leaderboard(defn, device, Registry(shipped.registry_dir).read(definition, device),
                        lambda axes: (defn.baseline[0], "AMBIGUOUS"))
    screen = Console(width=80, file=io.StringIO(), color_system=None)
    screen.print(rich_table(board))
    lines = screen.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    body = [line.split("│") for line in lines if line.startswith("│")]
    labels = [cells[1].strip() for cells in body if cells[1].strip()]
    expected = [", ".join(str(r.axes[a]) for a in defn.var_axes) for r in board.rows]
    assert labels == expected and len(set(labels)) == len(board.rows)
    header = [line.split("┃")[1:-1] for line in lines if line.startswith("┃")]
    columns = ["".join(part.strip() for part in column) for column in zip(*header)]
    assert columns[3:] == board.solutions                      # folded, never cut to "cuda_ro…"
    assert all(cells[2].strip() == "AMBIGUOUS" for cells in body if cells[1].strip())


@pytest.mark.parametrize("argv", [
    ["info", "toy_double/torch"], ["info", "--env"], ["resolve", "toy_double", "--axes", "n=4"],
    ["trace", "report"], ["table", "toy_double", "--device", "cpu"],
], ids=lambda a: " ".join(a[:2]))
def test_every_json_success_document_says_ok(ws, capsys, argv):
    if argv[0] == "table":
        assert main(["--root", str(ws), "bench", "toy_double", "--solution", "torch", *FAST,
                     "--workload-limit", "1"]) == 0
        capsys.readouterr()
    assert main(["--root", str(ws), "--json", *argv]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    if argv == ["info", "--env"]:
        names = [v["name"] for v in doc["variables"]]
        assert "FIBUILD_ROOT" in names and "FIBUILD_CACHE_DIR" in names

"""The noise-aware CLI on CPU: ``fibuild table`` stars what ``fibuild resolve`` picks and flags
wide spreads; ``fibuild bench --ambiguous`` plans only the keys whose decision is AMBIGUOUS."""
from __future__ import annotations

import json

import pytest

from fibuild.cli import main

from runtime_helpers import DEF


@pytest.fixture
def cli_env(workspace, monkeypatch):
    """The CLI pointed at the workspace, on the CPU; no records."""
    monkeypatch.setenv("FIBUILD_ROOT", str(workspace.root))
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(workspace.settings.cache_dir))
    monkeypatch.setenv("FIBUILD_DEVICE", "cpu")
    return workspace


@pytest.fixture
def cli(cli_env):
    workspace = cli_env
    # batch 7: torch_alt 5 % faster than the baseline torch_fp32, but noisy (AMBIGUOUS);
    # batch 32: torch_alt clearly faster (FAST); batch 1: torch_alt clearly slower (SLOW).
    workspace.record("torch_fp32", 7, 20.0)
    workspace.record("torch_alt", 7, 19.0, spread=0.4)
    workspace.record("torch_fp32", 32, 40.0)
    workspace.record("torch_alt", 32, 20.0)
    workspace.record("torch_fp32", 1, 25.2)
    workspace.record("torch_alt", 1, 26.0)
    return workspace


def cli_definition(ws):
    from fibuild.spec.workspace import Workspace

    return Workspace(ws.root).definition(DEF)


def resolved(axes: str, capsys) -> dict:
    """What ``fibuild resolve`` runs at ``axes`` (its default policy chain)."""
    assert main(["resolve", DEF, "--axes", axes, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_table_stars_what_resolve_picks_and_flags_noise(cli, capsys):
    assert main(["table", DEF, "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    rows = {r["axes"]["batch_size"]: r for r in board["rows"]}
    assert set(rows) == {1, 7, 32}
    for batch, row in rows.items():
        res = resolved(f"batch_size={batch}", capsys)
        assert row["winner"] == res["solution"] and row["verdict"] == res["verdict"], (batch, row, res)
    assert rows[7]["winner"] == "torch_fp32" and rows[7]["verdict"] == "AMBIGUOUS"
    assert rows[32]["winner"] == "torch_alt" and rows[32]["verdict"] == "FAST"
    assert rows[7]["cells"]["torch_alt"]["noisy"] and not rows[7]["cells"]["torch_fp32"]["noisy"]
    assert rows[7]["cells"]["torch_alt"]["spread"] == pytest.approx(0.8)
    assert main(["table", DEF]) == 0
    text = capsys.readouterr().out
    assert "AMBIGUOUS" in text and "±80%!" in text and "* 20.0 µs ±10%" in text


def test_table_stars_the_baseline_that_keeps_its_keys_and_marks_stale_records(cli_env, capsys):
    """The baseline measured here only in an older version keeps every key (resolve says so);
    the table stars it there, not the challenger whose exact-key record alone is current, and
    says which records are stale (the shipped H200 records of fused_add_rmsnorm_h4096 were so:
    the table starred torch_fp32 where resolve ran flashinfer)."""
    workspace = cli_env
    workspace.record("torch_fp32", 16, 20.0, digest="0" * 64)   # an older version's record
    workspace.record("torch_alt", 16, 10.0)
    res = resolved("batch_size=16", capsys)
    assert res["solution"] == "torch_fp32" and res["policy"] == "baseline"
    assert main(["table", DEF, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["winner"] == "torch_fp32"
    assert row["cells"]["torch_fp32"]["stale"] and not row["cells"]["torch_alt"]["stale"]
    assert main(["table", DEF]) == 0
    text = capsys.readouterr().out
    assert "* stale 20.0 µs" in text and "stale: a record of an older version" in " ".join(text.split())
    # a record of an older version appended later does not hide the current one
    workspace.record("torch_alt", 16, 99.0, digest="1" * 64)
    assert main(["table", DEF, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["cells"]["torch_alt"]["median_us"] == 10.0 and not row["cells"]["torch_alt"]["stale"]
    # the plot leaves stale records out; with nothing current to draw it says why
    for path in (workspace.root / "registry" / DEF).glob("*.jsonl"):
        records = [json.loads(ln) for ln in path.read_text().splitlines()]
        kept = [r for r in records if r["solution"] != "torch_alt" or r["solution_digest"] == "1" * 64]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    assert main(["table", DEF, "--plot", str(workspace.root / "t.png")]) == 1
    assert "records are of older versions" in capsys.readouterr().err


def test_bench_ambiguous_plans_only_ambiguous_keys(cli, capsys):
    assert main(["bench", DEF, "--ambiguous", "--dry-run", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    planned = {w for run in data["runs"] for w in run["workloads"]}
    defn = cli_definition(cli)
    assert planned == {w.uuid for w in defn.workloads if w.axes["batch_size"] == 7}, planned
    assert data["items"] == 2  # both solutions, at the one AMBIGUOUS key
    assert "ambiguous: 1 key(s) to re-measure" in captured.err

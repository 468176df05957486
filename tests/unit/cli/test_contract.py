"""The command line's contract with scripts: exit codes, --root/--json anywhere, --device,
skipped builds, a closed stdout. One test per point, on a workspace made by ``fibuild init``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fibuild.cli import main
from fibuild.devices import device_slug

from cli_support import make_workspace

FAST = ["--device", "cpu", "--warmup", "1", "--rep", "5", "--workload-limit", "1"]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def ws(tmp_path, settings_env, monkeypatch):
    monkeypatch.delenv("FIBUILD_ROOT", raising=False)
    return make_workspace(tmp_path / "ws")


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _stable(doc):
    """``doc`` without what changes between two runs of one command (timings; a build that
    the first run made is cached on the next)."""
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in ("seconds", "counts")}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return "built" if doc == "cached" else doc


def test_init_makes_a_workspace_and_an_empty_one_fails_validate_saying_where(tmp_path, capsys):
    root = tmp_path / "mine"
    assert main(["init", str(root)]) == 0
    assert sorted(p.name for p in root.iterdir()) == [".gitignore", "README.md", "defs", "registry", "solutions"]
    assert "*.lock" in (root / ".gitignore").read_text().splitlines()
    assert "fibuild workspace" in (root / "README.md").read_text()
    capsys.readouterr()
    assert main(["validate", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"no manifests in workspace {root}" in err and f"{root / 'defs'}/<op_type>/<name>.yaml" in err
    assert main(["init", str(root)]) == 1
    assert "already holds a workspace" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["validate"], ["build", "toy_double/torch"], ["info", "toy_double/torch"], ["gc", "--dry-run"],
    ["bench", "toy_double", "--dry-run", "--device", "cpu"], ["resolve", "toy_double", "--axes", "n=4"],
    ["trace", "report"],
], ids=lambda c: c[0])
def test_root_and_json_are_accepted_before_and_after_the_command(ws, capsys, command):
    outputs = []
    for argv in (["--root", str(ws), "--json", *command], [*command, "--root", str(ws), "--json"],
                 ["--json", *command, "--root", str(ws)]):
        assert main(argv) == 0, argv
        outputs.append(_json(capsys))
    assert _stable(outputs[1]) == _stable(outputs[2]) == _stable(outputs[0])
    # toy_double exists only in ws: every command above found it through --root.
    if command[0] == "validate":
        assert outputs[0]["root"] == str(ws) and outputs[0]["checked"] == 5


def test_json_documents_of_build_bench_gc_and_export(ws, capsys):
    assert main(["--root", str(ws), "build", "toy_double/torch", "--json"]) == 0
    build = _json(capsys)
    assert build["ok"] and [s["status"] for s in build["solutions"]] == ["built"]
    assert len(build["solutions"][0]["key"]) == 64
    assert main(["--root", str(ws), "bench", "toy_double", "--solution", "torch", *FAST, "--json"]) == 0
    bench = _json(capsys)
    assert bench["ok"] and bench["devices"] == [device_slug("cpu")]
    assert [(e["solution"], e["status"]) for e in bench["evaluations"]] == [("torch", "PASSED")]
    assert main(["gc", "--all", "--dry-run", "--json"]) == 0
    gc = _json(capsys)
    assert gc["dry_run"] and any(build["solutions"][0]["key"][:20] in p for p in gc["removed"])
    assert main(["export", "flashinfer-trace", str(ws.parent / "ds"), "--json", "--root", str(ws)]) == 0
    export = _json(capsys)
    assert export["ok"] and export["written"]["definition"] == 1


def test_bench_exits_1_when_an_evaluation_is_not_passed(ws, capsys):
    argv = ["--root", str(ws), "bench", "toy_double", "--solution", "torch", "--solution", "wrong", *FAST]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "1 of 2 evaluations not PASSED (1 INCORRECT_NUMERICAL)" in err and "--allow-failures" in err
    assert main([*argv, "--allow-failures"]) == 0
    assert "allowed by --allow-failures" in capsys.readouterr().err
    assert main(["--root", str(ws), "bench", "toy_double", "--solution", "torch", *FAST]) == 0


def test_unknown_device_slugs_are_errors_listing_the_known_ones(ws, capsys):
    for command in (["resolve", "toy_double", "--axes", "n=4"], ["table", "toy_double"],
                    ["bench", "toy_double", "--dry-run"]):
        assert main(["--root", str(ws), *command, "--device", "h100"]) == 1, command
        err = capsys.readouterr().err
        assert "--device 'h100': expected cpu, cuda or cuda:N, or a device slug (" in err
        assert device_slug("cpu") in err and "Traceback" not in err


def test_device_takes_a_kind_or_a_slug_with_one_meaning_everywhere(ws, capsys):
    slug = device_slug("cpu")
    assert main(["--root", str(ws), "bench", "toy_double", "--solution", "torch", *FAST]) == 0
    capsys.readouterr()
    boards, resolutions, plans = [], [], []
    for device in ("cpu", slug):
        assert main(["--root", str(ws), "table", "toy_double", "--device", device, "--json"]) == 0
        boards.append(_json(capsys))
        assert main(["--root", str(ws), "resolve", "toy_double", "--axes", "n=4", "--device", device, "--json"]) == 0
        resolutions.append(_json(capsys))
        assert main(["--root", str(ws), "bench", "toy_double", "--dry-run", "--device", device, "--json"]) == 0
        plans.append(_json(capsys))
    assert boards[0] == boards[1] and boards[0]["device"] == slug
    assert resolutions[0]["device"] == resolutions[1]["device"] == slug
    assert resolutions[0]["solution"] == resolutions[1]["solution"]
    assert plans[0] == plans[1] and plans[0]["device"] == "cpu"
    # A slug with records that is not this machine: resolve answers from them; bench refuses.
    (ws / "registry" / "toy_double" / "nvidia-h100-80gb-hbm3-sm90.jsonl").write_text("")
    assert main(["--root", str(ws), "resolve", "toy_double", "--axes", "n=4",
                 "--device", "nvidia-h100-80gb-hbm3-sm90", "--json"]) == 0
    assert _json(capsys)["device"] == "nvidia-h100-80gb-hbm3-sm90"
    assert main(["--root", str(ws), "bench", "toy_double", "--device", "nvidia-h100-80gb-hbm3-sm90"]) == 1
    err = capsys.readouterr().err
    assert "this command runs on this machine's devices only" in err and device_slug("cpu") in err


def test_build_all_skips_what_cannot_build_here_with_the_reason(ws, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda"))
    assert main(["--root", str(ws), "build", "--all"]) == 0
    out = capsys.readouterr().out
    assert ("skipped toy_double/needs_dist: dependency fibuild-test-absent-dist is not installed"
            in out.splitlines())
    assert f"skipped toy_double/cuda_double: CUDA_HOME {tmp_path / 'no-cuda'} does not exist" in out
    assert "built toy_double/needs_dist" not in out and "built toy_double/cuda_double" not in out
    assert out.splitlines()[-1].startswith("build: 4 solutions: 0 cached, 2 built, 2 skipped")
    # Named on the command line, a solution that cannot build here is an error.
    assert main(["--root", str(ws), "build", "toy_double/needs_dist", "--json"]) == 1
    doc = _json(capsys)
    assert not doc["ok"] and doc["solutions"][0]["status"] == "skipped"


def test_a_closed_stdout_exits_quietly(ws, settings_env):
    env = {**os.environ, **settings_env, "PYTHONPATH": str(REPO)}
    for command in (["info", "toy_double/torch", "--json"], ["resolve", "toy_double", "--axes", "n=4", "--json"]):
        proc = subprocess.Popen([sys.executable, "-m", "fibuild", "--root", str(ws), *command],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stdout.close()  # the reader is gone before anything is written, like `| head -0`
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141, err
        assert err == "", err

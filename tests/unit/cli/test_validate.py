"""`fibuild validate`: output lines, summary, exit codes, --json, no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fibuild.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "manifests"
WORKSPACES = FIXTURES / "workspaces"


def test_clean_workspace_exits_0_and_counts_files(capsys):
    assert main(["--root", str(WORKSPACES / "good"), "validate"]) == 0
    out = capsys.readouterr().out
    assert out == "6 manifests OK\n"  # 2 definitions, 3 solutions, 1 workloads.jsonl


def test_shipped_workspace_is_clean(capsys, monkeypatch):
    monkeypatch.delenv("FIBUILD_ROOT", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[3])
    assert main(["validate"]) == 0
    assert capsys.readouterr().out.endswith("manifests OK\n")


def test_errors_print_file_pointer_message_relative_to_cwd(capsys, monkeypatch):
    root = WORKSPACES / "orphan_workloads"
    monkeypatch.chdir(root)
    assert main(["--root", str(root), "validate"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "registry/ghost/workloads.jsonl: /: no definition 'ghost' in the workspace for "
        "registry/ghost/workloads.jsonl",
        "registry/real/workloads.jsonl: /0/uuid: line 1: uuid 'real-n4' is also a declared "
        "workload of 'real'",
        "2 errors in 2 files",
    ]


def test_paths_outside_cwd_stay_absolute(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    target = FIXTURES / "definitions" / "dtype_no.yaml"
    assert main(["--root", str(WORKSPACES / "good"), "validate", str(target)]) == 1
    first, summary = capsys.readouterr().out.splitlines()
    assert first.startswith(f"{target}: /inputs/x/dtype: expected string, got boolean false")
    assert summary == "1 error in 1 file"


def test_given_files_json(capsys, monkeypatch):
    monkeypatch.chdir(FIXTURES)
    args = ["--root", str(WORKSPACES / "good"), "validate", "--json",
            "definitions/atol_string.yaml", "definitions/good_minimal.yaml", "definitions/wrong_types.yaml"]
    assert main(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["checked"] == 3
    assert report["errors"][0] == {
        "file": "definitions/atol_string.yaml", "pointer": "/tolerance/atol",
        "message": "expected number, got string '1e-3' (YAML reads exponent numbers without a dot, "
                   "like 1e-3, as strings: write 1.0e-3)"}
    assert {e["file"] for e in report["errors"]} == {"definitions/atol_string.yaml",
                                                      "definitions/wrong_types.yaml"}
    assert len(report["errors"]) == 5


def test_clean_json(capsys):
    assert main(["--root", str(WORKSPACES / "good"), "validate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "errors": [], "checked": 6,
                                                   "root": str(WORKSPACES / "good")}


def test_folder_argument_expands_to_its_manifests(capsys):
    folder = FIXTURES / "solutions" / "rmsnorm_h4096"
    assert main(["validate", "--json", str(folder)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == 12
    assert len({e["file"] for e in report["errors"]}) == 11  # all but good_cpp


def test_subprocess_bad_input_has_no_traceback(tmp_path):
    env = {**os.environ, "FIBUILD_ROOT": str(WORKSPACES / "good")}
    proc = subprocess.run(
        [sys.executable, "-m", "fibuild", "validate", str(FIXTURES / "definitions" / "malformed_yaml.yaml"),
         str(FIXTURES / "definitions" / "empty.yaml"), str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    assert any(line.endswith("malformed_yaml.yaml: /: malformed YAML at line 5, column 7: "
                             "expected ',' or '}', but got ':'") for line in lines)
    assert "missing.yaml: /: file not found" in lines
    assert lines[-1] == "3 errors in 3 files"


def test_a_baseline_naming_none_of_the_solutions_is_an_error(capsys, tmp_path):
    """A typo in ``baseline`` (or a copy without its solutions) would make the reference the
    default: validate says so, naming the field and the solutions there are."""
    import shutil

    repo = Path(__file__).resolve().parents[3]
    (tmp_path / "defs" / "rmsnorm").mkdir(parents=True)
    shutil.copy(repo / "defs" / "rmsnorm" / "rmsnorm_h4096.yaml", tmp_path / "defs" / "rmsnorm")
    shutil.copytree(repo / "solutions" / "rmsnorm_h4096" / "cpp_bf16", tmp_path / "solutions" / "rmsnorm_h4096" /
                    "cpp_bf16")
    shutil.copytree(repo / "solutions" / "_lib", tmp_path / "solutions" / "_lib")  # the shared sources it names
    assert main(["--root", str(tmp_path), "validate"]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("rmsnorm_h4096.yaml: /baseline: names no solution of rmsnorm_h4096: flashinfer, "
                          "torch_fp32 (its solutions: cpp_bf16)")
    shutil.copytree(repo / "solutions" / "rmsnorm_h4096" / "torch_fp32", tmp_path / "solutions" / "rmsnorm_h4096" /
                    "torch_fp32")
    assert main(["--root", str(tmp_path), "validate"]) == 0  # one of them is enough

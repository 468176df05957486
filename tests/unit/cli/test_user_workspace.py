"""User data never goes into the shipped library: from a folder with no workspace above it,
results go to the user workspace (``$XDG_DATA_HOME/fibuild``), which reads the shipped library
too; ``fibuild init`` makes workspaces (the current folder, or ``--user``); the target is
checked before anything is measured."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import fibuild
from fibuild.cli import main
from fibuild.devices import device_slug
from fibuild.spec import workspace as workspace_module
from fibuild.spec.workspace import Workspace, shipped_root

FAST = ["--device", "cpu", "--warmup", "1", "--rep", "5", "--workload-limit", "1"]


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def empty_folder(tmp_path, settings_env, monkeypatch):
    """The current folder has no workspace above it; XDG_DATA_HOME is a fresh folder."""
    monkeypatch.delenv("FIBUILD_ROOT", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("FIBUILD_DEVICE", "cpu")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    return tmp_path


def test_bench_from_an_empty_folder_writes_to_the_user_workspace(empty_folder, capsys):
    library = shipped_root() / "registry"
    before = _tree(library)
    user = empty_folder / "data" / "fibuild"
    assert main(["bench", "rmsnorm_h4096", "--solution", "torch_fp32", *FAST]) == 0
    err = capsys.readouterr().err
    assert f"records go to {user / 'registry'} (the user workspace; the shipped library is read-only)" in err
    assert _tree(library) == before                                   # the library is untouched
    records = (user / "registry" / "rmsnorm_h4096" / f"{device_slug('cpu')}.jsonl").read_text().splitlines()
    assert [json.loads(r)["solution"] for r in records] == ["torch_fp32"]
    assert (user / "defs").is_dir() and (user / ".gitignore").is_file()   # made as `fibuild init` makes one

    # table, resolve and load read the user's records with the shipped library's
    assert main(["table", "rmsnorm_h4096", "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert board["device"] == device_slug("cpu") and board["solutions"] == ["torch_fp32"]
    assert main(["table", "rmsnorm_h4096", "--device", "nvidia-h100-80gb-hbm3-sm90", "--json"]) == 0
    assert "triton_row" in json.loads(capsys.readouterr().out)["solutions"]
    k = fibuild.load("rmsnorm_h4096")
    res = k.explain(batch_size=1)
    mine = [d for d in res.decisions if getattr(d, "solution", None) == "torch_fp32"]
    assert mine and all("µs" in str(d) for d in mine), res.decisions   # measured, not "no evaluation"
    x, w = torch.randn(1, 4096, dtype=torch.bfloat16), torch.ones(4096, dtype=torch.bfloat16)
    assert k(x, w).shape == (1, 4096)


def test_the_installed_library_is_never_written(tmp_path, settings_env, monkeypatch, capsys):
    """A library installed in the package (``fibuild/_shipped``) named as the workspace is
    refused before anything runs, with what to do."""
    installed = tmp_path / "site-packages" / "fibuild" / "_shipped"
    (installed / "defs" / "rmsnorm").mkdir(parents=True)
    (installed / "defs" / "rmsnorm" / "rmsnorm_h4096.yaml").write_bytes(
        (shipped_root() / "defs" / "rmsnorm" / "rmsnorm_h4096.yaml").read_bytes())
    monkeypatch.setattr(workspace_module, "shipped_root", lambda: installed)
    assert Workspace(installed).read_only
    assert main(["--root", str(installed), "bench", "rmsnorm_h4096", *FAST]) == 1
    err = capsys.readouterr().err
    assert "never written to" in err and "fibuild init" in err and "benchmarking" not in err
    assert not (installed / "registry").exists()


def test_an_unwritable_registry_is_refused_before_anything_is_measured(tmp_path, settings_env, capsys):
    root = tmp_path / "ws"
    assert main(["init", str(root)]) == 0
    (root / "defs" / "rmsnorm").mkdir()
    (root / "defs" / "rmsnorm" / "rmsnorm_h4096.yaml").write_bytes(
        (shipped_root() / "defs" / "rmsnorm" / "rmsnorm_h4096.yaml").read_bytes())
    (root / "registry").rmdir()
    (root / "registry").write_text("not a folder\n")                 # nothing can be written under it
    capsys.readouterr()
    assert main(["--root", str(root), "bench", "rmsnorm_h4096", *FAST]) == 1
    err = capsys.readouterr().err
    assert f"cannot write results under {root / 'registry'}" in err and "benchmarking" not in err


def test_init_uses_the_current_folder_and_makes_the_user_workspace(empty_folder, capsys):
    assert main(["init"]) == 0
    here = Path.cwd()
    assert (here / "defs").is_dir() and (here / "registry").is_dir()
    capsys.readouterr()
    user = empty_folder / "data" / "fibuild"
    assert main(["init", "--user", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["root"] == str(user)
    assert (user / "defs").is_dir() and (user / "README.md").is_file()
    assert main(["init", "--user"]) == 1                              # made already
    assert main(["init", "--user", str(here)]) == 1
    assert "give no folder" in capsys.readouterr().err


def test_run_trace_on_the_user_workspace(empty_folder, capsys):
    code = main(["run", "--trace", "--json", "--", sys.executable, "-c", "pass"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["root"] == str(empty_folder / "data" / "fibuild")
    assert (empty_folder / "data" / "fibuild" / "registry").is_dir()


def test_import_from_an_empty_folder_goes_to_the_user_workspace(empty_folder, capsys):
    fixture = Path(__file__).resolve().parents[2] / "fixtures" / "flashinfer_trace"
    name = "mla_paged_decode_h16_ckv512_kpe64_ps1"                       # not in the shipped library
    assert main(["import", "flashinfer-trace", str(fixture), name]) == 0, capsys.readouterr().err
    user = empty_folder / "data" / "fibuild"
    assert list((user / "defs").glob(f"*/{name}.yaml"))
    assert not list((shipped_root() / "defs").glob(f"*/{name}.yaml"))
    assert name in Workspace.discover().definitions                     # seen with the shipped ones

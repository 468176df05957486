"""Workspace: discovery, lazy loading, lookups, workspace-level validation."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fibuild.config import Settings
from fibuild.errors import FibuildError, ManifestError, ManifestErrors
from fibuild.spec.workspace import Workspace, shipped_root

WORKSPACES = Path(__file__).resolve().parents[2] / "fixtures" / "manifests" / "workspaces"
GOOD = WORKSPACES / "good"


def _by_file(errors, root):
    return {str(Path(e.path).relative_to(root)): dict(e.problems) for e in errors}


def test_construction_does_no_io(tmp_path):
    ws = Workspace(tmp_path / "does-not-exist")
    assert ws.root == (tmp_path / "does-not-exist").resolve()
    assert ws.registry_dir == ws.root / "registry"
    assert not ws.root.exists()


def test_good_workspace_loads_everything():
    ws = Workspace(GOOD)
    assert ws.validate() == []
    assert list(ws.definitions) == ["toy_copy", "toy_scale"]
    assert [s.qualified_name for s in ws.solutions()] == ["toy_copy/torch", "toy_scale/fast", "toy_scale/torch"]
    assert [s.name for s in ws.solutions("toy_scale")] == ["fast", "torch"]
    assert ws.solutions(ws.definition("toy_copy"))[0].path == GOOD / "solutions" / "toy_copy" / "torch"
    assert ws.definitions is ws.definitions  # cached per instance


def test_workloads_are_declared_then_recorded():
    ws = Workspace(GOOD)
    workloads = ws.workloads("toy_scale")
    assert [w.uuid for w in workloads] == ["toy_scale-n4", "toy_scale-n1024", "traced-n7"]
    assert workloads[2].source == str(GOOD / "registry" / "toy_scale" / "workloads.jsonl")
    assert [w.uuid for w in ws.workloads(ws.definition("toy_copy"))] == ["toy_copy-n4", "toy_copy-n1024"]


def test_definition_lookup_loads_one_file_and_names_unknowns():
    ws = Workspace(GOOD)
    assert ws.definition("toy_scale").name == "toy_scale"
    assert ws._definitions is None  # only that file was read
    with pytest.raises(FibuildError, match="unknown definition 'toy_scal' .*did you mean 'toy_scale'"):
        ws.definition("toy_scal")
    with pytest.raises(FibuildError, match="unknown definition"):
        ws.definition("../good")
    ws.definitions
    with pytest.raises(FibuildError, match="unknown definition 'nope'"):
        ws.definition("nope")


def test_solution_lookup():
    ws = Workspace(GOOD)
    assert ws.solution("toy_scale/torch").qualified_name == "toy_scale/torch"
    assert ws.solution("toy_scale/torch") is ws.solution("torch", definition="toy_scale")
    assert ws.solution("torch", definition="toy_copy").qualified_name == "toy_copy/torch"
    assert ws.solution("fast").qualified_name == "toy_scale/fast"
    with pytest.raises(FibuildError, match="'torch' is ambiguous: use one of toy_copy/torch, toy_scale/torch"):
        ws.solution("torch")
    with pytest.raises(FibuildError, match="unknown solution of 'toy_copy' 'fast'"):
        ws.solution("toy_copy/fast")
    with pytest.raises(FibuildError, match="unknown solution 'slow'"):
        ws.solution("slow")
    with pytest.raises(FibuildError, match="unknown definition 'ghost'"):
        ws.solutions("ghost")


def test_duplicate_definition_names():
    root = WORKSPACES / "duplicate_definitions"
    errors = Workspace(root).validate()
    assert _by_file(errors, root) == {
        "defs/b/dup.yaml": {"/name": "duplicate definition name 'dup' (also in defs/a/dup.yaml)"}}
    with pytest.raises(ManifestErrors) as excinfo:
        Workspace(root).definitions
    assert "defs/b/dup.yaml: /name: duplicate definition name 'dup'" in str(excinfo.value)
    with pytest.raises(ManifestError, match="duplicate definition name 'dup'"):
        Workspace(root).definition("dup")


def test_misplaced_definition_file():
    root = WORKSPACES / "misplaced_definition"
    errors = Workspace(root).validate()
    assert _by_file(errors, root) == {
        "defs/stray.yaml": {"/": "misplaced: definitions live at defs/<op_type>/<name>.yaml"}}


def test_op_type_folder_mismatch():
    root = WORKSPACES / "op_type_mismatch"
    (problems,) = _by_file(Workspace(root).validate(), root).values()
    assert "does not match the folder defs/gemm/" in problems["/op_type"]


def test_solution_of_a_missing_definition():
    root = WORKSPACES / "orphan_solution"
    errors = Workspace(root).validate()
    assert _by_file(errors, root) == {"solutions/ghost/torch/solution.yaml": {
        "/definition": "definition 'ghost' does not exist in the workspace"}}
    with pytest.raises(ManifestErrors):
        Workspace(root).solutions()


def test_workloads_of_a_missing_definition_and_a_repeated_uuid():
    root = WORKSPACES / "orphan_workloads"
    found = _by_file(Workspace(root).validate(), root)
    assert found["registry/ghost/workloads.jsonl"] == {
        "/": "no definition 'ghost' in the workspace for registry/ghost/workloads.jsonl"}
    assert "is also a declared workload of 'real'" in found["registry/real/workloads.jsonl"]["/0/uuid"]
    with pytest.raises(ManifestError):
        Workspace(root).workloads("real")


def test_one_bad_definition_does_not_hide_others():
    root = WORKSPACES / "one_bad_definition"
    ws = Workspace(root)
    found = _by_file(ws.validate(), root)
    assert list(found) == ["defs/toy/bad.yaml"]
    assert set(found["defs/toy/bad.yaml"]) == {"/inputs/x/dtype", "/outputs/y/dtype"}
    assert ws.definition("good").name == "good"
    assert [s.qualified_name for s in ws.solutions("good")] == ["good/torch"]
    with pytest.raises(ManifestErrors):
        ws.definitions


def test_validate_given_paths_and_folders():
    ws = Workspace(WORKSPACES / "orphan_solution")
    sol = WORKSPACES / "orphan_solution" / "solutions" / "ghost" / "torch" / "solution.yaml"
    assert ws.validate([WORKSPACES / "orphan_solution" / "defs"]) == []
    (error,) = ws.validate([sol])
    assert error.path == str(sol)
    assert ws.manifest_files([WORKSPACES / "orphan_solution"]) == [
        WORKSPACES / "orphan_solution" / "defs" / "toy" / "real.yaml", sol]


def test_validate_given_file_kinds(tmp_path):
    ws = Workspace(WORKSPACES / "orphan_workloads")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    (error,) = ws.validate([notes])
    assert "not a manifest" in error.problems[0][1]
    (error,) = ws.validate([tmp_path / "missing.yaml"])
    assert error.problems == [("/", "file not found")]
    (error,) = ws.validate([WORKSPACES / "orphan_workloads" / "registry" / "ghost" / "workloads.jsonl"])
    assert "no definition 'ghost'" in error.problems[0][1]
    dup = WORKSPACES / "duplicate_definitions"
    (error,) = Workspace(dup).validate([dup / "defs" / "a" / "dup.yaml"])
    assert "duplicate definition name 'dup' (also in defs/b/dup.yaml)" in error.problems[0][1]


def test_validate_workloads_file_of_an_invalid_definition(tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(WORKSPACES / "one_bad_definition", root)
    jsonl = root / "registry" / "bad" / "workloads.jsonl"
    jsonl.parent.mkdir(parents=True)
    jsonl.write_text('{"uuid": "w", "axes": {"n": 3}, "inputs": {}}\n')
    ws = Workspace(root)
    assert [Path(e.path).name for e in ws.validate()] == ["bad.yaml"]  # reported once, at its cause
    (error,) = ws.validate([jsonl])
    assert "cannot check: definition 'bad' is invalid" in error.problems[0][1]


def test_a_fixed_file_is_seen_by_a_new_instance(tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(WORKSPACES / "one_bad_definition", root)
    bad = root / "defs" / "toy" / "bad.yaml"
    assert Workspace(root).validate()
    bad.write_text(bad.read_text().replace("float33", "float32"))
    assert Workspace(root).validate() == []
    assert list(Workspace(root).definitions) == ["bad", "good"]


def test_empty_workspace(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.validate() == [] and ws.definitions == {} and ws.solutions() == []
    assert ws.manifest_files() == []


# --- discovery ---------------------------------------------------------------------

def test_discover_prefers_settings_root(tmp_path, monkeypatch):
    monkeypatch.chdir(GOOD / "solutions")
    settings = Settings.from_env({"FIBUILD_ROOT": str(tmp_path)})
    assert Workspace.discover(settings).root == tmp_path.resolve()


def test_discover_reads_fibuild_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FIBUILD_ROOT", str(tmp_path))
    assert Workspace.discover().root == tmp_path.resolve()


def test_discover_finds_the_nearest_ancestor_with_defs(monkeypatch):
    settings = Settings.from_env({})
    nested = GOOD / "solutions" / "toy_scale" / "torch"
    assert Workspace.discover(settings, cwd=nested).root == GOOD
    monkeypatch.chdir(nested)
    assert Workspace.discover(settings).root == GOOD


def test_discover_falls_back_to_the_user_workspace_over_the_shipped_library(tmp_path):
    settings = Settings.from_env({"XDG_DATA_HOME": str(tmp_path / "data")})
    ws = Workspace.discover(settings, cwd=tmp_path)
    assert ws.root == tmp_path / "data" / "fibuild" and ws.base == shipped_root()
    assert ws.layers == (ws.root, shipped_root()) and not ws.root.exists()   # made on the first write
    assert "rmsnorm_h4096" in ws.definitions and ws.solution("rmsnorm_h4096/torch_fp32").path.is_relative_to(
        shipped_root())


def test_the_user_workspace_shadows_the_library_by_name_and_keeps_its_own_duplicates(tmp_path):
    import shutil

    user = tmp_path / "data" / "fibuild"
    settings = Settings.from_env({"XDG_DATA_HOME": str(tmp_path / "data")})
    (user / "defs" / "rmsnorm").mkdir(parents=True)
    shipped_def = shipped_root() / "defs" / "rmsnorm" / "rmsnorm_h4096.yaml"
    own = user / "defs" / "rmsnorm" / "rmsnorm_h4096.yaml"
    own.write_text(shipped_def.read_text().replace("Root mean square", "My root mean square"))
    shutil.copytree(shipped_root() / "solutions" / "rmsnorm_h4096" / "torch_fp32",
                    user / "solutions" / "rmsnorm_h4096" / "torch_fp32")
    ws = Workspace.at(user, settings)
    assert ws.base == shipped_root()
    assert ws.definition("rmsnorm_h4096").path == own                        # the user's shadows the library's
    assert ws.solution("rmsnorm_h4096/torch_fp32").path == user / "solutions" / "rmsnorm_h4096" / "torch_fp32"
    names = [s.name for s in ws.solutions("rmsnorm_h4096")]
    assert names.count("torch_fp32") == 1 and "triton_row" in names        # the library's others still there
    assert [p for p in ws.definition_files() if p.stem == "rmsnorm_h4096"] == [own]
    (user / "defs" / "rmsnorm" / "rmsnorm_h4096.yml").write_text(own.read_text())
    problems = Workspace.at(user, settings).validate()
    assert any("duplicate definition name 'rmsnorm_h4096'" in str(e) for e in problems)
    # a plain workspace is not layered
    assert Workspace.at(tmp_path / "elsewhere", settings).base is None

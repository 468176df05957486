"""Shared source folders (``libraries:``): found, checked, built, hashed and carried along.

The fixture's ``py_add`` imports ``helpers.py`` relatively; here that file moves into a
library ``adders`` (``solutions/_lib/adders/``), as the shipped solutions' copies did.
"""
from __future__ import annotations

import base64
import json
import shutil

import pytest
import torch

from fibuild.bench.farm import bundle
from fibuild.compile import keys
from fibuild.compile.cache import BuildCache
from fibuild.dataset.trace_export import export_flashinfer_trace
from fibuild.errors import ManifestError
from fibuild.runtime.table_cache import input_digest
from fibuild.spec.manifest import load_solution
from fibuild.spec.workspace import Workspace


def _fold(ws: Workspace, where: str = "solutions/_lib") -> Workspace:
    """Move py_add's helpers.py into library ``adders`` under ``where``; a fresh Workspace."""
    sol_dir = ws.solutions_dir / "add_one_f32" / "py_add"
    lib = ws.root / where / "adders"
    lib.mkdir(parents=True)
    shutil.move(sol_dir / "helpers.py", lib / "helpers.py")
    manifest = sol_dir / "solution.yaml"
    manifest.write_text(manifest.read_text().replace("sources: [kernel.py, helpers.py]",
                                                     "sources: [kernel.py]\nlibraries: [adders]"))
    return Workspace(ws.root)


@pytest.mark.parametrize("where", ["solutions/_lib", "lib"])
def test_folding_a_file_into_a_library_keeps_digest_and_key(ws, make_settings, pair, where):
    settings = make_settings()
    defn, before = pair(ws, "add_one_f32/py_add")
    digest, key = keys.solution_digest(defn, before), keys.build_key(defn, before, settings)
    folded = _fold(ws, where).solution("add_one_f32/py_add")
    assert folded.sources == ("kernel.py",) and folded.libraries == ("adders",)
    assert folded.all_sources == ("kernel.py", "helpers.py")
    assert keys.solution_digest(defn, folded) == digest
    assert keys.build_key(defn, folded, settings) == key


def test_library_files_are_built_and_imported_relatively(ws, make_settings):
    ws = _fold(ws)
    defn, sol = ws.definition("add_one_f32"), ws.solution("add_one_f32/py_add")
    kernel = BuildCache(make_settings()).get_or_build(defn, sol)
    assert (kernel.build_dir / "src" / "helpers.py").read_text() == \
        (ws.root / "solutions/_lib/adders/helpers.py").read_text()
    assert torch.equal(kernel(torch.zeros(2)), torch.ones(2))


def test_editing_a_library_changes_exactly_its_users(ws, make_settings):
    ws = _fold(ws)
    settings = make_settings()
    defn = ws.definition("add_one_f32")
    user, other = ws.solution("add_one_f32/py_add"), ws.solution("add_one_f32/triton_add")
    before = {s.name: (keys.solution_digest(defn, s), keys.build_key(defn, s, settings)) for s in (user, other)}
    table_key = input_digest(ws.root, "add_one_f32", "cpu", True, settings)
    (ws.root / "solutions/_lib/adders/helpers.py").write_text("OFFSET = 5.0\n")
    ws = Workspace(ws.root)
    user, other = ws.solution("add_one_f32/py_add"), ws.solution("add_one_f32/triton_add")
    assert keys.solution_digest(defn, user) != before["py_add"][0]
    assert keys.build_key(defn, user, settings) != before["py_add"][1]
    assert (keys.solution_digest(defn, other), keys.build_key(defn, other, settings)) == before["triton_add"]
    assert input_digest(ws.root, "add_one_f32", "cpu", True, settings) != table_key
    kernel = BuildCache(settings).get_or_build(defn, user)
    assert torch.equal(kernel(torch.zeros(2)), torch.full((2,), 5.0))


def test_entry_point_may_live_in_a_library(ws, make_settings):
    ws = _fold(ws)
    sol_dir = ws.solutions_dir / "add_one_f32" / "py_add"
    shutil.move(sol_dir / "kernel.py", ws.root / "solutions/_lib/adders/kernel.py")
    manifest = sol_dir / "solution.yaml"
    manifest.write_text(manifest.read_text().replace("sources: [kernel.py]", "sources: []"))
    sol = load_solution(manifest, ["add_one_f32"])
    assert sol.sources == () and sol.all_sources == ("helpers.py", "kernel.py")
    kernel = BuildCache(make_settings()).get_or_build(ws.definition("add_one_f32"), sol)
    assert torch.equal(kernel(torch.zeros(1)), torch.ones(1))


def _problems(manifest) -> str:
    with pytest.raises(ManifestError) as err:
        load_solution(manifest, ["add_one_f32"])
    return str(err.value)


def test_missing_ambiguous_and_clashing_libraries_are_manifest_errors(ws):
    ws = _fold(ws)
    manifest = ws.solutions_dir / "add_one_f32" / "py_add" / "solution.yaml"
    text = manifest.read_text()
    manifest.write_text(text.replace("libraries: [adders]", "libraries: [adders, nothing_here]"))
    message = _problems(manifest)
    assert "/libraries/1" in message and "library 'nothing_here' not found" in message
    manifest.write_text(text)
    (ws.root / "lib" / "adders").mkdir(parents=True)
    assert "library 'adders' is ambiguous" in _problems(manifest)
    shutil.rmtree(ws.root / "lib")
    (manifest.parent / "helpers.py").write_text("OFFSET = 2.0\n")
    manifest.write_text(text.replace("sources: [kernel.py]", "sources: [kernel.py, helpers.py]"))
    assert "file 'helpers.py' clashes with the solution's own sources" in _problems(manifest)
    manifest.write_text(text.replace("libraries: [adders]", "libraries: ['../adders']"))
    assert "/libraries/0" in _problems(manifest)


def test_a_link_out_of_the_library_is_refused(ws, tmp_path):
    ws = _fold(ws)
    secret = tmp_path / "secret.py"
    secret.write_text("KEY = 1\n")
    (ws.root / "solutions/_lib/adders/secret.py").symlink_to(secret)
    message = _problems(ws.solutions_dir / "add_one_f32" / "py_add" / "solution.yaml")
    assert "secret.py is not a regular file inside" in message


def test_farm_bundle_and_export_carry_library_files(ws, tmp_path):
    ws = _fold(ws)
    defn, sol = ws.definition("add_one_f32"), ws.solution("add_one_f32/py_add")
    packed = bundle.pack(ws.root, defn, sol, ws.workloads(defn))
    assert base64.b64decode(packed["files"]["solutions/_lib/adders/helpers.py"]) == \
        (ws.root / "solutions/_lib/adders/helpers.py").read_bytes()
    unpacked = Workspace(bundle.unpack(packed, tmp_path / "cache"))
    again = unpacked.solution("add_one_f32/py_add")
    assert keys.solution_digest(unpacked.definition("add_one_f32"), again) == keys.solution_digest(defn, sol)
    export_flashinfer_trace(ws, tmp_path / "out", ["add_one_f32"])
    exported = json.loads(next((tmp_path / "out").rglob("py_add.json")).read_text())
    assert [s["path"] for s in exported["sources"]] == ["kernel.py", "helpers.py"]

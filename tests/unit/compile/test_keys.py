"""Build keys and digests: what changes them and what must not."""
from __future__ import annotations

import os
import stat

import pytest

from fibuild.compile import keys, store, toolchain
from fibuild.errors import BuildError
from fibuild.spec.manifest import load_definition, load_solution
from fibuild.spec.workspace import Workspace


def _key(ws, name, settings):
    sol = ws.solution(name)
    defn = ws.definition(sol.definition)
    return keys.build_key(defn, sol, settings)


def test_key_is_sha256_hex_and_stable(ws, make_settings):
    settings = make_settings()
    first = _key(ws, "add_one_f32/cpp_add", settings)
    assert len(first) == 64 and int(first, 16) >= 0
    assert _key(Workspace(ws.root), "add_one_f32/cpp_add", settings) == first


def test_yaml_comments_order_and_prose_do_not_change_key_or_digest(pair, ws, make_settings):
    settings = make_settings()
    defn, sol = pair(ws, "add_one_f32/cpp_add")
    key, digest = keys.build_key(defn, sol, settings), keys.solution_digest(defn, sol)
    manifest = sol.path / "solution.yaml"
    # The same solution: keys in another order, flow style, comments, reworded prose.
    manifest.write_text(
        "# a comment that must not matter\n"
        "build: {cflags: [-DFIXTURE_CPP=1]}  # inline comment\n"
        "destination_passing_style: true\n"
        "target_hardware:\n  - cpu\n"
        "sources: [kernel.cpp, offset.h]\n"
        "entry_point: 'kernel.cpp::add_one'\n"
        "language: cpp\n"
        "description: Reworded, adds one on CPU.\n"
        "author: someone else\n"
        "definition: add_one_f32\n"
        "name: cpp_add\n")
    def_file = defn.path
    def_file.write_text("# new header comment\n" + def_file.read_text().replace(
        "description: Adds 1", "description: Adds one (reworded)"))
    defn2 = load_definition(def_file)
    sol2 = load_solution(manifest)
    assert sol2.description != sol.description and sol2.author != sol.author
    assert keys.build_key(defn2, sol2, settings) == key
    assert keys.solution_digest(defn2, sol2) == digest


def test_source_byte_changes_key_and_digest(pair, ws, make_settings):
    settings = make_settings()
    defn, sol = pair(ws, "add_one_f32/cpp_add")
    key, digest = keys.build_key(defn, sol, settings), keys.solution_digest(defn, sol)
    header = sol.path / "offset.h"  # a header: contents of every source count, not just the entry file
    header.write_bytes(header.read_bytes() + b" ")
    assert keys.build_key(defn, sol, settings) != key
    assert keys.solution_digest(defn, sol) != digest


def test_flags_change_key(pair, ws, make_settings):
    settings = make_settings()
    defn, sol = pair(ws, "add_one_f32/cpp_add")
    key = keys.build_key(defn, sol, settings)
    manifest = sol.path / "solution.yaml"
    manifest.write_text(manifest.read_text().replace("[-DFIXTURE_CPP=1]", "[-DFIXTURE_CPP=2]"))
    assert keys.build_key(defn, load_solution(manifest), settings) != key


def test_arch_changes_cuda_key_not_cpp_key(ws, make_settings):
    a, b = make_settings(FIBUILD_CUDA_ARCH_LIST="9.0a"), make_settings(FIBUILD_CUDA_ARCH_LIST="8.0;9.0a")
    assert _key(ws, "add_one_f32/cuda_add", a) != _key(ws, "add_one_f32/cuda_add", b)
    assert _key(ws, "add_one_f32/cpp_add", a) == _key(ws, "add_one_f32/cpp_add", b)
    # Order and duplicates in the list do not matter: the arch list is sorted and deduplicated.
    c = make_settings(FIBUILD_CUDA_ARCH_LIST="9.0a,8.0,9.0a")
    assert _key(ws, "add_one_f32/cuda_add", b) == _key(ws, "add_one_f32/cuda_add", c)


def test_compiler_env_changes_key(ws, make_settings):
    plain = _key(ws, "add_one_f32/cpp_add", make_settings())
    assert _key(ws, "add_one_f32/cpp_add", make_settings(CPATH="/opt/include")) != plain


def _fake_tool(folder, name, version_text):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{version_text}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_toolchain_version_changes_key_not_digest(pair, ws, make_settings, tmp_path, monkeypatch):
    settings = make_settings()
    defn, sol = pair(ws, "add_one_f32/cpp_add")
    key, digest = keys.build_key(defn, sol, settings), keys.solution_digest(defn, sol)
    _fake_tool(tmp_path / "bin", "c++", "c++ (Fake) 99.1.0")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    toolchain.host_compiler.cache_clear()
    try:
        assert toolchain.host_compiler().version == "c++ (Fake) 99.1.0"
        assert keys.build_key(defn, sol, settings) != key
        assert keys.solution_digest(defn, sol) == digest
    finally:
        monkeypatch.undo()
        toolchain.host_compiler.cache_clear()


def test_nvcc_version_changes_cuda_key(ws, make_settings, tmp_path):
    fake_home = tmp_path / "cuda"
    _fake_tool(fake_home / "bin", "nvcc", "Cuda compilation tools, release 99.0, V99.0.1")
    fake = make_settings(CUDA_HOME=str(fake_home))
    real = make_settings()
    assert toolchain.nvcc_version(fake).startswith("Cuda compilation tools, release 99.0")
    assert _key(ws, "add_one_f32/cuda_add", fake) != _key(ws, "add_one_f32/cuda_add", real)


def test_two_definitions_sharing_a_solution_name_do_not_collide(pair, ws, make_settings):
    settings = make_settings()
    one, two = pair(ws, "add_one_f32/cpp_add"), pair(ws, "add_two_f32/cpp_add")
    assert one[1].name == two[1].name
    k1, k2 = keys.build_key(*one, settings), keys.build_key(*two, settings)
    assert k1 != k2
    assert store.build_dir(settings.cache_dir, k1, one[1].qualified_name) != \
        store.build_dir(settings.cache_dir, k2, two[1].qualified_name)


def test_key_inputs_name_every_part(pair, ws, make_settings):
    defn, sol = pair(ws, "add_one_f32/cuda_add")
    inputs = keys.key_inputs(defn, sol, make_settings(FIBUILD_CUDA_ARCH_LIST="9.0a"))
    assert set(inputs) == {"schema", "identity", "builder", "definition", "solution", "sources", "flags",
                           "toolchain", "arch", "env"}
    assert inputs["arch"] == ["9.0a"]
    assert "-gencode=arch=compute_90a,code=sm_90a" in inputs["flags"]["nvcc"]
    assert [p for p, _ in inputs["sources"]] == ["kernel.cu"]
    assert "description" not in inputs["definition"] and "author" not in inputs["solution"]
    assert keys.key_of(inputs) == keys.build_key(defn, sol, make_settings(FIBUILD_CUDA_ARCH_LIST="9.0a"))


def test_missing_source_is_a_build_error_naming_it(pair, ws, make_settings):
    defn, sol = pair(ws, "add_one_f32/cpp_add")
    (sol.path / "offset.h").unlink()
    with pytest.raises(BuildError, match=r"add_one_f32/cpp_add: cannot read source offset.h"):
        keys.build_key(defn, sol, make_settings())

"""``fibuild build --all`` / ``info`` / ``gc`` over the fixture workspace, with real compilers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from fibuild.compile import store
from fibuild.compile.cache import BuildCache

from toolchain_support import run_cli, settings_for

pytestmark = pytest.mark.build


def test_build_all_builds_the_rest_and_exits_1(built, cuda_ok):
    assert built.rc == 1
    summary = built.out.strip().splitlines()[-1]
    if cuda_ok:
        assert summary.startswith("build: 6 solutions: 0 cached, 5 built, 1 failed")
    else:
        assert "4 built, 1 failed, 1 skipped" in summary
    # The error names the solution, its build dir and ends with the compiler's own words.
    assert "error: add_one_f32/broken_cpp: compile failed" in built.err
    defn, sol = built.pair("add_one_f32/broken_cpp")
    cache = BuildCache(built.settings)
    directory = cache.build_dir(sol, cache.key(defn, sol))
    assert f"build dir: {directory}" in built.err
    assert "expected ‘;’ before ‘}’ token" in built.err or "expected ';' before '}' token" in built.err
    failed = json.loads((directory / "failed.json").read_text())
    assert failed["solution"] == "add_one_f32/broken_cpp" and "kernel.cpp:4" in failed["log_tail"]
    # The diagnostics name the file the user edits, not the build directory's copy.
    assert f"{sol.path / 'kernel.cpp'}:4:" in built.err
    assert f"{directory / 'src' / 'kernel.cpp'}:4" not in built.err
    assert not (directory / "meta.json").exists()
    for name in ("add_one_f32/cpp_add", "add_two_f32/cpp_add", "add_one_f32/py_add", "add_one_f32/triton_add"):
        assert cache.lookup(*built.pair(name)) is not None, name


def test_noop_build_all_is_one_fast_line(built, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(built.root, root)
    shutil.rmtree(root / "solutions" / "add_one_f32" / "broken_cpp")
    copy = built.copy(tmp_path / "cache")
    env = {**os.environ, "FIBUILD_CACHE_DIR": str(copy.cache), "FIBUILD_CUDA_ARCH_LIST": "9.0a"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "fibuild", "--root", str(root), "build", "--all"],
                         capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("build: 5 solutions: 5 cached, 0 built"), out.stdout
    assert wall < 10  # generous for a loaded CI box; benchmarks/bench_build.py measures it


def test_failed_build_not_retried_unless_asked(built, tmp_path):
    copy = built.copy(tmp_path / "cache")
    rc, out, err = run_cli("build", ["add_one_f32/broken_cpp"], copy.settings)
    assert rc == 1 and "failed before (compile failed); retry with --retry-failed" in err
    rc, out, err = run_cli("build", ["add_one_f32/broken_cpp", "--retry-failed"], copy.settings)
    assert rc == 1 and "compile failed" in err and "failed before" not in err


def test_two_definitions_sharing_a_solution_name(built):
    one = BuildCache(built.settings).get_or_build(*built.pair("add_one_f32/cpp_add"))
    two = BuildCache(built.settings).get_or_build(*built.pair("add_two_f32/cpp_add"))
    assert one.build_dir != two.build_dir and one.build_key != two.build_key
    x = torch.arange(4, dtype=torch.float32)
    assert torch.equal(one(x), x + 1) and torch.equal(two(x), x + 2)


def test_cuda_unavailable_is_reported_and_cpu_builds_work(built, tmp_path):
    settings = settings_for(tmp_path / "cache", built.root, CUDA_HOME=str(tmp_path / "no-cuda"))
    report = BuildCache(settings).build_many([built.pair("add_one_f32/cuda_add"), built.pair("add_one_f32/py_add")])
    by_name = {o.solution: o for o in report.outcomes}
    assert by_name["add_one_f32/cuda_add"].status == "unavailable"
    assert "no-cuda does not exist" in by_name["add_one_f32/cuda_add"].error
    assert by_name["add_one_f32/py_add"].status == "built" and report.ok


def test_info_names_every_key_input(built):
    rc, out, _ = run_cli("info", ["add_one_f32/cpp_add"], built.settings)
    assert rc == 0
    defn, sol = built.pair("add_one_f32/cpp_add")
    key = BuildCache(built.settings).key(defn, sol)
    for text in (f"key           {key}", "status        committed", "source kernel.cpp", "source offset.h",
                 "toolchain.cxx", "toolchain.tvm_ffi", "flags.cxx", "builder.name", "build.log"):
        assert text in out, text
    rc, out, _ = run_cli("info", ["add_one_f32/cpp_add", "--json"], built.settings)
    info = json.loads(out)
    assert info["key"] == key and info["key_inputs"]["flags"]["cxx"][-1] == "-DFIXTURE_CPP=1"


def test_gc_respects_locks(built, tmp_path):
    copy = built.copy(tmp_path / "cache")
    rc, out, _ = run_cli("gc", [], copy.settings)  # default: failed and unfinished only
    assert rc == 0 and "removed 1 build dirs" in out and "broken_cpp" in out
    defn, sol = copy.pair("add_one_f32/cpp_add")
    key = BuildCache(copy.settings).key(defn, sol)
    with store.key_lock(copy.cache, key):
        rc, out, _ = run_cli("gc", ["--all"], copy.settings)
    assert rc == 0 and "skipped 1 in use" in out
    remaining = [b.path for b in store.scan(copy.cache)]
    assert remaining == [BuildCache(copy.settings).build_dir(sol, key)]
    rc, out, _ = run_cli("gc", ["--older-than", "1"], copy.settings)
    assert "removed 0 build dirs" in out  # built just now
    rc, out, _ = run_cli("gc", ["--all"], copy.settings)
    assert list(store.scan(copy.cache)) == []

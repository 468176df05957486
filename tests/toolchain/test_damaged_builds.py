"""Damaged native builds (real g++, ninja, tvm-ffi) are refused before dlopen and rebuilt.

Each load runs in a child process, so a regression (a truncated library mapped and read)
fails the test with SIGBUS in the child instead of killing pytest.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from fibuild.compile import store
from fibuild.compile.cache import BuildCache

from toolchain_support import run_cli

LOAD = """
import json, sys, torch
from fibuild.compile.cache import BuildCache, load_committed
from fibuild.config import Settings
from fibuild.errors import BuildError
from fibuild.spec.workspace import Workspace
settings = Settings.from_env()
ws = Workspace(settings.root)
sol = ws.solution(sys.argv[1])
try:
    load_committed(sys.argv[2])
    fast = "loaded"
except BuildError as exc:
    fast = str(exc).splitlines()[0]
kernel = BuildCache(settings).get_or_build(ws.definition(sol.definition), sol)
print(json.dumps({"fast": fast, "out": kernel(torch.arange(3, dtype=torch.float32)).tolist()}))
"""


def _load_in_child(copy, name: str, build_dir):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "FIBUILD_CACHE_DIR": str(copy.cache),
           "FIBUILD_ROOT": str(copy.root), "FIBUILD_MAX_JOBS": "2"}
    done = subprocess.run([sys.executable, "-c", LOAD, name, str(build_dir)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, f"child died ({done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def _library(copy, name="add_one_f32/cpp_add"):
    defn, sol = copy.pair(name)
    return BuildCache(copy.settings).build_dir(sol, BuildCache(copy.settings).key(defn, sol))


def _damage(kind: str, copy, directory):
    library = directory / "module.so"
    if kind == "truncated":
        data = library.read_bytes()
        library.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        library.write_bytes(b"")
    elif kind == "foreign":  # a valid library computing the wrong thing (x + 2 instead of x + 1)
        shutil.copyfile(_library(copy, "add_two_f32/cpp_add") / "module.so", library)


@pytest.mark.parametrize("kind", ["truncated", "empty", "foreign"])
def test_damaged_library_is_refused_before_dlopen_and_rebuilt(built, tmp_path, kind):
    copy = built.copy(tmp_path / "cache")
    directory = _library(copy)
    _damage(kind, copy, directory)
    result, stderr = _load_in_child(copy, "add_one_f32/cpp_add", directory)
    assert "module.so is damaged" in result["fast"]  # refused, never mapped
    assert result["out"] == [1.0, 2.0, 3.0]  # rebuilt and right, never x + 2
    assert "failed verification" in stderr and "building it again" in stderr  # with a warning
    assert store.read_meta(directory) is not None
    assert [p for p in directory.parent.iterdir() if store.STALE in p.name]


def test_build_reports_a_damaged_build_as_built_not_cached(built, tmp_path):
    copy = built.copy(tmp_path / "cache")
    directory = _library(copy)
    _damage("truncated", copy, directory)
    rc, out, _ = run_cli("build", ["add_one_f32/cpp_add"], copy.settings)
    assert rc == 0 and "built add_one_f32/cpp_add" in out and "0 cached" in out


def test_plain_gc_removes_a_damaged_library(built, tmp_path):
    copy = built.copy(tmp_path / "cache")
    directory = _library(copy)
    _damage("empty", copy, directory)
    rc, out, _ = run_cli("gc", [], copy.settings)
    assert rc == 0 and f"removed {directory}" in out and not directory.exists()


def test_meta_artifact_outside_the_build_dir_is_never_loaded(built, tmp_path):
    copy = built.copy(tmp_path / "cache")
    directory = _library(copy)
    meta = json.loads((directory / store.META).read_text())
    meta["artifact"] = "../../../../../../etc/passwd"
    (directory / store.META).write_text(json.dumps(meta))
    result, stderr = _load_in_child(copy, "add_one_f32/cpp_add", directory)
    assert "does not match its own checksum" in result["fast"]
    assert result["out"] == [1.0, 2.0, 3.0] and "moved aside" in stderr

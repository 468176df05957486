"""Processes racing for one key, and a build killed with SIGKILL half way."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from fibuild.compile import store, toolchain
from fibuild.compile.cache import BuildCache, load_committed
from fibuild.errors import BuildError

from toolchain_support import FIXTURE_ROOT, settings_for

pytestmark = pytest.mark.build

# A c++ that logs each compile to $FIXTURE_CXX_LOG, and with $FIXTURE_CXX_HANG set writes a
# partial object file and hangs instead of compiling.
WRAPPER = """#!/bin/sh
case " $* " in *" -c "*)
  [ -n "$FIXTURE_CXX_LOG" ] && echo "compile $$" >> "$FIXTURE_CXX_LOG"
  if [ -n "$FIXTURE_CXX_HANG" ]; then
    out=""; prev=""
    for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
    printf 'partial object' > "$out"
    sleep 300
  fi;;
esac
exec {real} "$@"
"""


@pytest.fixture
def wrapped_cxx(tmp_path, monkeypatch):
    """Put the logging/hanging ``c++`` wrapper first on PATH (here and in child processes)."""
    real = toolchain.host_compiler()
    assert real is not None
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "c++"
    wrapper.write_text(WRAPPER.format(real=real.path))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "cxx.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FIXTURE_CXX_LOG", str(log))
    toolchain.host_compiler.cache_clear()
    yield log
    monkeypatch.undo()
    toolchain.host_compiler.cache_clear()


WORKER = """
import os, sys, time, torch
from pathlib import Path
from fibuild.compile.cache import BuildCache
from fibuild.config import Settings
from fibuild.spec.workspace import Workspace
ws = Workspace(os.environ["FIBUILD_ROOT"])
sol = ws.solution("add_one_f32/cpp_add"); defn = ws.definition(sol.definition)
settings = Settings.from_env()
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
kernel = BuildCache(settings).get_or_build(defn, sol)
x = torch.arange(8, dtype=torch.float32)
print("ok" if torch.equal(kernel(x), x + 1) else "wrong", kernel.build_dir)
"""


def test_eight_processes_race_for_one_key(wrapped_cxx, tmp_path):
    env = {**os.environ, "FIBUILD_CACHE_DIR": str(tmp_path / "cache"), "FIBUILD_ROOT": str(FIXTURE_ROOT),
           "FIBUILD_MAX_JOBS": "1"}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    time.sleep(1.0)
    go.touch()  # release them together (each has imported torch by now, or nearly)
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    lines = [out.split() for out, _ in results]
    assert [ln[0] for ln in lines] == ["ok"] * 8
    assert len({ln[1] for ln in lines}) == 1  # one build directory shared by all
    assert wrapped_cxx.read_text().count("compile") == 1  # exactly one compile


def test_sigkill_mid_build_then_next_build_succeeds(wrapped_cxx, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    env = {**os.environ, "FIBUILD_CACHE_DIR": str(cache), "FIBUILD_ROOT": str(FIXTURE_ROOT),
           "FIXTURE_CXX_HANG": "1"}
    go = tmp_path / "go"
    go.touch()
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(go)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    settings = settings_for(cache, FIXTURE_ROOT)
    from fibuild.spec.workspace import Workspace

    ws = Workspace(FIXTURE_ROOT)
    sol = ws.solution("add_one_f32/cpp_add")
    defn = ws.definition(sol.definition)
    directory = BuildCache(settings).build_dir(sol, BuildCache(settings).key(defn, sol))
    partial = directory / "obj" / "kernel.cpp.o"
    deadline = time.time() + 120
    while not partial.exists() and time.time() < deadline:
        time.sleep(0.1)
    try:
        assert partial.read_bytes() == b"partial object"  # killed while compiling
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # Nothing half-built is ever visible as a build.
    assert store.read_meta(directory) is None
    assert BuildCache(settings).lookup(defn, sol) is None
    with pytest.raises(BuildError, match="no committed build"):
        load_committed(directory)
    # The dead holder's OS lock is gone: the next build proceeds, from a clean directory.
    start = time.perf_counter()
    kernel = BuildCache(settings).get_or_build(defn, sol)
    assert time.perf_counter() - start < 120
    import torch

    x = torch.arange(5, dtype=torch.float32)
    assert torch.equal(kernel(x), x + 1)
    assert kernel.build_dir == directory and store.read_meta(directory, kernel.build_key) is not None

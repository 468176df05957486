"""BuildCache's template method on Python-level builds (fast; native ones are in tests/toolchain)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fibuild.compile import store
from fibuild.compile.cache import BuildCache, load_committed
from fibuild.compile.index import Index
from fibuild.errors import BuildError
from fibuild.spec.calling import load_reference


def _count_builds(monkeypatch):
    """Count calls of the python builder's prepare (the build step)."""
    from fibuild.compile.builders import get_builder

    builder = get_builder("python")
    calls = []
    original = type(builder).prepare

    def counting(self, *args, **kwargs):
        calls.append(args[1].qualified_name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(builder), "prepare", counting)
    return calls


def test_python_build_commit_and_call(ws, make_settings, pair, monkeypatch):
    calls = _count_builds(monkeypatch)
    defn, sol = pair(ws, "add_one_f32/py_add")
    cache = BuildCache(make_settings())
    kernel = cache.get_or_build(defn, sol)
    x = torch.arange(5, dtype=torch.float32)
    assert torch.equal(kernel(x), load_reference(defn)["run"](x))
    meta = json.loads((kernel.build_dir / "meta.json").read_text())
    assert meta["key"] == kernel.build_key and meta["solution"] == "add_one_f32/py_add"
    assert meta["artifact"] == "src/kernel.py" and (kernel.build_dir / "src" / "helpers.py").is_file()
    assert cache.get_or_build(defn, sol) is kernel  # memory level
    fresh = BuildCache(make_settings())  # disk level: loads, does not build
    assert torch.equal(fresh.get_or_build(defn, sol)(x), x + 1)
    assert calls == ["add_one_f32/py_add"]
    with Index(make_settings().cache_dir) as index:
        assert index.summary(kernel.build_key)["status"] == "committed"


def test_loaded_module_path_is_the_build_copy(ws, make_settings, pair):
    defn, sol = pair(ws, "add_one_f32/py_add")
    kernel = BuildCache(make_settings()).get_or_build(defn, sol)
    module = sys.modules[kernel.entry.__module__]
    assert module.__file__ == str(kernel.build_dir / "src" / "kernel.py")
    # Editing the workspace source does not touch the loaded build; it changes the key.
    (sol.path / "helpers.py").write_text("OFFSET = 5.0\n")
    again = BuildCache(make_settings()).get_or_build(defn, sol)
    assert again.build_key != kernel.build_key
    x = torch.zeros(3)
    assert torch.equal(kernel(x), x + 1) and torch.equal(again(x), x + 5)


def test_lookup_never_builds(ws, make_settings, pair):
    defn, sol = pair(ws, "add_one_f32/py_add")
    cache = BuildCache(make_settings())
    assert cache.lookup(defn, sol) is None
    assert not store.builds_root(make_settings().cache_dir).exists()
    built = cache.get_or_build(defn, sol)
    assert BuildCache(make_settings()).lookup(defn, sol).build_key == built.build_key


def test_corrupt_meta_is_a_miss_and_rebuilt(ws, make_settings, pair, monkeypatch):
    defn, sol = pair(ws, "add_one_f32/py_add")
    built = BuildCache(make_settings()).get_or_build(defn, sol)
    (built.build_dir / "meta.json").write_text('{"key": "trunc')
    calls = _count_builds(monkeypatch)
    cache = BuildCache(make_settings())
    assert cache.lookup(defn, sol) is None
    again = cache.get_or_build(defn, sol)
    assert calls == ["add_one_f32/py_add"] and again.build_dir == built.build_dir
    assert store.read_meta(built.build_dir, built.build_key) is not None


def test_disable_build(ws, make_settings, pair):
    defn, sol = pair(ws, "add_one_f32/py_add")
    with pytest.raises(BuildError, match="FIBUILD_DISABLE_BUILD=1"):
        BuildCache(make_settings(FIBUILD_DISABLE_BUILD="1")).get_or_build(defn, sol)
    BuildCache(make_settings()).get_or_build(defn, sol)
    assert BuildCache(make_settings(FIBUILD_DISABLE_BUILD="1")).get_or_build(defn, sol)


def test_failed_build_is_remembered_until_retry(ws, make_settings, pair, monkeypatch):
    defn, sol = pair(ws, "add_one_f32/py_add")
    (sol.path / "kernel.py").write_text("def add_one(x)\n    return x\n")  # syntax error
    with pytest.raises(BuildError, match="syntax error at .*kernel.py:1") as err:
        BuildCache(make_settings()).get_or_build(defn, sol)
    # the user's file, not the build directory's copy of it
    assert f"syntax error at {sol.path / 'kernel.py'}:1" in str(err.value)
    assert err.value.solution == "add_one_f32/py_add" and err.value.build_dir
    store_dir = __import__("pathlib").Path(err.value.build_dir)
    failed = json.loads(store_dir.joinpath("failed.json").read_text())
    assert failed["solution"] == "add_one_f32/py_add" and "syntax error" in failed["error"]
    calls = _count_builds(monkeypatch)
    with pytest.raises(BuildError, match="failed before"):
        BuildCache(make_settings()).get_or_build(defn, sol)
    assert calls == []
    with pytest.raises(BuildError, match="syntax error"):
        BuildCache(make_settings()).get_or_build(defn, sol, retry_failed=True)
    assert calls == ["add_one_f32/py_add"] and not (store_dir / "meta.json").exists()


def test_unknown_language_and_missing_function(ws, make_settings, pair):
    defn, sol = pair(ws, "add_one_f32/py_add")
    import dataclasses

    with pytest.raises(BuildError, match="no builder for language 'fortran'"):
        BuildCache(make_settings()).get_or_build(defn, dataclasses.replace(sol, language="fortran"))
    missing = dataclasses.replace(sol, entry_point="kernel.py::nope")
    with pytest.raises(BuildError, match="defines no function 'nope'"):
        BuildCache(make_settings()).get_or_build(defn, missing)


def test_triton_build_runs_interpreted_and_leaves_the_environment(ws, make_settings, pair, tmp_path):
    defn, sol = pair(ws, "add_one_f32/triton_add")
    settings = make_settings()
    built_dir = BuildCache(settings).get_or_build(defn, sol).build_dir
    # Run in a fresh process: TRITON_INTERPRET must be set before triton is imported.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"}
    env.update(TRITON_INTERPRET="1", FIBUILD_CACHE_DIR=str(settings.cache_dir))
    code = (
        "import os, sys, torch\n"
        "from fibuild.compile.cache import load_committed\n"
        f"f = load_committed({str(built_dir)!r})\n"
        "x = torch.arange(3000, dtype=torch.float32); y = torch.empty_like(x); f(x, y)\n"
        "print(torch.equal(y, x + 1), os.environ.get('TRITON_CACHE_DIR', '-'))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "-"]


def test_load_committed_rejects_uncommitted(tmp_path):
    with pytest.raises(BuildError, match="holds no committed build"):
        load_committed(tmp_path)

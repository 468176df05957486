"""A damaged cache never crashes or lies: verification, repair, private modes, symlinks.

Python-level builds here (fast); the same damage to native libraries is in
tests/toolchain/test_damaged_builds.py.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys

import pytest
import torch

from fibuild.compile import store
from fibuild.compile.batch import build_many
from fibuild.compile.cache import BuildCache, load_committed
from fibuild.compile.prune import prune
from fibuild.errors import BuildError


def _built(ws, make_settings, pair, name="add_one_f32/py_add"):
    defn, sol = pair(ws, name)
    kernel = BuildCache(make_settings()).get_or_build(defn, sol)
    return defn, sol, kernel.build_dir


def _aside(directory):
    return [p for p in directory.parent.iterdir() if p.name.startswith(directory.name + store.STALE)]


def _call_in_fresh_process(build_dir) -> list[float]:
    """Load ``build_dir`` with load_committed in a new interpreter and call it on [0, 1, 2]."""
    code = ("import sys, torch\nfrom fibuild.compile.cache import load_committed\n"
            "f = load_committed(sys.argv[1])\nprint(f(torch.arange(3, dtype=torch.float32)).tolist())\n")
    out = subprocess.run([sys.executable, "-c", code, str(build_dir)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_edited_python_artifact_is_moved_aside_and_rebuilt(ws, make_settings, pair, caplog):
    defn, sol, directory = _built(ws, make_settings, pair)
    (directory / "src" / "kernel.py").write_text("def add_one(x):\n    return x * 2\n")  # a wrong kernel
    with pytest.raises(BuildError, match="kernel.py is damaged"):
        load_committed(directory)  # the fast path refuses it before importing anything
    with caplog.at_level(logging.WARNING, logger="fibuild.compile"):
        BuildCache(make_settings()).get_or_build(defn, sol)
    assert "moved aside" in caplog.text and "kernel.py is damaged" in caplog.text
    assert len(_aside(directory)) == 1
    assert store.read_meta(directory) is not None
    assert _call_in_fresh_process(directory) == [1.0, 2.0, 3.0]


def test_edited_meta_is_not_trusted(ws, make_settings, pair):
    defn, sol, directory = _built(ws, make_settings, pair)
    meta = json.loads((directory / store.META).read_text())
    meta["entry_symbol"] = "os_system"  # any edit breaks the marker's own checksum
    (directory / store.META).write_text(json.dumps(meta))
    assert store.check_meta(directory)[1] == "meta.json does not match its own checksum (edited or damaged)"
    report = build_many(make_settings(), [(defn, sol)])
    assert [o.status for o in report.outcomes] == ["built"]  # never "cached"
    assert store.read_meta(directory)["entry_symbol"] == "add_one"


@pytest.mark.parametrize("artifact", ["../../../../../etc/passwd", "/etc/passwd"])
def test_meta_pointing_outside_its_directory_is_rebuilt(ws, make_settings, pair, artifact):
    defn, sol, directory = _built(ws, make_settings, pair)
    meta = json.loads((directory / store.META).read_text())
    meta["artifact"] = artifact
    meta["files"] = {artifact: [1, "0" * 64]}
    meta["meta_sha256"] = store.meta_checksum(meta)  # a consistent forgery still names a path outside
    (directory / store.META).write_text(json.dumps(meta))
    with pytest.raises(BuildError, match="outside the build directory"):
        load_committed(directory)
    assert [o.status for o in build_many(make_settings(), [(defn, sol)]).outcomes] == ["built"]


@pytest.mark.parametrize("content", ["{}", "not json", json.dumps({"key": "f" * 64, "error": "x"})])
def test_planted_failed_json_is_ignored_and_repaired(ws, make_settings, pair, content, caplog):
    defn, sol = pair(ws, "add_one_f32/py_add")
    settings = make_settings()
    directory = store.build_dir(settings.cache_dir, BuildCache(settings).key(defn, sol), sol.qualified_name)
    directory.mkdir(parents=True)
    (directory / store.FAILED).write_text(content)
    with caplog.at_level(logging.WARNING, logger="fibuild.compile"):
        report = build_many(settings, [(defn, sol)])
    assert [o.status for o in report.outcomes] == ["built"] and "ignoring" in caplog.text
    assert not (directory / store.FAILED).exists()


def test_artifact_that_is_a_symlink_is_refused(ws, make_settings, pair, tmp_path):
    defn, sol, directory = _built(ws, make_settings, pair)
    outside = tmp_path / "evil.py"
    outside.write_text("def add_one(x):\n    return x * 2\n")
    (directory / "src" / "kernel.py").unlink()
    (directory / "src" / "kernel.py").symlink_to(outside)
    assert "Too many levels of symbolic links" in store.check_meta(directory)[1]
    BuildCache(make_settings()).get_or_build(defn, sol)
    assert outside.read_text().endswith("x * 2\n")  # the link target is never touched
    assert not (directory / "src" / "kernel.py").is_symlink()


def test_plain_gc_removes_damaged_builds(ws, make_settings, pair):
    defn, sol, directory = _built(ws, make_settings, pair)
    (directory / "src" / "kernel.py").write_text("")  # damaged, not yet repaired
    result = prune(make_settings().cache_dir)
    assert result.removed == [directory] and not directory.exists()
    _built(ws, make_settings, pair)
    (directory / "src" / "kernel.py").write_text("")
    BuildCache(make_settings()).get_or_build(defn, sol)  # repaired: the damaged copy sits aside
    aside = _aside(directory)
    assert prune(make_settings().cache_dir).removed == aside and store.read_meta(directory)


def test_gc_all_never_deletes_through_a_symlinked_build_dir(ws, make_settings, pair, tmp_path):
    _defn, _sol, directory = _built(ws, make_settings, pair)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / store.META).write_text("precious")
    (victim / "key").write_text("ab" * 32)
    link = directory.parent / ("planted-" + "0" * 20)
    link.symlink_to(victim)
    fan_link = store.builds_root(make_settings().cache_dir) / "zz"
    fan_link.symlink_to(victim)
    result = prune(make_settings().cache_dir, everything=True)
    assert link in result.removed and fan_link in result.removed and directory in result.removed
    assert not link.is_symlink() and not fan_link.is_symlink()
    assert (victim / store.META).read_text() == "precious" and (victim / "key").exists()


def test_cache_tree_is_private_whatever_the_umask(ws, make_settings, pair):
    old = os.umask(0)
    try:
        _defn, _sol, directory = _built(ws, make_settings, pair)
    finally:
        os.umask(old)
    cache = make_settings().cache_dir
    modes = {}
    for here, dirs, files in os.walk(cache):
        for name in dirs + files:
            path = os.path.join(here, name)
            modes[os.path.relpath(path, cache)] = stat.S_IMODE(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    loose = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert loose == {}, loose
    assert modes[os.path.relpath(directory / store.META, cache)] == 0o600


def test_build_dir_that_is_a_symlink_is_replaced_not_followed(ws, make_settings, pair, tmp_path):
    defn, sol = pair(ws, "add_one_f32/py_add")
    settings = make_settings()
    directory = store.build_dir(settings.cache_dir, BuildCache(settings).key(defn, sol), sol.qualified_name)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    directory.parent.mkdir(parents=True)
    directory.symlink_to(target)
    kernel = BuildCache(settings).get_or_build(defn, sol)
    assert not directory.is_symlink() and kernel.build_dir == directory
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert torch.equal(kernel(torch.zeros(2)), torch.ones(2))

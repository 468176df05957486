"""OS faults on the cache are clear errors naming the path, and never block loading a commit.

The read-only and full file-system cases mount a real tmpfs (root only; skipped otherwise).
"""
from __future__ import annotations

import subprocess
import uuid

import pytest
import torch

from fibuild.compile import store
from fibuild.compile.batch import build_many
from fibuild.compile.cache import BuildCache, load_committed
from fibuild.compile.index import Index
from fibuild.compile.prune import prune
from fibuild.config import Settings
from fibuild.errors import BuildError, CacheError


def _settings(cache) -> Settings:
    return Settings.from_env({"FIBUILD_CACHE_DIR": str(cache), "FIBUILD_MAX_JOBS": "2"})


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size)`` -> a fresh tmpfs folder of ``size`` (e.g. "2M"); unmounted afterwards."""
    mounted = []

    def mount(size: str):
        point = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _remount_ro(point):
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


def test_cache_dir_that_is_a_file(ws, pair, tmp_path):
    defn, sol = pair(ws, "add_one_f32/py_add")
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    with pytest.raises(CacheError, match=rf"{cache}.*a file stands where a directory is expected.*FIBUILD_CACHE_DIR"):
        build_many(_settings(cache), [(defn, sol)])
    with pytest.raises(BuildError, match="a file stands where a directory is expected"):
        BuildCache(_settings(cache)).get_or_build(defn, sol)
    assert prune(cache).removed == []
    with pytest.raises(CacheError, match="a file stands where a directory is expected"):
        Index(cache).get_json("apply", "k")


def test_lock_path_that_is_a_directory(ws, make_settings, pair):
    defn, sol = pair(ws, "add_one_f32/py_add")
    settings = make_settings()
    lock = store.lock_path(settings.cache_dir, BuildCache(settings).key(defn, sol))
    lock.mkdir(parents=True)
    with pytest.raises(CacheError, match=rf"{lock}: cannot take the build lock.*remove it"):
        build_many(settings, [(defn, sol)])


def test_read_only_cache_still_loads_committed_builds(ws, pair, tmpfs):
    defn, sol = pair(ws, "add_one_f32/py_add")
    point = tmpfs("16M")
    cache = point / "cache"
    kernel = BuildCache(_settings(cache)).get_or_build(defn, sol)
    with Index(cache) as index:
        index.set_json("apply", "table", {"x": 1})
    other_def, other_sol = pair(ws, "add_one_f32/triton_add")
    _remount_ro(point)
    again = BuildCache(_settings(cache)).get_or_build(defn, sol)  # no write needed to load a commit
    assert torch.equal(again(torch.zeros(2)), torch.ones(2))
    assert load_committed(kernel.build_dir) is not None
    with pytest.raises(CacheError, match=r"index: the build index cannot be used.*read-only"):
        Index(cache).get_json("apply", "table")  # sqlite cannot open it read-only: a clear error
    with pytest.raises(BuildError, match="read-only"):
        BuildCache(_settings(cache)).get_or_build(other_def, other_sol)
    with pytest.raises(CacheError, match=r"read-only.*FIBUILD_CACHE_DIR"):
        build_many(_settings(cache), [(other_def, other_sol)])


def test_full_cache_loads_commits_and_keeps_the_index(ws, pair, tmpfs):
    defn, sol = pair(ws, "add_one_f32/py_add")
    point = tmpfs("2M")
    cache = point / "cache"
    kernel = BuildCache(_settings(cache)).get_or_build(defn, sol)
    with Index(cache) as index:
        index.set_json("apply", "table", {"x": 1})
    filler = point / "filler"
    with open(filler, "wb") as fh:  # fill the file system to the last byte
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    again = BuildCache(_settings(cache)).get_or_build(defn, sol)
    assert torch.equal(again(torch.zeros(2)), torch.ones(2))
    with pytest.raises(CacheError, match=r"index: the build index cannot be used.*full: free some space"):
        Index(cache).set_json("apply", "big", ["x" * 100000] * 50)
    other_def, other_sol = pair(ws, "add_one_f32/triton_add")
    with pytest.raises(CacheError, match=r"full.*free some space"):
        build_many(_settings(cache), [(other_def, other_sol)])
    result = prune(cache, everything=True)  # gc --all works on a full disk (the index update only logs)
    assert kernel.build_dir in result.removed and not kernel.build_dir.exists()
    filler.unlink()
    with Index(cache) as index:  # the index was never wiped
        assert index.get_json("apply", "table") == {"x": 1}

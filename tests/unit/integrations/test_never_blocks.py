"""The serving path never waits unboundedly: a build lock another process holds, or a locked
build index, costs the first call of a key at most FIBUILD_SERVING_WAIT; the original runs,
``stats()`` counts why and the log says it once. Real locks, taken by another process."""
from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import fibuild
import fibuild.integrations
from fibuild.compile import store
from fibuild.compile.cache import BuildCache
from fibuild.integrations import sites

BF16 = torch.bfloat16
BUSY = store.BUSY_BUILD_LOCK


def _hold(script: str) -> subprocess.Popen:
    """A process running ``script`` (it lets go after 30 s at most); returns once it printed ``held``."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _hold_build_lock(small_ws, name: str, solution: str) -> subprocess.Popen:
    ws = fibuild.Workspace(small_ws.root)
    defn = ws.definition(name)
    sol = next(s for s in ws.solutions(name) if s.name == solution)
    key = BuildCache(small_ws.settings).key(defn, sol)
    path = store.lock_path(small_ws.settings.cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _hold(f"""
        import time
        from filelock import FileLock
        lock = FileLock({str(path)!r}); lock.acquire(); print("held", flush=True); time.sleep(30)""")


def test_a_held_build_lock_runs_the_original_and_is_counted_once_logged(flashinfer_stub, small_ws, caplog,
                                                                         monkeypatch):
    small_ws.add_counted_solution("rmsnorm_h64")
    small_ws.record("rmsnorm_h64", "counted", {"batch_size": 4})
    import flashinfer

    holder = _hold_build_lock(small_ws, "rmsnorm_h64", "counted")
    try:
        fibuild.enable(apply=True, settings=small_ws.settings)
        x, w = torch.randn(4, 64, dtype=BF16), torch.rand(64, dtype=BF16)
        with caplog.at_level(logging.WARNING, logger="fibuild.integrations"):
            start = time.perf_counter()
            first = flashinfer.rmsnorm(x, w, 1e-5)
            waited = time.perf_counter() - start
            flashinfer.rmsnorm(x, w, 1e-5)  # within the back-off: the original at once
        assert waited < 5.0  # FIBUILD_SERVING_WAIT (0.25 s) and the rest of a first call
        assert flashinfer.CALLS["rmsnorm"] == 2
        torch.testing.assert_close(first, flashinfer.rmsnorm.__wrapped__(x, w, 1e-5))
        counts = fibuild.integrations.stats()["flashinfer.norm.rmsnorm"]
        assert {k: n for k, n in counts["fallbacks"].items() if n} == {BUSY: 2} and counts["substituted"] == 0
        said = [r.getMessage() for r in caplog.records if BUSY in r.getMessage() or "build lock" in r.getMessage()]
        assert len(said) == 1 and "the original runs meanwhile" in said[0]
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.setattr(sites.BusyBackoff, "waiting", lambda self: False)  # back-off over: try again
    flashinfer.rmsnorm(x, w, 1e-5)
    assert fibuild.integrations.stats()["flashinfer.norm.rmsnorm"]["substituted"] == 1


def test_a_locked_build_index_costs_a_bounded_wait(flashinfer_stub, small_ws):
    small_ws.add_counted_solution("rmsnorm_h64")
    small_ws.record("rmsnorm_h64", "counted", {"batch_size": 4})
    fibuild.load("rmsnorm_h64", device="cpu", settings=small_ws.settings)
    from fibuild.compile.index import Index

    with Index(small_ws.settings.cache_dir) as index:  # the index exists and holds entries, as after builds
        index.set_json("test", "entry", {"n": 1})
    db = small_ws.settings.cache_dir / "index" / "cache.db"
    assert sqlite3.connect(db).execute("select count(*) from Cache").fetchone()[0] > 0
    (small_ws.root / "registry" / "rmsnorm_h64" / "cpu-extra.jsonl").write_text("")  # a new table digest
    holder = _hold(f"""
        import sqlite3, time
        db = sqlite3.connect({str(db)!r}, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE"); print("held", flush=True); time.sleep(30)""")
    try:
        import flashinfer

        fibuild.enable(apply=True, settings=small_ws.settings)
        x, w = torch.randn(4, 64, dtype=BF16), torch.rand(64, dtype=BF16)
        start = time.perf_counter()
        flashinfer.rmsnorm(x, w, 1e-5)
        assert time.perf_counter() - start < 10.0  # diskcache's own wait is 60 s per access
    finally:
        holder.kill()
        holder.wait()


def test_the_cli_still_waits_for_a_build_lock(small_ws):
    """Outside the serving path a held lock is waited for (a build in progress finishes)."""
    assert small_ws.settings.wait_s is None
    assert fibuild.config.Settings.from_env({"FIBUILD_SERVING_WAIT": "0.5"}).serving_wait_s == 0.5
    with pytest.raises(fibuild.errors.ConfigError, match="FIBUILD_SERVING_WAIT='-1'"):
        fibuild.config.Settings.from_env({"FIBUILD_SERVING_WAIT": "-1"})

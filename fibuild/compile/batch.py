"""Building many solutions at once: one top ninja file, one ninja run (``fibuild build --all``).

Steps: compute every key, skip committed builds, take the locks of the stale keys (in
key order, so two build-alls never deadlock), check again, prepare each stale directory,
run Python-level builds in-process, then write **one** top file that declares
``pool nvcc`` (depth FIBUILD_NVCC_JOBS) and pulls in each stale native ``build.ninja``
with ``subninja``, and run ``ninja -k 0 -j N`` once. ``FAILED:`` lines are mapped back to
build directories; each success is committed, each failure gets ``failed.json``.
Progress goes to a reporter (no-op hooks; the CLI renders them).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from fibuild.compile import keys, store
from fibuild.compile.builders import get_builder
from fibuild.compile.ninja import NinjaFile, NinjaResult, run_ninja, write_if_different
from fibuild.config import Settings
from fibuild.errors import BuildError
from fibuild.spec.model import Definition, Solution

STATUSES = ("cached", "built", "failed", "unavailable", "skipped")


@dataclass
class BuildOutcome:
    """What happened to one solution. ``status`` is one of STATUSES."""

    solution: str
    status: str
    key: str = ""
    build_dir: Path | None = None
    seconds: float = 0.0
    error: str = ""


@dataclass
class BuildReport:
    outcomes: list[BuildOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def having(self, status: str) -> list[BuildOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def ok(self) -> bool:
        """True when nothing failed (unavailable builders do not count as failures)."""
        return not self.having("failed") and not self.having("skipped")

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.having(s))} {s}" for s in STATUSES if self.having(s) or s in ("built", "cached"))
        return f"build: {len(self.outcomes)} solutions: {counts} ({self.seconds:.2f} s)"


class BuildReporter:
    """Progress hooks of a batch build; every hook is a no-op here. Called from the building thread."""

    def starting(self, total: int, stale: int) -> None:
        """Keys are computed: ``total`` solutions, ``stale`` of them need a build."""

    def progress(self, done: int, total: int, current: str) -> None:
        """A ninja edge finished (``[done/total] current``)."""

    def finished(self, outcome: BuildOutcome) -> None:
        """One solution is settled (committed, failed, unavailable, cached)."""

    def done(self, report: BuildReport) -> None:
        """Everything is settled."""


def run_native(top_dir: Path, ninja_files: list[Path], settings: Settings, *, jobs: int,
               keep_going: bool = True, on_status=None) -> NinjaResult:
    """Write ``top_dir/top.ninja`` (nvcc pool + one ``subninja`` per file) and run ninja once.

    The per-directory files use ``pool = $nvcc_pool``; defining the variable here puts
    their nvcc edges in the pool. Caller holds the locks of every directory involved.
    """
    top = NinjaFile()
    top.comment("fibuild: generated top-level build file; do not edit.")
    top.pool("nvcc", max(1, settings.nvcc_jobs))
    top.variable("nvcc_pool", "nvcc")
    for path in ninja_files:
        top.subninja(path)
    top_file = top_dir / "top.ninja"
    write_if_different(top_file, top.text())
    return run_ninja(top_file, jobs=jobs, keep_going=keep_going, cwd=top_dir, on_status=on_status)


@dataclass
class _Item:
    defn: Definition
    sol: Solution
    key: str = ""
    inputs: dict = field(default_factory=dict)
    directory: Path | None = None
    plan: object = None
    start: float = 0.0


def _outcome(item: _Item, status: str, seconds: float = 0.0, error: str = "") -> BuildOutcome:
    return BuildOutcome(item.sol.qualified_name, status, item.key, item.directory, seconds, error)


def build_many(cache, pairs: Iterable[tuple[Definition, Solution]], *, jobs: int | None = None,
               keep_going: bool = True, retry_failed: bool = False, reporter: BuildReporter | None = None
               ) -> BuildReport:
    """Build every stale ``(definition, solution)`` of ``pairs`` through ``cache`` (a BuildCache).

    Never raises for a solution's failure: each one becomes a BuildOutcome. A no-op run
    (everything committed) costs one key computation and one ``meta.json`` read per
    solution, and starts no process. ``jobs`` defaults to FIBUILD_MAX_JOBS.
    """
    from fibuild.compile.cache import commit_meta, failed_error, record_failure

    settings = cache.settings
    reporter = reporter or BuildReporter()
    start = time.perf_counter()
    report = BuildReport()
    seen: set[str] = set()
    stale: list[_Item] = []

    def settle(outcome: BuildOutcome) -> None:
        report.outcomes.append(outcome)
        reporter.finished(outcome)

    for defn, sol in pairs:
        item = _Item(defn, sol)
        try:
            item.inputs = keys.key_inputs(defn, sol, settings)
        except BuildError as exc:
            settle(_outcome(item, "failed", error=str(exc)))
            continue
        item.key = keys.key_of(item.inputs)
        if item.key in seen:
            continue
        seen.add(item.key)
        item.directory = store.build_dir(settings.cache_dir, item.key, sol.qualified_name)
        if store.read_meta(item.directory, item.key) is not None:
            report.outcomes.append(_outcome(item, "cached"))
            continue
        stale.append(item)
    reporter.starting(len(report.outcomes) + len(stale), len(stale))

    with ExitStack() as locks:
        todo: list[_Item] = []
        for item in sorted(stale, key=lambda it: it.key):
            builder = get_builder(item.sol.language)
            reason = builder.unavailable_reason(settings)
            if reason:
                settle(_outcome(item, "unavailable", error=f"unavailable: {reason}"))
                continue
            locks.enter_context(store.key_lock(settings.cache_dir, item.key))
            if store.read_meta(item.directory, item.key) is not None:
                settle(_outcome(item, "cached"))
                continue
            failed = store.read_failed(item.directory)
            if failed and not retry_failed:
                settle(_outcome(item, "failed", error=str(failed_error(item.sol, item.directory, failed))))
                continue
            if settings.disable_build:
                settle(_outcome(item, "failed", error=f"{item.sol.qualified_name}: FIBUILD_DISABLE_BUILD=1"))
                continue
            todo.append(item)

        native: list[_Item] = []
        stop = False
        for item in todo:
            if stop:
                settle(_outcome(item, "skipped", error="not built: an earlier build failed"))
                continue
            builder = get_builder(item.sol.language)
            item.start = time.perf_counter()
            try:
                store.reset_dir(item.directory, item.key)
                item.plan = builder.prepare(item.defn, item.sol, settings, item.directory)
            except BuildError as exc:
                record_failure(item.directory, item.sol, item.key, exc)
                settle(_outcome(item, "failed", time.perf_counter() - item.start, str(exc)))
                stop = not keep_going
                continue
            if item.plan.ninja_file is not None:
                native.append(item)
            else:
                _commit(cache, item, builder, time.perf_counter() - item.start, settle, commit_meta)

        if native and not stop:
            _run_batch(cache, native, jobs or settings.max_jobs, keep_going, reporter, settle,
                       commit_meta, record_failure)
        elif native:
            for item in native:
                settle(_outcome(item, "skipped", error="not built: an earlier build failed"))

    report.seconds = time.perf_counter() - start
    reporter.done(report)
    return report


def _commit(cache, item: _Item, builder, seconds: float, settle, commit_meta) -> None:
    meta = commit_meta(item.defn, item.sol, item.key, item.inputs, builder, item.plan, seconds)
    store.commit(item.directory, meta)
    cache._index_record(item.key, item.directory, meta, None)
    settle(_outcome(item, "built", seconds))


def _run_batch(cache, native: list[_Item], jobs: int, keep_going: bool, reporter: BuildReporter, settle,
               commit_meta, record_failure) -> None:
    """One ninja run over every prepared native build; commit or fail each."""
    settings = cache.settings
    finished_at: dict[str, float] = {}
    link_names = {f"LINK {it.sol.qualified_name}": it.key for it in native}

    def on_status(done: int, total: int, description: str) -> None:
        if description in link_names:
            finished_at[link_names[description]] = time.perf_counter()
        reporter.progress(done, total, description)

    runs = settings.cache_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    top_dir = Path(tempfile.mkdtemp(prefix=f"build-{os.getpid()}-", dir=runs))
    try:
        result = run_native(top_dir, [it.plan.ninja_file for it in native], settings, jobs=jobs,
                            keep_going=keep_going, on_status=on_status)
    finally:
        shutil.rmtree(top_dir, ignore_errors=True)
    for item in native:
        prefix = str(item.directory) + os.sep
        failed_outs = [o for o in result.failed_outputs if o.startswith(prefix)]
        log_text = _log_for(result, item)
        (item.directory / store.LOG).write_text(log_text + "\n")
        seconds = finished_at.get(item.key, time.perf_counter()) - item.start
        if failed_outs or not (item.directory / item.plan.artifact).is_file():
            why = "compile failed" if failed_outs else "not built (ninja stopped before it)"
            exc = BuildError(f"{item.sol.qualified_name}: {why}", solution=item.sol.qualified_name,
                             build_dir=item.directory, log_tail=store.log_tail(log_text))
            record_failure(item.directory, item.sol, item.key, exc)
            settle(_outcome(item, "failed", seconds, str(exc)))
            continue
        _commit(cache, item, get_builder(item.sol.language), seconds, settle, commit_meta)


def _log_for(result: NinjaResult, item: _Item) -> str:
    """This build's share of the ninja output: its status lines and the blocks under them."""
    name = item.sol.qualified_name
    directory = str(item.directory)
    lines, mine = [], False
    for line in result.output.splitlines():
        if line.startswith("[") and "] " in line:
            mine = f" {name} " in line or line.endswith(f" {name}")
        elif line.startswith("ninja: "):
            mine = False
        elif line.startswith("FAILED: "):
            mine = directory in line
        if mine:
            lines.append(line)
    return "\n".join(lines)

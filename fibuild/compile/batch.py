"""The build sequence, once: try -> lock -> try again -> build -> commit -> index.

:func:`build_items` is the only place that decides to build (DESIGN §4). It serves
``fibuild build --all`` (:func:`build_many`) and a single ``BuildCache.get_or_build``
alike: one solution is a batch of one. Steps: compute every key, skip verified committed
builds, take the locks of the stale keys (in key order, so two batches never deadlock),
check again, honour a recorded failure and FIBUILD_DISABLE_BUILD, prepare each stale
directory (a damaged one is moved aside first), run Python-level builds in-process, then
write **one** top file that declares ``pool nvcc`` (depth FIBUILD_NVCC_JOBS) and pulls in
each stale native ``build.ninja`` with ``subninja``, and run ``ninja -k 0 -j N`` once.
``FAILED:`` lines are mapped back to build directories; each success is committed
(:mod:`fibuild.compile.commit`), each failure gets ``failed.json``. Progress goes to a
reporter (no-op hooks; the CLI renders them).
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
from fibuild.compile.builders.sources import at_user_sources
from fibuild.compile.commit import commit_build, failed_error, meta_fields, record_failure
from fibuild.compile.ninja import NinjaFile, NinjaResult, run_ninja, write_if_different
from fibuild.config import Settings
from fibuild.errors import BuildError, CacheError, FibuildError, cache_error
from fibuild.spec.model import Definition, Solution

BUILD_STATUSES = ("cached", "built", "failed", "unavailable", "skipped")
LOG_TAIL_LINES = 50  # lines of a failed build's log kept in its error


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class BuildOutcome:
    """What happened to one solution. ``status`` is one of BUILD_STATUSES."""

    solution: str
    status: str
    key: str = ""
    build_dir: Path | None = None
    seconds: float = 0.0
    error: str = ""
    meta: dict | None = field(default=None, repr=False)  # the committed meta.json (cached, built)
    exception: FibuildError | None = field(default=None, repr=False, compare=False)


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
        counts = ", ".join(f"{len(self.having(s))} {s}" for s in BUILD_STATUSES
                           if self.having(s) or s in ("built", "cached"))
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
class BuildItem:
    """One solution to settle; ``inputs`` may be given when the caller computed them."""

    defn: Definition
    sol: Solution
    inputs: dict | None = None
    key: str = ""
    directory: Path | None = None
    plan: object = None
    start: float = 0.0


def _outcome(item: BuildItem, status: str, seconds: float = 0.0, error: BuildError | str = "",
             meta: dict | None = None) -> BuildOutcome:
    exc = error if isinstance(error, FibuildError) else None
    return BuildOutcome(item.sol.qualified_name, status, item.key, item.directory, seconds, str(error),
                        meta=meta, exception=exc)


def build_many(settings: Settings, pairs: Iterable[tuple[Definition, Solution]], *, jobs: int | None = None,
               keep_going: bool = True, retry_failed: bool = False, reporter: BuildReporter | None = None
               ) -> BuildReport:
    """Build every stale ``(definition, solution)`` of ``pairs``; see :func:`build_items`."""
    return build_items(settings, [BuildItem(d, s) for d, s in pairs], jobs=jobs, keep_going=keep_going,
                       retry_failed=retry_failed, reporter=reporter)


def build_items(settings: Settings, items: list[BuildItem], *, jobs: int | None = None,
                keep_going: bool = True, retry_failed: bool = False,
                reporter: BuildReporter | None = None) -> BuildReport:
    """Settle every item: ``cached`` (a verified commit), ``built``, ``failed``,
    ``unavailable`` or ``skipped``, one BuildOutcome each (the failed ones carry their
    BuildError). Never raises for a solution's failure; raises CacheError when the cache
    itself cannot be used (a file in its place, a read-only or full disk, a lock that
    cannot be taken). A no-op run costs one key computation and one verification per
    solution, and starts no process. ``jobs`` defaults to FIBUILD_MAX_JOBS.
    """
    reporter = reporter or BuildReporter()
    start = time.perf_counter()
    report = BuildReport()
    seen: set[str] = set()
    stale: list[BuildItem] = []

    def settle(outcome: BuildOutcome) -> None:
        report.outcomes.append(outcome)
        reporter.finished(outcome)

    for item in items:
        try:
            if item.inputs is None:
                item.inputs = keys.key_inputs(item.defn, item.sol, settings)
        except BuildError as exc:
            settle(_outcome(item, "failed", error=exc))
            continue
        item.key = keys.key_of(item.inputs)
        if item.key in seen:
            continue
        seen.add(item.key)
        item.directory = store.build_dir(settings.cache_dir, item.key, item.sol.qualified_name)
        meta = store.read_meta(item.directory, item.key)
        if meta is not None:
            report.outcomes.append(_outcome(item, "cached", meta=meta))
            continue
        stale.append(item)
    reporter.starting(len(report.outcomes) + len(stale), len(stale))

    with ExitStack() as locks:
        todo: list[BuildItem] = []
        for item in sorted(stale, key=lambda it: it.key):
            builder = get_builder(item.sol.language)
            reason = builder.unavailable_reason(settings)
            if reason:
                settle(_outcome(item, "unavailable", error=BuildError(
                    f"{item.sol.qualified_name}: unavailable: {reason}", solution=item.sol.qualified_name)))
                continue
            # Bounded on the serving path (settings.wait_s): a held lock is BusyError, never a hang.
            wait = -1 if settings.wait_s is None else settings.wait_s
            locks.enter_context(store.holding(store.key_lock(settings.cache_dir, item.key, timeout=wait)))
            meta, damage = store.check_meta(item.directory, item.key)
            if meta is not None:
                settle(_outcome(item, "cached", meta=meta))
                continue
            failed = None if damage else store.read_failed(item.directory, item.key)
            if failed and not retry_failed:
                settle(_outcome(item, "failed", error=failed_error(item.sol, item.directory, failed)))
                continue
            if settings.disable_build:
                settle(_outcome(item, "failed", error=BuildError(
                    f"{item.sol.qualified_name}: not built and FIBUILD_DISABLE_BUILD=1",
                    solution=item.sol.qualified_name, build_dir=item.directory)))
                continue
            todo.append(item)

        native: list[BuildItem] = []
        stop = False
        for item in todo:
            if stop:
                settle(_outcome(item, "skipped", error="not built: an earlier build failed"))
                continue
            builder = get_builder(item.sol.language)
            item.start = time.perf_counter()
            store.reset_dir(item.directory, item.key, settings.cache_dir)
            try:
                item.plan = _prepare(builder, item, settings)
            except BuildError as exc:
                record_failure(item.directory, item.sol, item.key, exc)
                settle(_outcome(item, "failed", time.perf_counter() - item.start, exc))
                stop = not keep_going
                continue
            if item.plan.ninja_file is not None:
                native.append(item)
            else:
                _commit(settings, item, builder, time.perf_counter() - item.start, settle)

        if native and not stop:
            _run_batch(settings, native, jobs or settings.max_jobs, keep_going, reporter, settle)
        elif native:
            for item in native:
                settle(_outcome(item, "skipped", error="not built: an earlier build failed"))

    report.seconds = time.perf_counter() - start
    reporter.done(report)
    return report


def _prepare(builder, item: BuildItem, settings: Settings):
    """``builder.prepare`` with the disk's own faults told apart from the solution's."""
    try:
        return builder.prepare(item.defn, item.sol, settings, item.directory)
    except OSError as exc:
        raise cache_error(exc, item.directory, "write the build directory") from None


def _commit(settings: Settings, item: BuildItem, builder, seconds: float, settle) -> None:
    meta = meta_fields(item.defn, item.sol, item.key, item.inputs, builder, item.plan, seconds)
    meta = commit_build(settings.cache_dir, item.directory, meta, item.plan, index_wait_s=settings.wait_s)
    settle(_outcome(item, "built", seconds, meta=meta))


#: Compiler output that means the disk failed, not the solution: no failed.json then.
_DISK_FAULTS = ("No space left on device", "Read-only file system", "Disk quota exceeded")


def _run_batch(settings: Settings, native: list[BuildItem], jobs: int, keep_going: bool,
               reporter: BuildReporter, settle) -> None:
    """One ninja run over every prepared native build; commit or fail each."""
    finished_at: dict[str, float] = {}
    link_names = {f"LINK {it.sol.qualified_name}": it.key for it in native}

    def on_status(done: int, total: int, description: str) -> None:
        if description in link_names:
            finished_at[link_names[description]] = time.perf_counter()
        reporter.progress(done, total, description)

    runs = store.private_dir(settings.cache_dir / "runs", settings.cache_dir)
    try:
        top_dir = Path(tempfile.mkdtemp(prefix=f"build-{os.getpid()}-", dir=runs))
    except OSError as exc:
        raise cache_error(exc, runs, "create a build run folder") from None
    try:
        result = run_native(top_dir, [it.plan.ninja_file for it in native], settings, jobs=jobs,
                            keep_going=keep_going, on_status=on_status)
    except OSError as exc:
        raise cache_error(exc, top_dir, "write the top build file") from None
    finally:
        shutil.rmtree(top_dir, ignore_errors=True)
    for item in native:
        prefix = str(item.directory) + os.sep
        failed_outs = [o for o in result.failed_outputs if o.startswith(prefix)]
        log_text = _log_for(result, item)
        try:
            (item.directory / store.LOG).write_text(log_text + "\n")
        except OSError as exc:
            raise cache_error(exc, item.directory / store.LOG, "write the build log") from None
        seconds = finished_at.get(item.key, time.perf_counter()) - item.start
        if failed_outs or not (item.directory / item.plan.artifact).is_file():
            fault = next((f for f in _DISK_FAULTS if f in log_text), None)
            if fault:  # the disk failed, not the solution: nothing recorded, so a rerun retries
                raise CacheError(f"{item.directory}: building {item.sol.qualified_name} failed: {fault}: "
                                 "free space, or set FIBUILD_CACHE_DIR to another file system\n"
                                 + log_tail(log_text, 5))
            why = "compile failed" if failed_outs else "not built (ninja stopped before it)"
            exc = BuildError(f"{item.sol.qualified_name}: {why}", solution=item.sol.qualified_name,
                             build_dir=item.directory,
                             log_tail=at_user_sources(log_tail(log_text), item.sol, item.directory))
            record_failure(item.directory, item.sol, item.key, exc)
            settle(_outcome(item, "failed", seconds, exc))
            continue
        _commit(settings, item, get_builder(item.sol.language), seconds, settle)


def _log_for(result: NinjaResult, item: BuildItem) -> str:
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

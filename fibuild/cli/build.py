"""``fibuild build``, ``fibuild info`` and ``fibuild gc``: the build cache from the shell.

This module is imported only when one of its subcommands runs (see :mod:`fibuild.cli`);
rich is imported where a progress bar is drawn.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from fibuild.cli.common import console, print_json, styled
from fibuild.compile import keys, store
from fibuild.compile.batch import BuildOutcome, BuildReport
from fibuild.compile.builders import get_builder
from fibuild.compile.cache import BuildCache
from fibuild.compile.keys import canonical_json, sha256_hex
from fibuild.compile.prune import prune
from fibuild.config import KNOBS, env_table_markdown
from fibuild.errors import FibuildError
from fibuild.runtime.table_cache import prune_tables
from fibuild.spec.workspace import Workspace

# Heavy or optional dependencies, imported inside the functions that use them: importlib.metadata, rich.


# -- build -------------------------------------------------------------------------------
def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("solutions", nargs="*", metavar="SOLUTION",
                        help="solutions to build: definition/solution, or a unique solution name")
    parser.add_argument("--all", action="store_true", help="build every solution of the workspace")
    parser.add_argument("-d", "--definition", action="append", default=[], metavar="DEF",
                        help="with --all: only this definition's solutions (repeatable)")
    parser.add_argument("-j", "--jobs", type=int, metavar="N",
                        help="parallel build jobs (default: FIBUILD_MAX_JOBS, else the CPU count)")
    parser.add_argument("--keep-going", action=argparse.BooleanOptionalAction, default=None,
                        help="go on after a failure (default: on with --all, off otherwise)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="rebuild solutions whose last build failed (default: report the old failure)")


def run_build(args, settings) -> int:
    """Exit 1 when a build failed, or when a solution named on the command line cannot be
    built here; with ``--all``, solutions this machine cannot build are skipped (exit 0)."""
    if not args.solutions and not args.all:
        raise FibuildError("name the solutions to build, or pass --all")
    if args.solutions and args.all:
        raise FibuildError("pass solution names or --all, not both")
    if args.jobs is not None and args.jobs < 1:
        raise FibuildError(f"-j {args.jobs}: expected a number >= 1")
    workspace = Workspace.discover(settings)
    if args.all:
        wanted = set(args.definition)
        for name in wanted:
            workspace.definition(name)  # unknown names fail here, with suggestions
        solutions = [s for s in workspace.solutions() if not wanted or s.definition in wanted]
        if not solutions:
            workspace.require_manifests(workspace.manifest_files())
    else:
        solutions = [workspace.solution(name) for name in args.solutions]
    reporter = make_reporter(sys.stdout, quiet=args.json)
    skipped, pairs = [], []
    for sol in solutions:
        reason = unavailable_reason(sol, settings)
        if reason:
            skipped.append(BuildOutcome(sol.qualified_name, "unavailable", error=reason))
            reporter.skipped(sol.qualified_name, reason)
        else:
            pairs.append((workspace.definition(sol.definition), sol))
    keep_going = args.all if args.keep_going is None else args.keep_going
    try:
        report = BuildCache(settings).build_many(pairs, jobs=args.jobs, keep_going=keep_going,
                                                 retry_failed=args.retry_failed, reporter=reporter) \
            if pairs else BuildReport()
    finally:
        reporter.close()
    report.outcomes[:0] = skipped
    ok = report.ok and (args.all or not report.having("unavailable"))
    if args.json:
        print_json({"ok": ok, "seconds": round(report.seconds, 3), "counts": _counts(report),
                    "solutions": [_outcome_json(o) for o in report.outcomes]})
        return 0 if ok else 1
    for outcome in report.having("failed") + report.having("skipped"):
        print(f"error: {outcome.error}", file=sys.stderr)
    counts = ", ".join(f"{n} {status}" for status, n in _counts(report).items())
    print(f"build: {len(report.outcomes)} solutions: {counts} ({report.seconds:.2f} s)")
    return 0 if ok else 1


def unavailable_reason(sol, settings) -> str:
    """Why ``sol`` cannot be built here ("" when it can): a declared dependency (a
    distribution name) is not installed, or its builder's toolchain is missing."""
    import importlib.metadata

    for dist in sol.dependencies:
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return f"dependency {dist} is not installed"
    return get_builder(sol.language).unavailable_reason(settings) or ""


# What the build statuses read as: "unavailable" solutions are skipped with their reason;
# the batch's "skipped" ones were stopped by an earlier failure (without --keep-going).
_SHOWN = {"unavailable": "skipped", "skipped": "not built"}


def _shown(status: str) -> str:
    return _SHOWN.get(status, status)


def _counts(report) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in report.outcomes:
        counts[_shown(outcome.status)] = counts.get(_shown(outcome.status), 0) + 1
    return {s: counts.get(s, 0) for s in ("cached", "built", "failed", "skipped", "not built")
            if s in counts or s in ("cached", "built")}


def _outcome_json(outcome) -> dict:
    return {"solution": outcome.solution, "status": _shown(outcome.status), "key": outcome.key or None,
            "build_dir": str(outcome.build_dir) if outcome.build_dir else None,
            "seconds": round(outcome.seconds, 3), "reason": outcome.error or None}


def make_reporter(stream, quiet: bool = False):
    """A rich progress display on a terminal, plain lines otherwise, nothing when ``quiet``."""
    if quiet:
        return _QuietReporter()
    if stream.isatty():
        return _RichReporter()
    return _PlainReporter(stream)


class _QuietReporter:
    """Prints nothing (``--json``: the document is the output)."""

    def skipped(self, solution, reason):
        pass

    def starting(self, total, stale):
        pass

    def progress(self, done, total, current):
        pass

    def finished(self, outcome):
        pass

    def done(self, report):
        pass

    def close(self):
        pass


class _PlainReporter(_QuietReporter):
    """One line per solution built, failed or skipped; nothing for cached ones."""

    def __init__(self, stream):
        self.stream = stream
        self.settled = 0
        self.stale = 0

    def skipped(self, solution, reason):
        print(f"skipped {solution}: {reason}", file=self.stream, flush=True)

    def starting(self, total, stale):
        self.stale = stale

    def finished(self, outcome):
        if outcome.status == "cached":
            return
        self.settled += 1
        detail = f" ({outcome.seconds:.1f} s)" if outcome.status == "built" else \
            ": " + outcome.error.splitlines()[0].removeprefix(f"{outcome.solution}: ") if outcome.error else ""
        print(f"[{self.settled}/{self.stale}] {_shown(outcome.status)} {outcome.solution}{detail}",
              file=self.stream, flush=True)


class _RichReporter(_QuietReporter):
    """n/N solutions settled, the current ninja edge and the failure count, live."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console()
        self.bar = Progress(TextColumn("build"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("[red]{task.fields[failures]} failed"), TimeElapsedColumn(),
                            TextColumn("{task.fields[current]}", markup=False), console=self.console, transient=True)
        self.task = None
        self.failures = 0

    def skipped(self, solution, reason):
        self.console.print(styled("skipped", "yellow", f" {solution}: {reason}"))

    def starting(self, total, stale):
        if stale:
            self.bar.start()
            self.task = self.bar.add_task("build", total=stale, failures=0, current="")

    def progress(self, done, total, current):
        if self.task is not None:
            self.bar.update(self.task, current=f"[{done}/{total}] {current}"[:100])

    def finished(self, outcome):
        if outcome.status == "cached" or self.task is None:
            return
        if outcome.status in ("failed", "skipped"):
            self.failures += 1
        style = {"built": "green", "failed": "red", "skipped": "red"}.get(outcome.status, "yellow")
        detail = f" ({outcome.seconds:.1f} s)" if outcome.status == "built" else \
            f": {outcome.error.splitlines()[0]}" if outcome.status == "unavailable" and outcome.error else ""
        self.bar.console.print(styled(_shown(outcome.status), style, f" {outcome.solution}{detail}"))
        self.bar.update(self.task, advance=1, failures=self.failures)

    def close(self):
        if self.task is not None:
            self.bar.stop()


# -- info --------------------------------------------------------------------------------
def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("solution", nargs="?", metavar="SOLUTION",
                        help="definition/solution, or a unique solution name")
    parser.add_argument("--env", action="store_true", help="print the table of environment variables")


def run_info(args, settings) -> int:
    if args.env:
        if args.json:
            print_json({"ok": True, "variables": [{"name": k.env, "default": k.default, "meaning": k.meaning,
                                                   "value": os.environ.get(k.env)} for k in KNOBS]})
        else:
            print(env_table_markdown())
        return 0

    if not args.solution:
        raise FibuildError("name a solution (or pass --env)")
    workspace = Workspace.discover(settings)
    sol = workspace.solution(args.solution)
    defn = workspace.definition(sol.definition)
    inputs = keys.key_inputs(defn, sol, settings)
    key = keys.key_of(inputs)
    directory = store.build_dir(settings.cache_dir, key, sol.qualified_name)
    meta = store.read_meta(directory, key)
    failed = None if meta else store.read_failed(directory)
    reason = get_builder(sol.language).unavailable_reason(settings)
    status = "committed" if meta else "failed" if failed else f"unavailable: {reason}" if reason else "not built"
    record = meta or failed or {}
    info = {
        "ok": True, "solution": sol.qualified_name, "language": sol.language, "key": key,
        "digest": keys.digest_of(inputs),
        "build_dir": str(directory), "status": status,
        "built_at": record.get("built_at") or record.get("failed_at"),
        "build_seconds": record.get("build_seconds"),
        "log": str(directory / store.LOG) if (directory / store.LOG).exists() else None,
        "error": failed.get("error") if failed else None,
        "libraries": {rel: str(path) for rel, path in sol.library_files} or None,
        "key_inputs": inputs,
    }
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    for field in ("solution", "language", "key", "digest", "build_dir", "status", "built_at",
                  "build_seconds", "log", "error"):
        if info[field] is not None:
            print(f"{field:<14}{info[field]}")
    for rel, path in (info["libraries"] or {}).items():
        print(f"{'library file':<14}{rel} <- {path}")
    print("key inputs:")
    for name, value in _flatten(inputs):
        print(f"  {name:<28}{value}")
    return 0


def _flatten(inputs) -> list[tuple[str, str]]:
    """Key inputs as ``(name, text)`` rows; big manifest parts are shown by their hash."""
    rows = []
    for name in sorted(inputs):
        value = inputs[name]
        if name in ("definition", "solution"):
            rows.append((name, f"sha256 {sha256_hex(canonical_json(value))[:16]}…"))
        elif name == "sources":
            rows += [(f"source {path}", f"sha256 {digest}") for path, digest in value]
        elif isinstance(value, dict) and value:
            for sub in sorted(value):
                text = value[sub]
                rows.append((f"{name}.{sub}", " ".join(map(str, text)) if isinstance(text, list) else
                             json.dumps(text) if isinstance(text, dict) else str(text)))
        else:
            rows.append((name, json.dumps(value) if isinstance(value, (dict, list)) else str(value)))
    return rows


# -- gc ----------------------------------------------------------------------------------
def add_gc_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--all", action="store_true", help="remove every build not in use (locked)")
    group.add_argument("--older-than", type=float, metavar="DAYS",
                       help="remove builds made more than DAYS days ago")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed")


def run_gc(args, settings) -> int:
    """Without options, removes failed and unfinished build directories (and interrupted table
    writes) only; `--all` and `--older-than` take cached apply tables too."""
    if args.older_than is not None and args.older_than < 0:
        raise FibuildError(f"--older-than {args.older_than}: expected a number of days >= 0")
    cutoff = None if args.older_than is None else time.time() - args.older_than * 86400
    result = prune(settings.cache_dir, everything=args.all, older_than=cutoff, dry_run=args.dry_run)
    tables, table_bytes, tables_kept = prune_tables(settings, everything=args.all, older_than=cutoff,
                                                    dry_run=args.dry_run)
    if args.json:
        print_json({"ok": True, "dry_run": args.dry_run, "removed": [str(p) for p in result.removed],
                    "bytes": result.bytes, "kept": result.kept, "in_use": [str(p) for p in result.locked],
                    "tables_removed": [str(p) for p in tables], "tables_bytes": table_bytes,
                    "tables_kept": tables_kept})
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for path in [*result.removed, *tables]:
        print(f"{verb} {path}")
    print(f"gc: {verb} {len(result.removed)} build dirs ({result.bytes / 1e6:.1f} MB), "
          f"kept {result.kept}, skipped {len(result.locked)} in use; "
          f"{verb} {len(tables)} cached apply tables ({table_bytes / 1e3:.1f} kB), kept {tables_kept}")
    return 0

"""``fibuild build``, ``fibuild info`` and ``fibuild gc``: the build cache from the shell.

Only argparse and the standard library are imported at module level; the build
machinery is imported inside the ``run_*`` functions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


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
    from fibuild.compile.cache import BuildCache
    from fibuild.errors import FibuildError
    from fibuild.spec.workspace import Workspace

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
    else:
        solutions = [workspace.solution(name) for name in args.solutions]
    pairs = [(workspace.definition(s.definition), s) for s in solutions]
    keep_going = args.all if args.keep_going is None else args.keep_going
    reporter = make_reporter(sys.stdout)
    try:
        report = BuildCache(settings).build_many(pairs, jobs=args.jobs, keep_going=keep_going,
                                                 retry_failed=args.retry_failed, reporter=reporter)
    finally:
        reporter.close()
    failed = report.having("failed") + report.having("skipped")
    for outcome in failed:
        print(f"error: {outcome.error}", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


def make_reporter(stream):
    """A rich progress display on a terminal, plain lines otherwise."""
    if stream.isatty():
        return _RichReporter()
    return _PlainReporter(stream)


class _PlainReporter:
    """One line per solution built, failed or unavailable; nothing for cached ones."""

    def __init__(self, stream):
        self.stream = stream
        self.settled = 0
        self.stale = 0

    def starting(self, total, stale):
        self.stale = stale

    def progress(self, done, total, current):
        pass

    def finished(self, outcome):
        if outcome.status == "cached":
            return
        self.settled += 1
        detail = f" ({outcome.seconds:.1f} s)" if outcome.status == "built" else \
            ": " + outcome.error.splitlines()[0].removeprefix(f"{outcome.solution}: ") if outcome.error else ""
        print(f"[{self.settled}/{self.stale}] {outcome.status} {outcome.solution}{detail}",
              file=self.stream, flush=True)

    def done(self, report):
        pass

    def close(self):
        pass


class _RichReporter:
    """n/N solutions settled, the current ninja edge and the failure count, live."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=False)
        self.bar = Progress(TextColumn("build"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("[red]{task.fields[failures]} failed"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[current]}"), console=self.console, transient=True)
        self.task = None
        self.failures = 0

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
        self.bar.console.print(f"[{style}]{outcome.status}[/] {outcome.solution}"
                                    + (f" ({outcome.seconds:.1f} s)" if outcome.status == "built" else ""))
        self.bar.update(self.task, advance=1, failures=self.failures)

    def done(self, report):
        pass

    def close(self):
        if self.task is not None:
            self.bar.stop()


# -- info --------------------------------------------------------------------------------
def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("solution", nargs="?", metavar="SOLUTION",
                        help="definition/solution, or a unique solution name")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--env", action="store_true", help="print the table of environment variables")


def run_info(args, settings) -> int:
    if args.env:
        from fibuild.config import env_table_markdown

        print(env_table_markdown())
        return 0
    from fibuild.compile import keys, store
    from fibuild.compile.builders import get_builder
    from fibuild.errors import FibuildError
    from fibuild.spec.workspace import Workspace

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
        "solution": sol.qualified_name, "language": sol.language, "key": key, "digest": keys.digest_of(inputs),
        "build_dir": str(directory), "status": status,
        "built_at": record.get("built_at") or record.get("failed_at"),
        "build_seconds": record.get("build_seconds"),
        "log": str(directory / store.LOG) if (directory / store.LOG).exists() else None,
        "error": failed.get("error") if failed else None,
        "key_inputs": inputs,
    }
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    for field in ("solution", "language", "key", "digest", "build_dir", "status", "built_at",
                  "build_seconds", "log", "error"):
        if info[field] is not None:
            print(f"{field:<14}{info[field]}")
    print("key inputs:")
    for name, value in _flatten(inputs):
        print(f"  {name:<28}{value}")
    return 0


def _flatten(inputs) -> list[tuple[str, str]]:
    """Key inputs as ``(name, text)`` rows; big manifest parts are shown by their hash."""
    from fibuild.compile.keys import canonical_json, sha256_hex

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
    """Without options, removes failed and unfinished build directories only."""
    from fibuild.compile.prune import prune
    from fibuild.errors import FibuildError

    if args.older_than is not None and args.older_than < 0:
        raise FibuildError(f"--older-than {args.older_than}: expected a number of days >= 0")
    cutoff = None if args.older_than is None else time.time() - args.older_than * 86400
    result = prune(settings.cache_dir, everything=args.all, older_than=cutoff, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in result.removed:
        print(f"{verb} {path}")
    print(f"gc: {verb} {len(result.removed)} build dirs ({result.bytes / 1e6:.1f} MB), "
          f"kept {result.kept}, skipped {len(result.locked)} in use")
    return 0

"""The report ``fibuild bench`` prints after a run, local or on a farm: the evaluations
(``--json``: one document; else a table per device) and the exit code.

rich is imported when a table is printed (the one deferred import).
"""
from __future__ import annotations

import sys

from fibuild.bench.compare import NOISY_SPREAD, noisy, relative_spread
from fibuild.bench.leaderboard import summary_rows
from fibuild.cli.common import print_json
from fibuild.registry import evaluation_to_dict

# Heavy or optional dependencies, imported inside the functions that use them: rich.


#: Exit status of a bench that ran nothing (every solution skipped, every item already
#: recorded under --resume), as pytest exits 5 when it collected no test.
NOTHING_RAN = 5


def report_evaluations(args, out, err, evaluations, registry_dir) -> int:
    """Print the evaluations (``--json``: one document; else a table per device) and the
    count of those not PASSED. Returns the exit code: 1 when any is not PASSED, unless
    ``--allow-failures``; NOTHING_RAN when there was nothing to run."""
    if not evaluations:
        if args.json:
            print_json({"ok": False, "ran": 0, "registry": str(registry_dir), "evaluations": []})
        print(f"error: nothing ran (exit {NOTHING_RAN}): every solution was skipped (see above), or "
              "--resume found every item recorded", file=sys.stderr)
        return NOTHING_RAN
    failing = [ev for ev in evaluations if ev.status != "PASSED"]
    ok = not failing or args.allow_failures
    wide = noisy_measurements(evaluations)
    if args.json:
        print_json({"ok": ok, "ran": len(evaluations), "devices": sorted({ev.device for ev in evaluations}),
                    "registry": str(registry_dir), "summary": summary_rows(evaluations),
                    "noisy": [{"definition": ev.definition, "solution": ev.solution,
                               "workload": ev.workload_uuid, "spread": round(spread, 3)} for ev, spread in wide],
                    "evaluations": [{k: v for k, v in evaluation_to_dict(ev).items() if k != "environment"}
                                    for ev in evaluations]})
    else:
        print_summary(out, err, evaluations, registry_dir)
    if wide:
        print(f"warning: {len(wide)} of {len(evaluations)} measurements are noisy (interquartile range over "
              f"{NOISY_SPREAD:.0%} of the median; `!` in `fibuild table`): resolution reads their comparisons as "
              "AMBIGUOUS and keeps the baseline; re-measure them on a quieter machine, or with "
              "`fibuild bench --ambiguous`", file=sys.stderr)
    if failing:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(_status_counts(failing).items()))
        verdict = "allowed by --allow-failures" if args.allow_failures else "exit 1; --allow-failures accepts them"
        print(f"{'warning' if args.allow_failures else 'error'}: {len(failing)} of {len(evaluations)} "
              f"evaluations not PASSED ({counts}); {verdict}", file=sys.stderr)
    return 0 if ok else 1


def noisy_measurements(evaluations) -> list[tuple]:
    """``(evaluation, spread)`` of the PASSED evaluations whose latency or host time is noisy
    (:func:`fibuild.bench.compare.noisy`)."""
    found = []
    for ev in evaluations:
        if ev.status != "PASSED":
            continue
        stats = [s for s in (ev.latency, ev.host_latency) if s is not None]
        if any(noisy(s) for s in stats):
            found.append((ev, max(relative_spread(s) for s in stats)))
    return found


def _status_counts(evaluations) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ev in evaluations:
        counts[ev.status] = counts.get(ev.status, 0) + 1
    return counts


def print_summary(out, err, evaluations, registry_dir) -> None:
    """One table per device slug: passed / failed counts and speedup per solution."""
    from rich.table import Table

    for device in sorted({ev.device for ev in evaluations}):
        mine = [ev for ev in evaluations if ev.device == device]
        table = Table(title=f"{len(mine)} evaluation(s) on {device}", title_justify="left")
        for column in ("solution", "passed", "failed", "speedup vs ref", "first failure"):
            table.add_column(column, justify="right" if column in ("passed", "failed", "speedup vs ref") else "left")
        for row in summary_rows(mine):
            passed = row["counts"].get("PASSED", 0)
            failed = ", ".join(f"{s} {n}" for s, n in sorted(row["counts"].items()) if s != "PASSED") or "0"
            speedup = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
            first = row["error"].splitlines()[0] if row["error"] else ""  # whole: the table folds it
            table.add_row(f"{row['definition']}/{row['solution']}", str(passed), failed, speedup, first)
        out.print(table)
    out.print(f"records appended under {registry_dir}")

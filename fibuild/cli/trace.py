"""``fibuild trace report``: what tracing saw, from ``registry/_trace/calls.jsonl`` and the
traced workloads: per definition its keys and call counts, the workloads stored, the
calls that could not be mapped, by reason, and what each patched API's calls did
(``registry/_trace/stats.jsonl``: substituted, original, fallbacks by reason)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fibuild.cli import common_options
from fibuild.integrations.counters import format_stats, read_stats
from fibuild.integrations.tracing import read_calls
from fibuild.spec.workspace import Workspace


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="trace_command", metavar="ACTION")
    sub.required = True

    # --root and --json are accepted after ``report`` too, like after any command.
    sub.add_parser("report", help="list traced definitions, keys, counts and unmapped calls",
                   parents=[common_options(after_command=True)])


def trace_report(registry_dir) -> dict:
    """The report as data: ``definitions`` (name -> keys with calls, workloads stored),
    ``unmapped`` ((op, reason) rows with calls) and ``stats`` (per patched API, summed over
    the processes that kept theirs: see ``fibuild.integrations.stats()``)."""
    definitions: dict[str, dict] = {}
    unmapped: dict[tuple[str, str], int] = {}
    for line in read_calls(registry_dir):
        if line.get("definition"):
            entry = definitions.setdefault(line["definition"], {"op": line.get("op"), "keys": {}, "workloads": 0})
            key = json.dumps(line.get("axes") or {}, sort_keys=True)
            entry["keys"][key] = entry["keys"].get(key, 0) + line["calls"]
        else:
            row = (str(line.get("op")), str(line.get("reason")))
            unmapped[row] = unmapped.get(row, 0) + line["calls"]
    for name, entry in definitions.items():
        path = Path(registry_dir) / name / "workloads.jsonl"
        if path.is_file():
            entry["workloads"] = sum(1 for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
                                     if ln.strip())
    return {"definitions": {n: {**e, "keys": [{"axes": json.loads(k), "calls": c} for k, c in e["keys"].items()]}
                            for n, e in sorted(definitions.items())},
            "unmapped": [{"op": op, "reason": why, "calls": n} for (op, why), n in sorted(unmapped.items())],
            "stats": read_stats(registry_dir)}


def run_trace(args, settings) -> int:
    ws = Workspace.discover(settings)
    report = trace_report(ws.registry_dir)
    if args.json:
        print(json.dumps({"ok": True, "registry": str(ws.registry_dir), **report}, indent=2, sort_keys=True))
        return 0
    if not report["definitions"] and not report["unmapped"] and not report["stats"]:
        print(f"nothing traced in {ws.registry_dir} (run with FIBUILD_TRACE=1 or fibuild run --trace)")
        return 0
    for name, entry in report["definitions"].items():
        total = sum(k["calls"] for k in entry["keys"])
        print(f"{name}  ({entry['op']}): {total} calls, {len(entry['keys'])} keys, "
              f"{entry['workloads']} workloads stored")
        for key in sorted(entry["keys"], key=lambda k: -k["calls"]):
            axes = ", ".join(f"{a}={v}" for a, v in key["axes"].items())
            print(f"    {key['calls']:>10}  {axes}")
    if report["unmapped"]:
        print("not mapped (the original ran):")
        for row in report["unmapped"]:
            print(f"    {row['calls']:>10}  {row['op']}: {row['reason']}")
    if report["stats"]:
        print(format_stats(report["stats"]).removeprefix("fibuild: "))
    return 0

"""``fibuild import`` and ``fibuild export``: the flashinfer-trace dataset and FlashInfer dumps.

``fibuild import flashinfer-trace DIR [NAME...] [--op-type T]`` (or ``--definitions NAME...``)
``fibuild import flashinfer-dump DIR``
``fibuild export flashinfer-trace DIR [DEF...]``

Progress goes to stderr, one line per item; the report (counts, every skipped item with
its reason, fields not carried over) to stdout. Exit 0 when the command ran, skipped
items included; 1 for unreadable input (the file and line are named).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from fibuild.cli.common import print_json
from fibuild.dataset.dump_import import import_flashinfer_dump
from fibuild.dataset.trace_export import export_flashinfer_trace
from fibuild.dataset.trace_import import import_flashinfer_trace
from fibuild.errors import FibuildError
from fibuild.spec.workspace import Workspace


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=("flashinfer-trace", "flashinfer-dump"),
                        help="flashinfer-trace: a dataset directory (definitions/, solutions/, workloads/, "
                             "blob/, traces/); flashinfer-dump: a FLASHINFER_DUMP_DIR written at "
                             "FLASHINFER_LOGLEVEL=10 with FLASHINFER_DUMP_SAFETENSORS=1")
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="flashinfer-trace only: import these definitions (and their solutions, workloads, "
                             "traces); default: all")
    parser.add_argument("--definitions", nargs="+", default=[], metavar="NAME",
                        help="the same as NAME... after DIR; written before DIR, end the list with -- "
                             "(fibuild import flashinfer-trace --definitions a b -- DIR)")
    parser.add_argument("--op-type", metavar="T", help="flashinfer-trace only: import definitions of this op type")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=("flashinfer-trace",), help="the dataset layout to write")
    parser.add_argument("directory", metavar="DIR", help="written into (created if missing)")
    parser.add_argument("definitions", nargs="*", metavar="DEF", help="definitions to export (default: all)")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print(report, as_json: bool = False) -> None:
    if as_json:
        print_json({"ok": True, "written": dict(report.written), "unchanged": dict(report.unchanged),
                    "skipped": [asdict(s) for s in report.skipped],
                    "dependents": [{"kind": kind, "definition": name, "count": n}
                                   for (kind, name), n in sorted(report.dependents.items())],
                    "notes": list(report.notes)})
        return
    for line in report.lines():
        print(line)


def run_import(args: argparse.Namespace, settings) -> int:
    workspace = Workspace.discover(settings)
    workspace.ensure_writable()  # the user workspace is made here when it is the one in use
    definitions = [*args.names, *args.definitions]
    if args.source == "flashinfer-dump":
        if definitions or args.op_type:
            raise FibuildError("definition names and --op-type apply to flashinfer-trace imports only")

        report = import_flashinfer_dump(workspace, args.directory, progress=_progress)
    else:
        report = import_flashinfer_trace(workspace, args.directory, definitions=definitions,
                                         op_type=args.op_type, progress=_progress)
    _print(report, args.json)
    return 0


def run_export(args: argparse.Namespace, settings) -> int:
    workspace = Workspace.discover(settings)
    _print(export_flashinfer_trace(workspace, args.directory, args.definitions, progress=_progress), args.json)
    return 0

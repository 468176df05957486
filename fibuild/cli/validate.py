"""``fibuild validate [PATH...] [--json]``: check manifests, print every problem.

Exit 0 when every checked file is valid, 1 otherwise (an empty workspace included). Lines
read ``file: /pointer: message`` (paths relative to the current directory when under it);
``--json`` prints ``{"ok", "errors": [{"file", "pointer", "message"}], "checked", "root"}``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fibuild.spec.workspace import Workspace


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="definition .yaml, solution.yaml or workloads.jsonl files, or folders "
                             "holding them (default: the whole workspace)")


def run_validate(args: argparse.Namespace, settings) -> int:
    workspace = Workspace.discover(settings)
    paths = args.paths or None
    files = workspace.manifest_files(paths)
    workspace.require_manifests(files, paths)
    errors = workspace.validate(files if paths else None)
    rows = [{"file": _shown(e.path), "pointer": pointer or "/", "message": message}
            for e in errors for pointer, message in e.problems]
    if args.json:
        print(json.dumps({"ok": not rows, "errors": rows, "checked": len(files), "root": str(workspace.root)},
                         indent=2))
    else:
        for row in rows:
            print(f"{row['file']}: {row['pointer']}: {row['message']}")
        if rows:
            print(f"{len(rows)} error{'s' if len(rows) != 1 else ''} in {len(errors)} "
                  f"file{'s' if len(errors) != 1 else ''}")
        else:
            print(f"{len(files)} manifest{'s' if len(files) != 1 else ''} OK")
    return 1 if rows else 0


def _shown(path: str) -> str:
    """``path`` relative to the current directory when it lies under it."""
    try:
        return os.fspath(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path

"""``fibuild init DIR``: create an empty workspace to write definitions and solutions in."""
from __future__ import annotations

import argparse

from fibuild.cli.common import print_json
from fibuild.errors import FibuildError
from fibuild.spec.workspace import init_workspace


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", metavar="DIR",
                        help="folder to create the workspace in, created if missing (default: --root)")


def run_init(args: argparse.Namespace, settings) -> int:
    directory = args.directory or args.root
    if not directory:
        raise FibuildError("name the folder: fibuild init DIR")
    created = init_workspace(directory)
    root = created[0].parent
    if args.json:
        print_json({"ok": True, "root": str(root), "created": [str(p) for p in created]})
        return 0
    for path in created:
        print(f"created {path}{'/' if path.is_dir() else ''}")
    print(f"workspace {root}: add defs/<op_type>/<name>.yaml, then run `fibuild --root {root} validate`")
    return 0

"""``fibuild init [DIR]``: create an empty workspace to write definitions and solutions in.

Without DIR: ``--root``, else the current folder. ``--user`` makes the user workspace
(``$XDG_DATA_HOME/fibuild``), which commands use over the shipped library when no other
workspace is found.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fibuild.cli.common import print_json
from fibuild.errors import FibuildError
from fibuild.spec.workspace import init_workspace


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", metavar="DIR",
                        help="folder to create the workspace in, created if missing (default: --root, else "
                             "the current folder)")
    parser.add_argument("--user", action="store_true",
                        help="make the user workspace ($XDG_DATA_HOME/fibuild, default ~/.local/share/fibuild): "
                             "where results go when no workspace is found; it reads the shipped library too")


def run_init(args: argparse.Namespace, settings) -> int:
    if args.user and (args.directory or args.root):
        raise FibuildError("fibuild init --user makes the user workspace; give no folder with it")
    directory = settings.user_root if args.user else Path(args.directory or args.root or Path.cwd())
    created = init_workspace(directory)
    root = created[0].parent
    if args.json:
        print_json({"ok": True, "root": str(root), "created": [str(p) for p in created]})
        return 0
    for path in created:
        print(f"created {path}{'/' if path.is_dir() else ''}")
    if args.user:
        print(f"user workspace {root}: used when no other workspace is found, over the shipped library")
    else:
        print(f"workspace {root}: add defs/<op_type>/<name>.yaml, then run `fibuild --root {root} validate`")
    return 0

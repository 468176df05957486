"""The ``fibuild`` command: subcommands live one per module in this package.

Each module ``fibuild.cli.<name>`` defines ``add_arguments(parser)`` and
``run(args, settings) -> int``; modules are imported only when their subcommand runs.
User errors (FibuildError) print without a traceback and exit 1.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "validate": ("validate", "Validate manifests (all, or the given files)."),
    "build": ("build", "Build solutions into the content-addressed cache."),
    "info": ("build", "Show a solution's build key, key inputs and build status."),
    "gc": ("build", "Remove build directories from the cache."),
    "bench": ("bench", "Check and time solutions; append evaluations to registry/."),
    "table": ("bench", "Leaderboard of a definition's evaluations."),
    "resolve": ("resolve", "Pick the solution for a set of axis values."),
    "import": ("dataset", "Import a flashinfer-trace dataset or FlashInfer API dumps."),
    "export": ("dataset", "Export definitions, solutions, workloads and evaluations as flashinfer-trace."),
    "run": ("run", "Run a command with tracing and/or substitution of FlashInfer calls on."),
    "trace": ("trace", "Report what tracing recorded (fibuild trace report)."),
}


def _chosen_command(argv: list[str]) -> str | None:
    """The subcommand named in argv (skipping the global ``--root VALUE``), if any."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token == "--root":
            skip = True
        elif not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    """The argument parser; only the chosen subcommand's module is imported."""
    from fibuild import __version__

    parser = argparse.ArgumentParser(prog="fibuild", description="Build, benchmark and dispatch GPU kernels.")
    parser.add_argument("--version", action="version", version=f"fibuild {__version__}")
    parser.add_argument("--root", help="workspace root (default: FIBUILD_ROOT, else the nearest "
                        "ancestor holding defs/, else the shipped workspace)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = importlib.import_module(f"fibuild.cli.{module}")
            getattr(mod, f"add_{name}_arguments")(p)
        p.set_defaults(_module=module, _run=f"run_{name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    from fibuild.config import Settings
    from fibuild.errors import FibuildError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(_chosen_command(argv)).parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.root:
            from pathlib import Path

            settings = Settings.from_env(root=Path(args.root).expanduser().resolve())
        logging.basicConfig(level=getattr(logging, settings.log_level, logging.WARNING),
                            format="%(levelname)s %(name)s: %(message)s")
        mod = importlib.import_module(f"fibuild.cli.{args._module}")
        return int(getattr(mod, args._run)(args, settings) or 0)
    except FibuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

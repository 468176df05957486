"""The ``fibuild`` command: subcommands live in the modules of this package.

Each module ``fibuild.cli.<module>`` defines ``add_<command>_arguments(parser)`` and
``run_<command>(args, settings) -> int``; a module is imported only when its subcommand
runs. ``--root`` and ``--json`` are accepted before or after the subcommand. User errors
(FibuildError) print without a traceback and exit 1 (with ``--json``, ``{"ok": false,
"error": ...}`` on stdout too); a closed stdout (``| head -1``) exits 141 quietly. Every JSON
success document carries ``"ok": true``. ``bench`` exits 5 when it ran nothing; ``run`` exits
with its command's status.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from fibuild import __version__
from fibuild.cli.common import print_json
from fibuild.config import Settings
from fibuild.errors import FibuildError

COMMANDS = {
    "init": ("init", "Create an empty workspace (defs/, solutions/, registry/)."),
    "validate": ("validate", "Validate manifests (all, or the given files)."),
    "build": ("build", "Build solutions into the content-addressed cache."),
    "info": ("build", "Show a solution's build key, key inputs and build status."),
    "gc": ("build", "Remove build directories from the cache."),
    "bench": ("bench", "Check and time solutions; append evaluations to registry/."),
    "table": ("bench", "Leaderboard of a definition's evaluations."),
    "resolve": ("resolve", "Pick the solution for a set of axis values."),
    "chain": ("chain", "Time a chain's definitions in sequence; record each slot's choice."),
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


def common_options(after_command: bool = False) -> argparse.ArgumentParser:
    """``--root`` and ``--json``. After the subcommand their defaults are SUPPRESS, so a
    value given before it is not overwritten."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS if after_command else None,
                        help="workspace root (default: FIBUILD_ROOT, else the nearest ancestor holding "
                             "defs/, else the shipped library)")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS if after_command else False,
                        help="print one JSON document on stdout instead of text")
    return parser


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    """The argument parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="fibuild", description="Build, benchmark and dispatch GPU kernels.",
                                     parents=[common_options()])
    parser.add_argument("--version", action="version", version=f"fibuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    after = common_options(after_command=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[after])
        if name == chosen:
            mod = importlib.import_module(f"fibuild.cli.{module}")
            getattr(mod, f"add_{name}_arguments")(p)
        p.set_defaults(_module=module, _run=f"run_{name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(_chosen_command(argv)).parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.root:
            settings = Settings.from_env(root=Path(args.root).expanduser().resolve())
        logging.basicConfig(level=getattr(logging, settings.log_level, logging.WARNING),
                            format="%(levelname)s %(name)s: %(message)s")
        mod = importlib.import_module(f"fibuild.cli.{args._module}")
        code = int(getattr(mod, args._run)(args, settings) or 0)
        sys.stdout.flush()  # a closed pipe raises here, inside the handler, not at exit
        return code
    except FibuildError as exc:
        if args.json:
            print_json({"ok": False, "error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _discard_stdout()
        return 141  # as a program killed by SIGPIPE: the reader stopped, nothing is wrong here
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a file (tests capture it): nothing will flush at exit

"""``fibuild run [--trace] [--apply] -- CMD ...``: run a command with the serving integration on.

The command's Python processes enable the integration from ``FIBUILD_TRACE`` /
``FIBUILD_APPLY`` / ``FIBUILD_ROOT`` (set here) through the ``fibuild_integrations.pth`` hook
installed with fibuild. When this interpreter has no such hook (fibuild run from a plain
checkout), a ``sitecustomize`` shim on ``PYTHONPATH`` does the same and then runs any
``sitecustomize`` it shadows. The exit status is the command's.
"""
from __future__ import annotations

import argparse
import os
import site
import subprocess
import sys
import tempfile
from pathlib import Path

from fibuild.errors import ConfigError
from fibuild.spec.workspace import Workspace

PTH_NAME = "fibuild_integrations.pth"

_SHIM = '''"""Written by fibuild run: enable the serving integration, then run the shadowed sitecustomize."""
import importlib.machinery, importlib.util, os, sys

_here = os.path.dirname(os.path.abspath(__file__))
try:
    from fibuild.integrations.activation import start_from_env
    start_from_env()
finally:
    _path = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _path)
    if _spec is not None and _spec.loader is not None:
        _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
'''


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", action="store_true", help="record the command's calls as workloads")
    parser.add_argument("--apply", action="store_true", help="substitute the fastest correct solutions")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to run")


def hook_installed() -> bool:
    """Whether this interpreter's site-packages hold fibuild's ``.pth`` hook."""
    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    return any((Path(d) / PTH_NAME).is_file() for d in dirs)


def run_run(args, settings) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ConfigError("fibuild run: give the command after --, e.g. fibuild run --trace -- python serve.py")
    if not args.trace and not args.apply:
        raise ConfigError("fibuild run: give --trace and/or --apply")
    root = Workspace.discover(settings).root
    env = dict(os.environ, FIBUILD_TRACE="1" if args.trace else "0", FIBUILD_APPLY="1" if args.apply else "0",
               FIBUILD_ROOT=str(root))
    with tempfile.TemporaryDirectory(prefix="fibuild-run-") as shim_dir:
        if not hook_installed():
            Path(shim_dir, "sitecustomize.py").write_text(_SHIM, encoding="utf-8")
            package_dir = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(
                [shim_dir, package_dir] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        what = "+".join(w for w, on in (("trace", args.trace), ("apply", args.apply)) if on)
        print(f"fibuild run: {what} on workspace {root}: {' '.join(cmd)}", file=sys.stderr)
        try:
            return subprocess.call(cmd, env=env)
        except OSError as exc:
            raise ConfigError(f"fibuild run: cannot run {cmd[0]!r}: {exc}") from None

"""``fibuild run [--trace] [--apply] -- CMD ...``: run a command with the serving integration on.

The command's Python processes enable the integration from ``FIBUILD_TRACE`` /
``FIBUILD_APPLY`` / ``FIBUILD_ROOT`` (set here) through the ``fibuild_integrations.pth`` hook
installed with fibuild. When this interpreter has no such hook (fibuild run from a plain
checkout), a ``sitecustomize`` shim on ``PYTHONPATH`` does the same and then runs any
``sitecustomize`` it shadows.

It behaves as a launcher (a shell's ``exec``, ``uv run``): SIGTERM, SIGHUP and a SIGINT sent
to fibuild are passed to the command, which is left to finish its own shutdown (never killed;
on Linux it gets SIGTERM should fibuild itself be killed); a Ctrl-C typed in the terminal reaches the command
directly and is not sent twice. The exit status is the command's, 128 + N when signal N
ended it (137 for SIGKILL), as a shell reports it.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import site
import subprocess
import sys
import tempfile
from pathlib import Path

from fibuild.cli.common import print_json
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
    if settings.root is not None and not settings.root.is_dir():
        raise ConfigError(f"fibuild run: workspace {settings.root} does not exist (--root or FIBUILD_ROOT); "
                          f"create it with `fibuild init {settings.root}`")
    workspace = Workspace.discover(settings)
    if args.trace:
        workspace.ensure_writable()  # traced workloads are written there: check before the command runs
    root = workspace.root
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
        returncode, forwarded = launch(cmd, env)
    if args.json:
        died_by = 128 < returncode < 128 + signal.NSIG
        print_json({"ok": returncode == 0, "command": cmd, "returncode": returncode,
                    "signal": signal.Signals(returncode - 128).name if died_by else None,
                    "forwarded": [signal.Signals(s).name for s in forwarded],
                    "root": str(root), "trace": bool(args.trace), "apply": bool(args.apply)})
    return returncode


#: Signals passed on to the command when they are sent to fibuild run.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def launch(cmd: list[str], env: dict[str, str]) -> tuple[int, list[int]]:
    """Run ``cmd`` to its end, forwarding FORWARDED signals; ``(exit status, forwarded)``.

    The status is the command's, or 128 + N when signal N ended it. Signals are blocked
    in this thread once the child runs and read with ``sigwaitinfo``, which names the
    sender: one from the terminal (sender pid 0: the keyboard's SIGINT, which the child's
    process group received too) or from the child itself is not sent again. Raises
    ConfigError when ``cmd`` cannot be started. Linux and macOS (POSIX signals).
    """
    waited = set(FORWARDED) | {signal.SIGCHLD}
    pending: list[int] = []
    # Until the child exists and the mask is set, a signal is kept and forwarded after.
    previous = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in FORWARDED}
    forwarded: list[int] = []
    try:
        try:
            proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise ConfigError(f"fibuild run: cannot run {cmd[0]!r}: {exc}") from None
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        try:
            for signum in pending:
                _forward(proc, signum, forwarded)
            while proc.poll() is None:
                info = signal.sigtimedwait(waited, 1.0)
                if info is None or info.si_signo == signal.SIGCHLD:
                    continue
                if info.si_pid not in (0, proc.pid):
                    _forward(proc, info.si_signo, forwarded)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = proc.returncode
    return (128 - code if code < 0 else code), forwarded


def _die_with_parent() -> None:
    """In the child before exec: on Linux, SIGTERM when fibuild run itself dies (even by
    SIGKILL), so the command is never left running alone. Elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _forward(proc: subprocess.Popen, signum: int, forwarded: list[int]) -> None:
    try:
        proc.send_signal(signum)
        forwarded.append(signum)
    except ProcessLookupError:
        pass  # it has just exited: its status is read next

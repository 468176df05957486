"""Child processes that die with their parent (Linux), so a killed runner leaves no orphan.

A benchmark worker blocked in a hanging kernel never reads its closed stdin; when the
process that started it is killed (SIGKILL of a farm node, a cluster shut down on Ctrl-C),
the kernel's parent-death signal ends it instead.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent thread exits; exit now if the
    parent is already gone. A no-op off Linux or where prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.environ.get("_FIBUILD_PARENT_PID")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if parent and parent.isdigit() and os.getppid() != int(parent):
        os._exit(1)  # the parent died before the signal was armed

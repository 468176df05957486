"""Triton solution checks in a fresh interpreter started with TRITON_INTERPRET=1 (Triton reads
it when it is imported and when a kernel is decorated, so the test process cannot switch)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: the folder of ``defs_support`` (workspace and loading helpers the child scripts import)
DEFS_SUPPORT = str(Path(__file__).resolve().parents[1] / "defs")


def run_interpreted(child: str, *args: str, timeout: float = 900):
    """Run the script ``child`` with ``args`` under the Triton interpreter; returns the JSON
    of its last stdout line. Fails the test, with the child's stderr, when it exits non-zero."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", child, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

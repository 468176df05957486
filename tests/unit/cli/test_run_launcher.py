"""``fibuild run`` as a launcher: signals reach the command, which finishes its own shutdown;
the exit status is the command's (128 + N for a signal); ``--json``; a missing ``--root``.

Real processes: ``python -m fibuild run --trace -- python child.py``; the child writes what it
saw to a file, so the test reads it whatever happened to the pipes.
"""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fibuild.cli import main

CHILD = """\
import os, signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def shutdown(signum, frame):
    log.write(f"got {signal.Signals(signum).name}\\n")
    time.sleep(1.0)              # a shutdown that takes a while: the launcher must wait for it
    log.write("clean exit\\n")
    sys.exit(7)
signal.signal(signal.SIGTERM, shutdown)
signal.signal(signal.SIGINT, shutdown)
log.write(f"ready {os.getpid()}\\n")
time.sleep(60)
log.write("not signalled\\n")
"""


@pytest.fixture
def launch_env(tmp_path):
    root = tmp_path / "ws"
    assert main(["init", str(root)]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIBUILD_")}
    env.update(FIBUILD_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join(sys.path))
    (tmp_path / "child.py").write_text(CHILD)
    return root, env, tmp_path


def _fibuild_run(root, *cmd: str) -> list[str]:
    return [sys.executable, "-m", "fibuild", "--root", str(root), "run", "--trace", "--", *cmd]


def _wait_for(path: Path, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}: {content!r}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _launch_child(launch_env) -> tuple[subprocess.Popen, Path, int]:
    """``fibuild run --trace -- python child.py`` started, once the child is ready:
    (fibuild's process, the child's log, the child's pid)."""
    root, env, tmp = launch_env
    log = tmp / "child.log"
    proc = subprocess.Popen(_fibuild_run(root, sys.executable, str(tmp / "child.py"), str(log)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, log, int(_wait_for(log, "ready").split()[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_sent_to_fibuild_run_is_forwarded_and_the_command_finishes_its_shutdown(launch_env, signum):
    proc, log, child_pid = _launch_child(launch_env)
    proc.send_signal(signum)                                # from another process (kill), not the terminal
    assert proc.wait(timeout=60) == 7                       # the command's own status, after its shutdown
    assert _wait_for(log, "clean exit").splitlines()[1:] == [f"got {signum.name}", "clean exit"]
    assert not _alive(child_pid)                            # not orphaned: it ended before fibuild did


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_command_is_not_left_running_when_fibuild_run_is_killed(launch_env):
    proc, log, child_pid = _launch_child(launch_env)
    proc.kill()                                                   # SIGKILL: nothing can be forwarded
    proc.wait(timeout=60)
    assert _wait_for(log, "clean exit").splitlines()[1:] == ["got SIGTERM", "clean exit"]
    deadline = time.monotonic() + 30
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)


def test_a_command_killed_by_a_signal_exits_128_plus_the_signal(launch_env):
    root, env, _ = launch_env
    for signum in (signal.SIGKILL, signal.SIGTERM):
        code = f"import os; os.kill(os.getpid(), {int(signum)})"
        proc = subprocess.run(_fibuild_run(root, sys.executable, "-c", code), env=env, capture_output=True,
                              timeout=60)
        assert proc.returncode == 128 + signum, proc.stderr


def test_json_prints_one_document_after_the_command(launch_env):
    root, env, _ = launch_env
    cmd = [sys.executable, "-m", "fibuild", "--root", str(root), "run", "--json", "--apply", "--",
           sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 137
    assert doc["ok"] is False and doc["returncode"] == 137 and doc["signal"] == "SIGKILL"
    assert doc["apply"] is True and doc["trace"] is False and doc["root"] == str(root)


def test_a_root_that_does_not_exist_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FIBUILD_ROOT", raising=False)
    missing = tmp_path / "no-such-workspace"
    assert main(["--root", str(missing), "run", "--trace", "--", "true"]) == 1
    err = capsys.readouterr().err
    assert f"workspace {missing} does not exist" in err and "fibuild init" in err
    assert not missing.exists()


def test_ctrl_c_in_a_terminal_reaches_the_command_once(launch_env):
    """A Ctrl-C typed in the terminal goes to the whole foreground process group: the command
    gets it from the terminal, and fibuild must not send it a second one."""
    root, env, tmp = launch_env
    log = tmp / "child.log"
    argv = _fibuild_run(root, sys.executable, str(tmp / "child.py"), str(log))
    pid, master = pty.fork()
    if pid == 0:  # the child: a session leader with the pty as its terminal
        os.execve(sys.executable, argv, env)
    try:
        _wait_for(log, "ready")
        os.write(master, b"\x03")                        # the terminal's interrupt character
        _wait_for(log, "clean exit")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if select.select([master], [], [], 0.1)[0]:
                try:
                    os.read(master, 4096)                # keep the terminal drained
                except OSError:
                    pass
        assert done, "fibuild run did not exit"
        assert os.waitstatus_to_exitcode(status) == 7
        assert log.read_text().splitlines()[1:] == ["got SIGINT", "clean exit"]
    finally:
        os.close(master)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

"""A small ninja file writer and runner.

Generated files use absolute paths so one file can run alone or be pulled into a top file
with ``subninja``. Every value written is one line: ninja has no escape for a newline, so
a control character in a path, flag or variable is refused (BuildError), never written — a
newline would let a flag add its own ``rule``/``build`` lines to the file. Files are
rewritten only when their text changes, so mtimes (and ninja) stay quiet.
:func:`run_ninja` streams ninja's output line by line and parses the ``FAILED:`` lines
into the outputs that failed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from fibuild.errors import BuildError

# Heavy or optional dependencies, imported inside the functions that use them: ninja.

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str, what: str = "value") -> str:
    """``text`` unchanged; BuildError if it holds a control character (newline, NUL, ...)."""
    found = _CONTROL.search(text)
    if found:
        raise BuildError(f"refusing to write {what} {text!r} into a ninja file: it holds the control "
                         f"character {found.group()!r}")
    return text


def escape_path(path: str | os.PathLike) -> str:
    """Escape a path for a ninja build line (``$``, space and ``:`` are special).

    Raises BuildError for a path holding a control character."""
    return one_line(str(path), "path").replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def shell_quote(arg: str | os.PathLike) -> str:
    """Quote one argument for the shell ninja runs commands with; ``$`` escaped for ninja.

    Raises BuildError for an argument holding a control character."""
    text = one_line(str(arg), "argument")
    if text and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", text):
        return text
    return "'" + text.replace("'", "'\\''").replace("$", "$$") + "'"


class NinjaFile:
    """Accumulates ninja statements; ``text()`` renders them."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def comment(self, text: str) -> None:
        self._lines += [f"# {one_line(line, 'comment')}" for line in text.splitlines()]

    def variable(self, name: str, value: str) -> None:
        self._lines.append(f"{name} = {one_line(value, 'variable')}")

    def pool(self, name: str, depth: int) -> None:
        self._lines += [f"pool {name}", f"  depth = {depth}"]

    def rule(self, name: str, command: str, *, description: str | None = None,
             depfile: str | None = None, deps: str | None = None, pool: str | None = None) -> None:
        self._lines += [f"rule {name}", f"  command = {one_line(command, 'command')}"]
        for key, value in (("description", description), ("depfile", depfile), ("deps", deps), ("pool", pool)):
            if value:
                self._lines.append(f"  {key} = {one_line(value, key)}")

    def build(self, outputs: Sequence[str | os.PathLike], rule: str, inputs: Sequence[str | os.PathLike] = (),
              *, implicit: Sequence[str | os.PathLike] = (), variables: dict[str, str] | None = None) -> None:
        line = f"build {' '.join(map(escape_path, outputs))}: {rule}"
        if inputs:
            line += " " + " ".join(map(escape_path, inputs))
        if implicit:
            line += " | " + " ".join(map(escape_path, implicit))
        self._lines.append(line)
        for key, value in (variables or {}).items():
            self._lines.append(f"  {key} = {one_line(value, key)}")

    def subninja(self, path: str | os.PathLike) -> None:
        self._lines.append(f"subninja {escape_path(path)}")

    def default(self, targets: Iterable[str | os.PathLike]) -> None:
        self._lines.append("default " + " ".join(map(escape_path, targets)))

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def write_if_different(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless it already holds it; True if written."""
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return True


def ninja_binary() -> str:
    """The ninja executable: the ``ninja`` wheel's binary, else ninja on PATH.

    The wheel's binary is preferred because a PATH entry may be a slow shim script.
    Raises BuildError when neither exists.
    """
    try:
        import ninja as ninja_pkg  # the PyPI wheel ships the binary next to this module

        candidate = Path(ninja_pkg.BIN_DIR) / "ninja"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("ninja")
    if not found:
        raise BuildError("unavailable: ninja is not installed (pip install ninja)")
    return found


_FAILED = re.compile(r"^FAILED: (?:\[code=\d+\] )?(.*)$")
_STATUS = re.compile(r"^\[(\d+)/(\d+)\] (.*)$")


@dataclass
class NinjaResult:
    """One ninja run: exit code, full output, failed outputs and each failure's log block."""

    returncode: int
    output: str
    seconds: float
    failed_outputs: list[str] = field(default_factory=list)
    failure_logs: dict[str, str] = field(default_factory=dict)  # first failed output -> its block

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def parse_failures(output: str) -> tuple[list[str], dict[str, str]]:
    """The outputs named on ``FAILED:`` lines and, per failed edge, the lines it printed.

    A block runs from its ``FAILED:`` line to the next status line (``[n/N] ...``),
    ``FAILED:`` line or ninja's own ``ninja:`` summary.
    """
    failed: list[str] = []
    blocks: dict[str, str] = {}
    current: list[str] | None = None
    key = ""
    for line in output.splitlines():
        match = _FAILED.match(line)
        if match or _STATUS.match(line) or line.startswith("ninja: "):
            if current is not None:
                blocks[key] = "\n".join(current)
                current = None
        if match:
            outs = match.group(1).split()
            failed += outs
            key = outs[0] if outs else ""
            current = [line]
        elif current is not None:
            current.append(line)
    if current is not None:
        blocks[key] = "\n".join(current)
    return failed, blocks


def run_ninja(ninja_file: Path, *, jobs: int, keep_going: bool = True, cwd: Path | None = None,
              on_status: Callable[[int, int, str], None] | None = None,
              env: dict[str, str] | None = None) -> NinjaResult:
    """Run ``ninja -f ninja_file -j jobs [-k 0]`` in ``cwd`` (default: the file's folder).

    ``on_status(n, total, description)`` is called for each ``[n/N]`` line as it arrives.
    Never raises for a failed build (see ``NinjaResult.ok``); raises BuildError only when
    ninja itself cannot start. Cost: the build itself; a no-op run is a few milliseconds.
    """
    cmd = [ninja_binary(), "-f", str(ninja_file), "-j", str(max(1, jobs)), "-k", "0" if keep_going else "1"]
    run_env = dict(os.environ if env is None else env)
    run_env["NINJA_STATUS"] = "[%f/%t] "
    start = time.perf_counter()
    try:
        # umask 077: objects and libraries are private to the user whatever the caller's umask
        proc = subprocess.Popen(cmd, cwd=str(cwd or ninja_file.parent), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", env=run_env,
                                umask=0o077)
    except OSError as exc:
        raise BuildError(f"unavailable: cannot run ninja: {exc}") from exc
    lines: list[str] = []
    stream = proc.stdout
    if stream is not None:
        for raw in stream:
            line = raw.rstrip("\n")
            lines.append(line)
            if on_status is not None:
                match = _STATUS.match(line)
                if match:
                    on_status(int(match.group(1)), int(match.group(2)), match.group(3))
    returncode = proc.wait()
    output = "\n".join(lines)
    failed, blocks = parse_failures(output)
    return NinjaResult(returncode, output, time.perf_counter() - start, failed, blocks)

"""The one error hierarchy of fibuild.

Every error a user can cause derives from :class:`FibuildError`; the CLI prints it
without a traceback and exits 1. Anything else escaping is a bug.
"""
from __future__ import annotations

import errno
from pathlib import Path
from typing import Sequence


class FibuildError(Exception):
    """Base class: a user-facing failure with a message fit to print as is."""


class ConfigError(FibuildError):
    """An environment variable or option holds a value fibuild cannot use."""


class ManifestError(FibuildError):
    """A manifest is invalid.

    ``path`` is the file; ``problems`` lists every ``(json_pointer, message)`` found,
    sorted by pointer, so a user fixes them all in one pass.
    """

    def __init__(self, path: str | Path, problems: Sequence[tuple[str, str]]):
        self.path = str(path)
        self.problems = sorted(problems)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(f"{self.path}: {ptr or '/'}: {msg}" for ptr, msg in self.problems)


class ManifestErrors(FibuildError):
    """Several files failed validation; ``errors`` holds one ManifestError per file."""

    def __init__(self, errors: Sequence[ManifestError]):
        self.errors = list(errors)
        super().__init__("\n".join(e.render() for e in self.errors))


class BuildError(FibuildError):
    """A solution failed to build (or its builder is unavailable).

    ``solution`` names it, ``build_dir`` is where the log lies, ``log_tail`` holds the
    last lines of that log.
    """

    def __init__(self, message: str, *, solution: str = "", build_dir: str | Path | None = None,
                 log_tail: str = ""):
        self.solution = solution
        self.build_dir = str(build_dir) if build_dir else None
        self.log_tail = log_tail
        text = message
        if self.build_dir:
            text += f"\n  build dir: {self.build_dir}"
        if log_tail:
            text += "\n" + log_tail
        super().__init__(text)


class BenchError(FibuildError):
    """The benchmark runner cannot go on (bad workload, no device, ...)."""


class InputError(FibuildError, ValueError):
    """A call's inputs do not match the definition (count, dtype, shape, layout, device)."""


class ResolveError(FibuildError):
    """No runnable solution for a key; ``decisions`` is the whole decision trace."""

    def __init__(self, message: str, decisions: Sequence[object] = ()):
        self.decisions = list(decisions)
        lines = [message] + [f"  - {d}" for d in self.decisions]
        super().__init__("\n".join(lines))


class GraphReplanError(FibuildError):
    """A FlashInfer wrapper whose run fibuild substituted inside a captured CUDA graph was
    planned again in a way the captured plan cannot follow: replaying would be wrong."""


class CacheError(FibuildError):
    """The build cache or its index cannot be used (permissions, pickled values, ...)."""


class BusyError(FibuildError):
    """A lock or database another process holds did not free within the wait the caller
    allows (the serving path's FIBUILD_SERVING_WAIT). Nothing was built or changed; the
    caller runs something else now and may try again later. ``reason`` is a short,
    stable text to count it by; ``str()`` names the path and the wait."""

    def __init__(self, message: str, *, reason: str):
        self.reason = reason
        super().__init__(message)


class RegistryError(FibuildError):
    """An evaluation record cannot be written (invalid record, unwritable file)."""


class DatasetError(FibuildError):
    """A dataset or dump file cannot be read: ``path`` and ``line`` (1-based, 0 when the
    whole file is at fault) say where, the message says what."""

    def __init__(self, path: str | Path, line: int, message: str):
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{line}: {message}" if line else f"{self.path}: {message}")


def os_error_advice(exc: OSError, elsewhere: str = "") -> str:
    """What a user can do about ``exc``: one clause keyed on its errno.

    ``elsewhere`` is how to point fibuild at another place (e.g. "set FIBUILD_CACHE_DIR
    to a writable directory"); it ends the advice for the errors only a move fixes.
    """
    tail = f", or {elsewhere}" if elsewhere else ""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"the file system is full: free some space{tail}"
    if code == errno.EROFS:
        return f"the file system is read-only{tail or ': use a writable one'}"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: fix the owner or mode{tail}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"a file stands where a directory is expected: remove it{tail}"
    if code == errno.EISDIR:
        return f"a directory stands where a file is expected: remove it{tail}"
    if code == errno.ELOOP:
        return "it is a symbolic link, which fibuild refuses here: replace it with a real file or folder"
    return f"{exc.strerror or exc}{tail}"


def cache_error(exc: OSError, path: str | Path, doing: str) -> CacheError:
    """A CacheError for an OS error met while ``doing`` something on ``path`` in the build cache."""
    why = exc.strerror or type(exc).__name__
    return CacheError(f"{path}: cannot {doing} ({why}): "
                      f"{os_error_advice(exc, 'set FIBUILD_CACHE_DIR to another directory')}")

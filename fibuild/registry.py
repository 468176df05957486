"""The evaluation registry: append-only JSONL, one file per definition and device.

Layout: ``<root>/<definition>/<device-slug>.jsonl`` (``root`` is ``Workspace.registry_dir``);
``workloads.jsonl`` in the same folder holds workloads, not evaluations. Each line is one
:class:`~fibuild.spec.model.Evaluation` as JSON plus ``"schema": 2`` (lines of schema 1,
without the spread fields and host times, still load).

Writes: validated against ``schemas/evaluation.schema.json``, then appended as one
``os.write`` of one line (``O_APPEND``) under ``filelock.FileLock(<file>.lock)``, so
concurrent writers never interleave and a killed writer leaves at most one torn last line.
Reads: a torn, garbled or invalid line is skipped with a logged warning, never fatal.
Symbolic links are refused: a registry file, its lock or a blob that is a link, or a
folder resolving outside the registry root, is a RegistryError on write (never
followed, so nothing outside the workspace is appended to) and skipped on read.

Workloads (traced or imported) go through :meth:`Registry.append_workloads` (validated lines,
one locked append of the whole batch) and :meth:`Registry.write_blob` (a safetensors file
written under a temporary name, fsynced, then renamed into ``<definition>/blobs/``).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import RegistryError, os_error_advice
from .spec.model import Evaluation
from .spec.records import (  # noqa: F401 - the record codec, also imported from here
    READABLE_SCHEMAS,
    RECORD_SCHEMA,
    evaluation_from_dict,
    evaluation_to_dict,
    latency_from_dict,
    latency_to_dict,
)
from .spec.schema import validate

# Heavy or optional dependencies, imported inside the functions that use them: safetensors, filelock.

log = logging.getLogger(__name__)

WORKLOADS_FILE = "workloads.jsonl"
CHAINS_DIR = "chains"
#: Fields every chain record has, and their JSON types.
CHAIN_FIELDS = {"chain": str, "definition": str, "device": str, "axes": dict, "solution": str,
                "solution_digest": str, "chain_latency_us": (int, float), "timestamp": str}


class Registry:
    """Evaluations under ``root_dir`` (a workspace's ``registry/``), where appends go; reads
    also see the registries of ``also_read`` (the shipped library's, under the user workspace).

    Cheap to construct (no I/O until used); safe to share between threads and processes.
    """

    def __init__(self, root_dir: str | Path, *, also_read: Iterable[str | Path] = ()):
        self.root = Path(root_dir)
        self.read_roots = (self.root, *(Path(p) for p in also_read))

    @classmethod
    def of(cls, workspace) -> "Registry":
        """The registry of a Workspace: appends under its ``registry_dir``, reads every layer
        (the user workspace's records with the shipped library's)."""
        return cls(workspace.registry_dir, also_read=[layer / "registry" for layer in workspace.layers[1:]])

    def path(self, definition: str, device: str) -> Path:
        """The JSONL file of ``definition`` on device slug ``device``."""
        if not definition or "/" in definition or definition.startswith("."):
            raise RegistryError(f"definition name {definition!r} cannot name a registry folder")
        if not device or "/" in device or device.startswith(".") or device + ".jsonl" == WORKLOADS_FILE:
            raise RegistryError(f"device slug {device!r} cannot name a registry file")
        return self.root / definition / f"{device}.jsonl"

    # -- writing -----------------------------------------------------------------------
    def append(self, evaluation: Evaluation) -> Path:
        """Validate ``evaluation`` and append it as one line; returns the file written.

        Raises RegistryError naming the field when the record is invalid, or when the file
        cannot be written. Cost: one schema validation, one lock, one write.
        """
        record = evaluation_to_dict(evaluation)
        problems = validate("evaluation", record)
        if problems:
            detail = "; ".join(f"{ptr or '/'}: {msg}" for ptr, msg in problems)
            raise RegistryError(f"invalid evaluation of {evaluation.definition}/{evaluation.solution}: {detail}")
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
        path = self.path(evaluation.definition, evaluation.device)
        append_lines(path, line, "evaluation", self.root)
        return path

    def workloads_path(self, definition: str) -> Path:
        """``<root>/<definition>/workloads.jsonl``."""
        return self.path(definition, "_").with_name(WORKLOADS_FILE)

    def append_workloads(self, definition: str, workloads: Iterable[Mapping[str, Any]], *,
                         select: Callable[[Path, list[Mapping[str, Any]]], list[Mapping[str, Any]]] | None = None
                         ) -> Path:
        """Validate each workload record and append them all in one locked write.

        Each record is a workload line (``uuid``, ``axes``, ``inputs``; ``definition`` is
        filled in). Raises RegistryError naming the uuid and field of the first invalid
        record, before anything is written. Uuid clashes with the file are the caller's to
        avoid (readers report them). ``select(path, records)``, called while the file's lock
        is held, returns the records to write after all (e.g. those the file, as other
        processes left it, does not hold yet). Cost: one validation a record, one lock, one write.
        """
        records = []
        for record in workloads:
            record = {"definition": definition, **record}
            problems = validate("workload", record)
            if problems:
                detail = "; ".join(f"{ptr or '/'}: {msg}" for ptr, msg in problems)
                raise RegistryError(f"invalid workload {record.get('uuid')!r} of {definition}: {detail}")
            records.append(record)
        path = self.workloads_path(definition)

        def text() -> str:
            chosen = records if select is None else select(path, records)
            return "".join(json.dumps(r, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
                           for r in chosen)

        if records:
            append_lines(path, text, "workloads", self.root)
        return path

    def write_blob(self, definition: str, name: str, tensors: Mapping[str, Any]) -> str:
        """Write ``tensors`` as ``<definition>/blobs/<name>.safetensors``; returns its path
        relative to the workspace root (``registry/<definition>/blobs/<name>.safetensors``,
        the form a workload's safetensors ``path`` takes).

        Written to a temporary name, fsynced, then renamed: a reader never sees a partial
        blob. ``name`` is letters, digits, ``_``, ``-`` and ``.`` (RegistryError otherwise).
        """
        from safetensors.torch import save_file

        if not name or name.startswith(".") or not all(c.isalnum() or c in "_-." for c in name):
            raise RegistryError(f"blob name {name!r} cannot name a file")

        folder = self.workloads_path(definition).parent / "blobs"
        final = folder / f"{name}.safetensors"
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _confined(final, self.root)
            # a fresh name made by mkstemp (O_EXCL): a link planted at a guessable name is never followed
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            tmp = Path(tmp_name)
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RegistryError(f"{final}: cannot write blob: {exc}") from exc
        return f"{self.root.name}/{definition}/blobs/{final.name}"

    def chain_path(self, definition: str, device: str) -> Path:
        """``<root>/<definition>/chains/<device>.jsonl``: the chain choices for ``definition``."""
        path = self.path(definition, device)
        return path.parent / CHAINS_DIR / path.name

    def append_chain(self, record: Mapping[str, Any]) -> Path:
        """Append one chain record (a slot's choice, :meth:`fibuild.bench.chain.ChainResult.records`)
        beside the definition's evaluations; RegistryError when a field is missing or mistyped."""
        problems = [f for f, kind in CHAIN_FIELDS.items() if not isinstance(record.get(f), kind)]
        if problems:
            raise RegistryError(f"invalid chain record for {record.get('definition')!r}: fields {problems} "
                                "missing or of the wrong type")
        line = json.dumps({"schema": RECORD_SCHEMA, **record}, sort_keys=True, separators=(",", ":"),
                          allow_nan=False) + "\n"
        path = self.chain_path(record["definition"], record["device"])
        append_lines(path, line, "chain record", self.root)
        return path

    def read_chains(self, definition: str, device: str) -> list[dict[str, Any]]:
        """Chain records of ``definition`` on ``device`` in every registry read (lower layers
        first), in file order; unreadable lines and lines missing a field are skipped with a
        warning, a link is skipped."""
        mine = self.chain_path(definition, device)
        out = []
        for root in reversed(self.read_roots):
            out += self._read_chain_file(root / mine.relative_to(self.root))
        return out

    def _read_chain_file(self, path: Path) -> list[dict[str, Any]]:
        if path.is_symlink() or not path.is_file():
            return []
        out = []
        for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError, RecursionError):
                record = None
            if not isinstance(record, dict) or any(not isinstance(record.get(f), k) for f, k in CHAIN_FIELDS.items()):
                log.warning("%s:%d: skipping unreadable chain record", path, lineno)
                continue
            out.append(record)
        return out

    # -- reading -----------------------------------------------------------------------
    def devices(self, definition: str) -> list[str]:
        """Device slugs with an evaluation file for ``definition``, sorted."""
        self.path(definition, "_")  # the name check
        return sorted({p.stem for root in self.read_roots for p in (root / definition).glob("*.jsonl")
                       if p.name != WORKLOADS_FILE})

    def read(self, definition: str, device: str | None = None, *, status: str | None = None,
             solution_digest: str | None = None) -> list[Evaluation]:
        """Evaluations of ``definition`` on ``device`` (every device when None), in file order.

        Optional filters keep only records with that ``status`` / ``solution_digest``.
        Torn or invalid lines are skipped with a warning. Cost: one pass over the file(s).
        """
        devices = [device] if device is not None else self.devices(definition)
        out: list[Evaluation] = []
        # Lower layers first (the shipped library's records are older than the user's).
        files = [root / definition / self.path(definition, slug).name
                 for slug in devices for root in reversed(self.read_roots)]
        for path in files:
            for ev in self._read_file(path):
                if status is not None and ev.status != status:
                    continue
                if solution_digest is not None and ev.solution_digest != solution_digest:
                    continue
                out.append(ev)
        return out

    def _read_file(self, path: Path) -> Iterable[Evaluation]:
        if path.is_symlink():
            log.warning("%s: skipped: a symbolic link (registry files must be regular files)", path)
            return []
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("%s: cannot read registry file: %s", path, exc)
            return []
        out = []
        bad: list[tuple[int, str]] = []
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                out.append(evaluation_from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
                bad.append((lineno, "nested too deeply" if isinstance(exc, RecursionError) else str(exc)))
        if bad:  # one warning per file, however damaged: the first problem shows what is wrong
            log.warning("%s: skipped %d unreadable evaluation record%s (first: line %d: %s)", path, len(bad),
                        "" if len(bad) == 1 else "s", bad[0][0], bad[0][1][:200])
        return out


def _confined(path: Path, root: Path) -> None:
    """RegistryError unless ``path``'s folder resolves inside ``root`` and neither ``path``
    nor its lock is a symbolic link (a link would send writes outside the workspace)."""
    if not path.parent.resolve().is_relative_to(root.resolve()):
        raise RegistryError(f"{path}: its folder resolves outside the registry {root} (a symbolic "
                            "link?); replace the link with a real folder")
    for candidate in (path, Path(str(path) + ".lock")):
        if candidate.is_symlink():
            raise RegistryError(f"{candidate}: is a symbolic link; registry files must be regular files "
                                "inside the workspace: replace it with the file itself")


def append_lines(path: Path, text: str | Callable[[], str], what: str, root: Path | None = None) -> None:
    """Append ``text`` (whole lines) to ``path`` in one write under ``<path>.lock``; a callable
    ``text`` is called once the lock is held (to decide from the file as it is then)."""
    from filelock import FileLock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _confined(path, root or path.parents[1])
        with FileLock(str(path) + ".lock"):
            if callable(text):
                text = text()
                if not text:
                    return
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                data = text.encode("utf-8")
                if _ends_torn(fd):
                    # A writer died mid-line: start on a fresh line so these records survive.
                    data = b"\n" + data
                written = os.write(fd, data)
                if written != len(data):
                    raise RegistryError(f"{path}: short write ({written} of {len(data)} bytes)")
            finally:
                os.close(fd)
    except OSError as exc:
        raise RegistryError(f"{path}: cannot append {what}: {exc.strerror or exc}: "
                            f"{os_error_advice(exc, 'point --root at a writable workspace')}") from exc


def _ends_torn(fd: int) -> bool:
    """True when the file behind ``fd`` is non-empty and does not end with a newline."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def latest_per_workload(evaluations: Iterable[Evaluation]) -> dict[tuple[str, str], Evaluation]:
    """The newest record per ``(solution, workload_uuid)`` (by timestamp, then file order)."""
    latest: dict[tuple[str, str], Evaluation] = {}
    for ev in evaluations:
        key = (ev.solution, ev.workload_uuid)
        kept = latest.get(key)
        if kept is None or ev.timestamp >= kept.timestamp:
            latest[key] = ev
    return latest

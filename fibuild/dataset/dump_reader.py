"""FlashInfer level-10 API dumps, read without executing anything.

``FLASHINFER_LOGLEVEL=10`` with ``FLASHINFER_DUMP_SAFETENSORS=1`` makes FlashInfer write,
per decorated call, ``<DUMP_DIR>/<YYYYmmdd_HHMMSS_mmm>_pid<PID>_<function>_call<NNNN>/``
holding ``metadata.jsonl`` (an ``inputs_saved`` record, then a ``completed`` one) and
``inputs.safetensors`` / ``outputs.safetensors``. Tensors are keyed ``arg_<i>`` (positional,
``self`` is ``arg_0`` for wrapper methods) and ``kwarg_<name>``; tensors inside a tuple
argument are ``arg_<i>__<j>``; other arguments are JSON values in ``input_metadata``.
``function_signature`` is ``str(inspect.signature(f))``. Dumps written with ``torch.save``
(``inputs.pt``) are refused: fibuild never unpickles.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .files import iter_jsonl, safetensors_header

# Heavy or optional dependencies, imported inside the functions that use them: safetensors.

_DIR = re.compile(r"^(\d{8}_\d{6}_\d{3})_pid(\d+)_(.+)_call(\d+)$")
MAX_SIGNATURE_CHARS = 16 * 1024  # FlashInfer's longest signature (a decode run()) is ~1 000
_REQUIRED = ("function_name", "input_metadata", "tensor_info", "function_signature", "execution_status",
             "tensor_format", "process_id")


@dataclass(frozen=True)
class Signature:
    """Parameter names of a dumped function: ``positional`` in order (``arg_<i>`` maps to
    ``positional[i]``), ``defaults`` the literal defaults."""

    positional: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DumpCall:
    """One dumped call: where, what, and the dtype and shape of every input tensor."""

    directory: Path
    function: str
    pid: int
    self_id: int | None
    status: str
    signature: Signature
    metadata: dict
    tensors: dict  # tensor key -> (dtype, shape)

    def find(self, param: str) -> tuple[str, Any] | None:
        """``("tensor", key)`` or ``("value", v)`` for parameter ``param`` (``name.<j>`` picks
        item j of a tuple argument); None when the call did not pass it and it has no default."""
        name, _, item = param.partition(".")
        keys = [f"kwarg_{name}"]
        if name in self.signature.positional:
            keys.append(f"arg_{self.signature.positional.index(name)}")
        for key in keys:
            if item:
                sub = f"{key}__{item}"
                if sub in self.tensors:
                    return "tensor", sub
                continue
            if key in self.tensors:
                return "tensor", key
            if key in self.metadata:
                return "value", self.metadata[key]
        if not item and name in self.signature.defaults:
            return "value", self.signature.defaults[name]
        return None

    def load(self, keys: list[str]) -> dict:
        """The named input tensors, on the CPU (safetensors; nothing executed)."""
        from safetensors import safe_open

        path = self.directory / "inputs.safetensors"
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                return {k: fh.get_tensor(k) for k in keys}
        except Exception as exc:  # the safetensors library raises its own error types
            raise DatasetError(path, 0, f"cannot read tensors {keys}: {exc}") from None


def parse_signature(text: str) -> Signature:
    """Parameter names and literal defaults of ``str(inspect.signature(f))`` (parsed, not run)."""
    try:
        fn = ast.parse(f"def _f{text}:\n    pass\n").body[0]
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # not Python, NUL bytes, too deep
        return Signature(tuple(_names_by_split(text)))
    args = fn.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    defaults: dict[str, Any] = {}
    for arg, node in zip((args.posonlyargs + args.args)[-len(args.defaults):] if args.defaults else [], args.defaults):
        _literal(defaults, arg.arg, node)
    for arg, node in zip(args.kwonlyargs, args.kw_defaults):
        if node is not None:
            _literal(defaults, arg.arg, node)
    return Signature(tuple(positional), defaults)


def _literal(out: dict, name: str, node: ast.AST) -> None:
    try:
        out[name] = ast.literal_eval(node)
    except (ValueError, SyntaxError):
        pass  # an object default (a dtype, a device): not a scalar a workload can hold


def _names_by_split(text: str) -> list[str]:
    """Positional names when the signature text is not Python (a default's repr)."""
    body = text.strip()[1:].rsplit(")", 1)[0]
    depth, current, names = 0, "", []
    for ch in body + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            token = re.split(r"[:=\s]", current.strip(), maxsplit=1)[0]
            if token.startswith("*"):
                break
            if token and token != "/":
                names.append(token)
            current = ""
        else:
            current += ch
    return names


def read_dumps(root: Path) -> list[DumpCall]:
    """Every call dumped under ``root``, ordered by process, then time, then call number.

    Raises DatasetError naming the file (and line) for a directory that is no dump, a
    truncated metadata or tensor file, a foreign record, or a ``torch.save`` dump.
    Cost: reads each metadata file and each safetensors header once.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(root, 0, "not a directory")
    calls = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _DIR.match(folder.name)
        if match is None:
            continue  # graph_flushes/ and other folders FlashInfer or the user keep alongside
        calls.append(_read_call(folder, int(match.group(2))))
    if not calls and not (root / "session.jsonl").is_file():
        raise DatasetError(root, 0, "no FlashInfer dump here (no <time>_pid<PID>_<function>_call<N> "
                           "folders, no session.jsonl); was FLASHINFER_LOGLEVEL=10 set before importing flashinfer?")
    return sorted(calls, key=lambda c: (c.pid, c.directory.name))


def _read_call(folder: Path, pid: int) -> DumpCall:
    meta_path = folder / "metadata.jsonl"
    if not meta_path.is_file():
        raise DatasetError(folder, 0, "dump folder without metadata.jsonl (truncated dump)")
    record, lineno = None, 0
    for lineno, value in iter_jsonl(meta_path):
        record = value
    if not isinstance(record, dict):
        raise DatasetError(meta_path, lineno, "not a FlashInfer dump record (empty, or not a JSON object)")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise DatasetError(meta_path, lineno, f"not a FlashInfer level-10 dump record (no {', '.join(missing)})")
    if record["tensor_format"] != "safetensors" or (folder / "inputs.pt").exists():
        raise DatasetError(folder / "inputs.pt", 0, "dumped with torch.save; fibuild reads safetensors only "
                           "(never unpickles): dump again with FLASHINFER_DUMP_SAFETENSORS=1")
    keys = record["tensor_info"].get("input_tensor_keys", []) if isinstance(record["tensor_info"], dict) else []
    tensors: dict = {}
    if keys or (folder / "inputs.safetensors").exists():
        tensors = safetensors_header(folder / "inputs.safetensors")
        absent = sorted(set(keys) - set(tensors))
        if absent and record["execution_status"] != "graph_capture_pending_flush":
            raise DatasetError(folder / "inputs.safetensors", 0, f"lacks tensors {absent} that "
                               "metadata.jsonl lists (truncated or foreign file)")
    if not isinstance(record["input_metadata"], dict) or not isinstance(record["function_name"], str):
        raise DatasetError(meta_path, lineno, "not a FlashInfer level-10 dump record (malformed fields)")
    signature = str(record["function_signature"])
    if len(signature) > MAX_SIGNATURE_CHARS:
        raise DatasetError(meta_path, lineno, f"function_signature of {len(signature)} characters (at most "
                           f"{MAX_SIGNATURE_CHARS}): not a FlashInfer dump record")
    return DumpCall(directory=folder, function=record["function_name"], pid=pid,
                    self_id=record.get("self_id"), status=str(record["execution_status"]),
                    signature=parse_signature(signature),
                    metadata=record["input_metadata"], tensors=tensors)

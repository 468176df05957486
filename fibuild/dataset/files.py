"""Reading dataset files with their line numbers, and writing files whole.

Every reader raises :class:`~fibuild.errors.DatasetError` naming the file and line for
input it cannot use; nothing is executed. Writers go through a temporary name and
``os.replace``, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from ..errors import DatasetError

#: safetensors header dtype -> fibuild dtype name.
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
#: bytes per element of each safetensors dtype (a header's shapes must match its byte ranges)
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_LINE_BYTES = 4 * 1024 * 1024  # a dataset line (one workload or trace) is far smaller
MAX_JSON_BYTES = 64 * 1024 * 1024  # a definition or solution file (sources inline)
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise DatasetError(path, 0, f"{size} bytes: larger than the {MAX_JSON_BYTES} a dataset file may hold")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(path, 0, "file not found") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(path, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(path, 0, f"cannot read: {exc.strerror or exc}") from None


def read_json(path: Path) -> tuple[Any, str]:
    """The JSON document in ``path`` and its text; DatasetError (file, line) if malformed."""
    text = _read_text(path)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates), text
    except json.JSONDecodeError as exc:
        raise DatasetError(path, exc.lineno, f"malformed JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # duplicate key
        raise DatasetError(path, line_of(text, str(exc).split("'")[1]) or 1, str(exc)) from None
    except RecursionError:
        raise DatasetError(path, 1, "JSON nested too deeply") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line, read one at a time; a line longer than
    MAX_LINE_BYTES is a DatasetError (it is never read whole)."""
    try:
        with open(path, "rb") as fh:
            lineno = 0
            while True:
                raw = fh.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                lineno += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise DatasetError(path, lineno, f"line longer than {MAX_LINE_BYTES} bytes: not a "
                                       "workload or trace line")
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DatasetError(path, lineno, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except FileNotFoundError:
        raise DatasetError(path, 0, "file not found") from None
    except OSError as exc:
        raise DatasetError(path, 0, f"cannot read: {exc.strerror or exc}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line; DatasetError on a malformed or
    oversized line. Reads one line at a time."""
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise DatasetError(path, lineno, f"malformed JSON line: {exc.msg} (column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:
            raise DatasetError(path, lineno, f"unusable JSON line: {exc}") from None


def line_of(text: str, *keys: str) -> int:
    """The 1-based line of ``"keys[-1]":``, each key searched after the previous one; 0 if absent."""
    pos = 0
    for key in keys:
        match = re.compile(r'"%s"\s*:' % re.escape(key)).search(text, pos)
        if match is None:
            return 0
        pos = match.start()
    return text.count("\n", 0, pos) + 1


def relative_path(value: Any) -> str:
    """``value`` as a normalized relative POSIX path ("./" dropped); ValueError saying why not."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"path {value!r} is not a non-empty string")
    if value.startswith(("/", "\\")) or PurePosixPath(value).is_absolute() or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"path {value!r} is absolute; blob paths are relative to the dataset root")
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if ".." in parts:
        raise ValueError(f"path {value!r} leaves the dataset root ('..')")
    parts = tuple(p for p in parts if p != ".")
    if not parts:
        raise ValueError(f"path {value!r} names no file")
    return "/".join(parts)


def confined(root: Path, rel: str) -> Path:
    """``root / rel`` resolved; ValueError when a link takes it outside ``root``."""
    base = root.resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise ValueError(f"path {rel!r} resolves outside {base} (through a link)")
    return target


def safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """``{tensor name: (fibuild dtype, shape)}`` from a safetensors file's header.

    Reads the header only (no tensor data, nothing executed). DatasetError for a missing,
    truncated or foreign file, or a dtype fibuild has no name for. Cost: one small read.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise DatasetError(path, 0, "truncated safetensors file (no header length)")
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER or 8 + length > size:
                raise DatasetError(path, 0, f"not a safetensors file or truncated (header of {length} "
                                   f"bytes in a file of {size})")
            header = json.loads(fh.read(length))
    except FileNotFoundError:
        raise DatasetError(path, 0, "file not found") from None
    except OSError as exc:
        raise DatasetError(path, 0, f"cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise DatasetError(path, 0, "not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise DatasetError(path, 0, "not a safetensors file (header is not an object)")
    out: dict[str, tuple[str, list[int]]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or "dtype" not in info or "shape" not in info \
                or "data_offsets" not in info:
            raise DatasetError(path, 0, f"not a safetensors file (entry {name!r} is malformed)")
        offsets = info["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise DatasetError(path, 0, f"not a safetensors file (entry {name!r} is malformed)")
        begin, end = offsets
        if not 0 <= begin <= end <= size - 8 - length:
            raise DatasetError(path, 0, f"truncated safetensors file (tensor {name!r} lies past the end)")
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise DatasetError(path, 0, f"tensor {name!r} has dtype {info['dtype']}, which fibuild cannot hold")
        shape = info["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise DatasetError(path, 0, f"not a safetensors file (tensor {name!r} has shape {shape!r})")
        count = math.prod(shape)
        if count * _ITEM_BYTES[info["dtype"]] != end - begin:
            raise DatasetError(path, 0, f"tensor {name!r} claims shape {shape} ({count} elements of "
                               f"{info['dtype']}) but holds {end - begin} bytes (a forged or damaged header)")
        out[name] = (dtype, list(shape))
    return out


def lfs_pointer(path: Path) -> bool:
    """Whether ``path`` is a Git LFS pointer file (a checkout made without its LFS data)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_LFS_POINTER)) == _LFS_POINTER
    except OSError:
        return False


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` whole (temporary name, then rename)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (False when either is missing)."""
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False

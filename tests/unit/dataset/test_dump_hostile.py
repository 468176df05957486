"""Hostile FlashInfer dumps are clear errors naming the file, never a traceback or a workload
of absurd size: a forged safetensors header, a signature that exhausts the parser."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from flashinfer_dump_writer import RMSNORM_SIGNATURE, DumpWriter

from fibuild.dataset.dump_import import import_flashinfer_dump
from fibuild.errors import DatasetError
from fibuild.spec.workspace import Workspace

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    shutil.copytree(ROOT / "defs", tmp_path / "ws" / "defs")
    return Workspace(tmp_path / "ws")


def _rmsnorm_call(root: Path, signature: str = RMSNORM_SIGNATURE) -> Path:
    x = torch.ones(3, 4096, dtype=torch.bfloat16)
    w = torch.ones(4096, dtype=torch.bfloat16)
    return DumpWriter(root).call("rmsnorm", "flashinfer.norm", signature, (x, w), {"eps": 1e-6}, result=x)


def _forge_shape(path: Path, key: str, shape: list[int]) -> None:
    """Rewrite ``key``'s shape in a safetensors header, leaving its bytes as they are."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header[key]["shape"] = shape
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])


def _registry_files(ws: Workspace) -> list[Path]:
    return sorted(p for p in (ws.root / "registry").rglob("*") if p.is_file())


def test_a_header_claiming_a_trillion_rows_is_refused(tmp_path, workspace):
    folder = _rmsnorm_call(tmp_path / "dump")
    _forge_shape(folder / "inputs.safetensors", "arg_0", [10**12, 4096])
    with pytest.raises(DatasetError) as info:
        import_flashinfer_dump(workspace, tmp_path / "dump")
    assert info.value.path == str(folder / "inputs.safetensors")
    assert "claims shape [1000000000000, 4096]" in str(info.value) and "forged or damaged" in str(info.value)
    assert _registry_files(workspace) == []


def test_a_signature_that_exhausts_the_parser_is_a_clear_error(tmp_path, workspace):
    folder = _rmsnorm_call(tmp_path / "dump", "(x=" + "-" * 300_000 + "1)")  # MemoryError in ast.parse
    with pytest.raises(DatasetError) as info:
        import_flashinfer_dump(workspace, tmp_path / "dump")
    assert info.value.path == str(folder / "metadata.jsonl")
    assert "function_signature of 300005 characters" in str(info.value)

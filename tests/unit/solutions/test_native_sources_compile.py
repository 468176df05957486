"""Every shipped CUDA and C++ solution, and the native example, compiles on a machine without
a GPU: the real nvcc (for sm_90a) and host compiler through ``fibuild build`` with tvm-ffi's
headers, so a kernel that no longer compiles is caught in CI and not first on a GPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fibuild.cli import main
from fibuild.compile.toolchain import cuda_unavailable_reason
from fibuild.config import Settings
from fibuild.spec.workspace import Workspace, shipped_root

REPO = Path(__file__).resolve().parents[3]
NATIVE = ("cuda", "cpp")


def _native(root: Path) -> list[str]:
    """The qualified names of the workspace's CUDA and C++ solutions."""
    ws = Workspace(root)
    return sorted(sol.qualified_name for name in ws.definitions for sol in ws.solutions(name)
                  if sol.language in NATIVE)


@pytest.mark.parametrize("root", [shipped_root(), REPO / "examples" / "native_solution"],
                         ids=["shipped", "example"])
def test_every_native_solution_compiles(root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FIBUILD_CUDA_ARCH_LIST", "9.0a")
    why = cuda_unavailable_reason(Settings.from_env())
    if why:
        pytest.skip(f"no CUDA toolchain here: {why}")
    names = _native(root)
    assert any("cuda" in n for n in names), names  # the glob found the CUDA solutions
    assert main(["--root", str(root), "--json", "build", *names]) == 0
    doc = json.loads(capsys.readouterr().out)
    built = {s["solution"]: s for s in doc["solutions"]}
    assert sorted(built) == sorted(names)
    assert all(s["status"] in ("built", "cached") for s in built.values()), built

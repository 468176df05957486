"""examples/native_solution, the README's C++/CUDA example: it validates, builds with the real
toolchain (g++; nvcc for sm_90a when CUDA_HOME has one), and the C++ kernel computes the
reference's result on CPU tensors and refuses what it does not support."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fibuild.cli import main
from fibuild.compile.cache import BuildCache
from fibuild.compile.toolchain import cuda_unavailable_reason
from fibuild.config import Settings
from fibuild.spec.calling import load_reference
from fibuild.spec.workspace import Workspace

pytestmark = pytest.mark.build

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "native_solution"


def test_example_builds_and_its_cpp_kernel_matches_the_reference(tmp_path, settings_env, capsys):
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root)
    assert main(["--root", str(root), "validate"]) == 0
    capsys.readouterr()
    code = main(["--root", str(root), "build", "--all", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    status = {s["solution"]: s for s in report["solutions"]}
    assert status["add_scaled_f32/cpp"]["status"] == "built"
    settings = Settings.from_env(root=root)
    if cuda_unavailable_reason(settings) is None:
        assert status["add_scaled_f32/cuda"]["status"] == "built"
        assert (Path(status["add_scaled_f32/cuda"]["build_dir"]) / "module.so").is_file()
    else:
        assert status["add_scaled_f32/cuda"]["status"] == "skipped"

    ws = Workspace(root)
    defn = ws.definition("add_scaled_f32")
    kernel = BuildCache(settings).get_or_build(defn, ws.solution("add_scaled_f32/cpp"))
    x, y = torch.randn(4096), torch.randn(4096)
    torch.testing.assert_close(kernel(x, y), load_reference(defn)["run"](x, y), atol=0, rtol=0)
    out = torch.empty_like(x)
    with pytest.raises(ValueError, match="y must be float32"):
        kernel.entry(x, y.double(), out)
    with pytest.raises(ValueError, match="x must be contiguous"):
        kernel.entry(torch.randn(8192)[::2], y, out)

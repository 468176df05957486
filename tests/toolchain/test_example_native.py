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
    for name in ("add_scaled_f32/cuda", "add_scaled_f32/cuda_pdl"):
        if cuda_unavailable_reason(settings) is None:
            assert status[name]["status"] == "built"
            assert (Path(status[name]["build_dir"]) / "module.so").is_file()
        else:
            assert status[name]["status"] == "skipped"

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


def test_a_pdl_cuda_solution_is_compiled_with_the_launch_define_unless_disabled(tmp_path):
    """launch: {pdl: true} on a CUDA solution adds -DFIBUILD_LAUNCH_PDL=1 to nvcc's flags (its
    source then launches with the attribute); FIBUILD_PDL=0 builds it without, under another key;
    a solution that does not declare it never gets the define."""
    from fibuild.compile import keys

    ws = Workspace(EXAMPLE)
    defn = ws.definition("add_scaled_f32")
    pdl, plain = ws.solution("add_scaled_f32/cuda_pdl"), ws.solution("add_scaled_f32/cuda")
    assert pdl.pdl and not plain.pdl
    on = Settings.from_env({"FIBUILD_CACHE_DIR": str(tmp_path), "FIBUILD_CUDA_ARCH_LIST": "9.0a"})
    off = Settings.from_env({"FIBUILD_CACHE_DIR": str(tmp_path), "FIBUILD_CUDA_ARCH_LIST": "9.0a",
                             "FIBUILD_PDL": "0"})
    assert "-DFIBUILD_LAUNCH_PDL=1" in keys.key_inputs(defn, pdl, on)["flags"]["nvcc"]
    assert "-DFIBUILD_LAUNCH_PDL=1" not in keys.key_inputs(defn, pdl, off)["flags"]["nvcc"]
    assert "-DFIBUILD_LAUNCH_PDL=1" not in keys.key_inputs(defn, plain, on)["flags"]["nvcc"]
    assert keys.build_key(defn, pdl, on) != keys.build_key(defn, pdl, off)

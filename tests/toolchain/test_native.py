"""Native builds: a C++ kernel built and run on CPU tensors, a CUDA kernel compiled for sm_90a."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fibuild.compile.cache import BuildCache
from fibuild.spec.calling import load_reference

pytestmark = pytest.mark.build


def test_cpp_kernel_runs_on_cpu_tensors_like_the_reference(built):
    defn, sol = built.pair("add_one_f32/cpp_add")
    kernel = BuildCache(built.settings).get_or_build(defn, sol)
    reference = load_reference(defn)["run"]
    x = torch.randn(10_000, dtype=torch.float32)
    torch.testing.assert_close(kernel(x), reference(x), atol=0, rtol=0)
    out = torch.empty_like(x)
    assert kernel(x, out=out) is out and torch.equal(out, x + 1)
    with pytest.raises(ValueError, match="x must be float32"):
        kernel.entry(x.double(), out)


def test_native_build_dir_layout(built):
    defn, sol = built.pair("add_one_f32/cpp_add")
    kernel = BuildCache(built.settings).get_or_build(defn, sol)
    text = (kernel.build_dir / "build.ninja").read_text()
    assert "\npool " not in text  # pools live only in the top file
    for line in text.splitlines():
        if line.startswith("build "):
            outputs, _, inputs = line[len("build "):].partition(": ")
            paths = outputs.split() + inputs.split()[1:]
            assert all(p.startswith("/") for p in paths), line
    assert (kernel.build_dir / "module.so").is_file() and not (kernel.build_dir / "module.so.tmp").exists()
    assert kernel.meta["toolchain"]["cxx"] and kernel.meta["artifact"] == "module.so"


def test_cuda_kernel_compiled_for_sm90a(built, cuda_ok):
    if not cuda_ok:
        pytest.skip("no nvcc/CUDA_HOME here")
    defn, sol = built.pair("add_one_f32/cuda_add")
    cache = BuildCache(built.settings)
    status, directory, meta = cache.status(defn, sol)
    assert status == "committed" and meta["arch"] == ["9.0a"]
    cuobjdump = built.settings.cuda_home / "bin" / "cuobjdump"
    if cuobjdump.is_file():
        listing = subprocess.run([str(cuobjdump), "--list-elf", str(directory / "module.so")],
                                 capture_output=True, text=True, check=True).stdout
        assert "sm_90a" in listing
    else:  # minimal toolkits lack cuobjdump: the embedded cubin records ptxas' target
        assert b"-arch sm_90a" in (directory / "module.so").read_bytes()


@pytest.mark.gpu
def test_cuda_kernel_runs(built):
    kernel = BuildCache(built.settings).get_or_build(*built.pair("add_one_f32/cuda_add"))
    x = torch.randn(5000, device="cuda")
    assert torch.equal(kernel(x), x + 1)


def test_load_committed_fast_path_imports_no_manifest_or_build_machinery(built):
    defn, sol = built.pair("add_one_f32/cpp_add")
    directory = BuildCache(built.settings).lookup(defn, sol).build_dir
    code = (
        "import sys, torch\n"
        "from fibuild.compile.cache import load_committed\n"
        f"f = load_committed({str(directory)!r})\n"
        "x = torch.arange(3, dtype=torch.float32); y = torch.empty_like(x); f(x, y)\n"
        "heavy = [m for m in ('yaml', 'jsonschema', 'ninja', 'diskcache', 'filelock', 'fibuild.spec.manifest')"
        " if m in sys.modules]\n"
        "print(y.tolist(), heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0, 2.0, 3.0] []"

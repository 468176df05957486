"""Benchmarks of fibuild's build cache, written as a Markdown report.

1. no-op ``fibuild build --all`` over N generated cpp solutions (median of 3 new processes);
2. first build-all of K solutions, ``-j1`` vs ``-j2`` (two fresh caches);
3. new process, warm caches: ``import fibuild`` + load one built native kernel + first call,
   against ``torch.utils.cpp_extension.load`` and ``tvm_ffi.cpp.load`` of the same kernel,
   each measured beyond ``import torch``;
4. first build of one CUDA solution: fibuild vs ``torch.utils.cpp_extension.load_inline``
   (compile + load; on a machine without a GPU only the compile can succeed).

Usage: ``python benchmarks/bench_build.py [--quick] [--out FILE]``. ``--quick`` builds 6
solutions for the -j comparison instead of 16 (the no-op always covers 50).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "compile" / "workspace"
KERNEL = FIXTURE / "solutions" / "add_one_f32" / "cpp_add"
CUDA_KERNEL = FIXTURE / "solutions" / "add_one_f32" / "cuda_add" / "kernel.cu"

SOLUTION_YAML = """name: cpp_add_{i:03d}
definition: add_one_f32
author: bench
description: Copy {i} of the fixture's C++ add-one kernel.
language: cpp
entry_point: kernel.cpp::add_one
sources: [kernel.cpp, offset.h]
target_hardware: [cpu]
destination_passing_style: true
"""

TORCH_EXT = r"""
#include <torch/extension.h>
void add_one(torch::Tensor x, torch::Tensor y) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 1 && y.numel() == x.numel());
  const float* in = x.data_ptr<float>();
  float* out = y.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) out[i] = in[i] + 1.0f;
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("add_one", &add_one); }
"""

TORCH_CUDA_EXT = r"""
__global__ void add_one_kernel(const float* x, float* y, int64_t n) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] + 1.0f;
}
void add_one(torch::Tensor x, torch::Tensor y) {
  int64_t n = x.numel();
  add_one_kernel<<<(n + 255) / 256, 256>>>(x.data_ptr<float>(), y.data_ptr<float>(), n);
}
"""


def make_workspace(root: Path, n: int) -> None:
    (root / "defs" / "elementwise").mkdir(parents=True)
    shutil.copy(FIXTURE / "defs" / "elementwise" / "add_one_f32.yaml", root / "defs" / "elementwise")
    for i in range(n):
        d = root / "solutions" / "add_one_f32" / f"cpp_add_{i:03d}"
        d.mkdir(parents=True)
        (d / "solution.yaml").write_text(SOLUTION_YAML.format(i=i))
        shutil.copy(KERNEL / "kernel.cpp", d)
        shutil.copy(KERNEL / "offset.h", d)


def fibuild_cli(root: Path, cache: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "FIBUILD_CACHE_DIR": str(cache), "FIBUILD_ROOT": str(root)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "fibuild", "build", *args], env=env, capture_output=True, text=True)
    return time.perf_counter() - start, out


def timed_python(code: str, env: dict | None = None) -> tuple[float, str]:
    """Wall time of a new interpreter running ``code``, and its last stdout line."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return wall, out.stdout.strip().splitlines()[-1]


def bench_noop_and_parallel(work: Path, n_noop: int, n_par: int, rows: list[str]) -> str:
    """Sections 1 and 2; returns the build dir of one committed kernel for section 3."""
    root = work / "ws"
    make_workspace(root, n_noop)
    sub = work / "ws_sub"
    make_workspace(sub, n_par)
    serial, out1 = fibuild_cli(sub, work / "cache_j1", "--all", "-j", "1")
    parallel, out2 = fibuild_cli(sub, work / "cache_j2", "--all", "-j", "2")
    for out in (out1, out2):
        if out.returncode != 0:
            raise RuntimeError(out.stdout + out.stderr)
    rows.append(f"| first build-all, {n_par} cpp solutions, `-j1` | {serial:.2f} s |")
    rows.append(f"| first build-all, {n_par} cpp solutions, `-j2` | {parallel:.2f} s "
                f"(speed-up {serial / parallel:.2f}x) |")
    # The no-op: build all N once (parallel), then time new processes that find nothing to do.
    cache = work / "cache_noop"
    first, out = fibuild_cli(root, cache, "--all")
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)
    times = []
    for _ in range(3):
        wall, out = fibuild_cli(root, cache, "--all")
        times.append(wall)
    rows.append(f"| (first build-all of the {n_noop} solutions, `-j{os.cpu_count()}`) | {first:.2f} s |")
    rows.append(f"| no-op `fibuild build --all`, {n_noop} solutions, new process (median of 3) | "
                f"{statistics.median(times):.3f} s — `{out.stdout.strip()}` |")
    # The probe sees the same environment as the CLI runs above (compiler variables are key inputs).
    probe = (f"import os, sys; from fibuild.config import Settings; from fibuild.spec.workspace import Workspace\n"
             f"from fibuild.compile.cache import BuildCache\n"
             f"ws = Workspace({str(root)!r}); "
             f"s = Settings.from_env(dict(os.environ, FIBUILD_CACHE_DIR={str(cache)!r}))\n"
             f"sol = ws.solution('add_one_f32/cpp_add_000'); d = ws.definition(sol.definition)\n"
             f"print(BuildCache(s).lookup(d, sol).build_dir)")
    _, build_dir = timed_python(probe)
    return build_dir


def bench_cold_start(work: Path, build_dir: str, rows: list[str]) -> None:
    """Section 3: each loader in a new process with its cache warm, beyond `import torch`."""
    ext_dir = work / "torch_ext"
    ext_dir.mkdir()
    (ext_dir / "add_one.cpp").write_text(TORCH_EXT)
    ffi_dir = work / "tvm_ffi_build"
    call = "x = torch.arange(8, dtype=torch.float32); y = torch.empty_like(x); f(x, y); assert y[3] == 4\n"
    head = "import time, torch\nt0 = time.perf_counter()\n"
    tail = "print(time.perf_counter() - t0)\n"
    programs = {
        "fibuild (`import fibuild` + `load_committed` + call)":
            head + "import fibuild\nfrom fibuild.compile.cache import load_committed\n"
            f"f = load_committed({build_dir!r})\n" + call + tail,
        "`tvm_ffi.cpp.load` (same kernel.cpp)":
            head + "import tvm_ffi.cpp\n"
            f"f = tvm_ffi.cpp.load('bench_add_one', cpp_files=[{str(KERNEL / 'kernel.cpp')!r}], "
            f"extra_include_paths=[{str(KERNEL)!r}], build_directory={str(ffi_dir)!r}).add_one\n" + call + tail,
        "`torch.utils.cpp_extension.load` (same kernel, torch API)":
            head + "from torch.utils.cpp_extension import load\n"
            f"f = load('bench_add_one_ext', [{str(ext_dir / 'add_one.cpp')!r}], "
            f"build_directory={str(ext_dir)!r}).add_one\n" + call + tail,
    }
    base_wall, _ = timed_python("import torch; print(0)")
    base = min(base_wall, timed_python("import torch; print(0)")[0])
    rows.append(f"| `import torch` alone, new process | {base:.3f} s |")
    for label, code in programs.items():
        timed_python(code)  # warm the loader's own cache (builds on first use)
        inner = []
        walls = []
        for _ in range(3):
            wall, beyond = timed_python(code)
            walls.append(wall)
            inner.append(float(beyond))
        rows.append(f"| warm start: {label} | {statistics.median(inner) * 1000:.1f} ms beyond `import torch` "
                    f"(process {statistics.median(walls):.2f} s) |")


def bench_cuda_first_build(work: Path, rows: list[str]) -> None:
    """Section 4: one CUDA kernel, first build, fibuild vs cpp_extension.load_inline."""
    from fibuild.compile.toolchain import cuda_unavailable_reason
    from fibuild.config import Settings

    reason = cuda_unavailable_reason(Settings.from_env())
    if reason:
        rows.append(f"| first CUDA build | skipped: {reason} |")
        return
    code = (
        "import time, sys\n"
        "from fibuild.config import Settings\nfrom fibuild.spec.workspace import Workspace\n"
        "from fibuild.compile.cache import BuildCache\n"
        f"ws = Workspace({str(FIXTURE)!r}); sol = ws.solution('add_one_f32/cuda_add')\n"
        "d = ws.definition(sol.definition)\n"
        f"s = Settings.from_env({{'FIBUILD_CACHE_DIR': {str(work / 'cuda_cache')!r}, "
        "'FIBUILD_CUDA_ARCH_LIST': '9.0a'})\n"
        "t0 = time.perf_counter(); c = BuildCache(s)\n"
        "c.build_many([(d, sol)])\n"
        "print(time.perf_counter() - t0)\n")
    _, fib = timed_python(code)
    rows.append(f"| first build of one CUDA solution (sm_90a), fibuild (compile + link) | {float(fib):.2f} s |")
    import torch

    if torch.version.cuda is None:
        rows.append("| first build of the same CUDA kernel, `cpp_extension.load_inline` | not measurable: "
                    "this torch is a CPU-only build, whose cpp_extension cannot compile CUDA |")
        return
    inline = (
        "import time\nfrom torch.utils.cpp_extension import load_inline\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        f"    load_inline('bench_cuda_add', cpp_sources='void add_one(torch::Tensor x, torch::Tensor y);', "
        f"cuda_sources={TORCH_CUDA_EXT!r}, functions=['add_one'], build_directory={str(work / 'inline')!r}, "
        "extra_cuda_cflags=['-gencode=arch=compute_90a,code=sm_90a'])\n"
        "    status = 'built and loaded'\n"
        "except Exception as e:\n"
        "    status = 'failed: ' + type(e).__name__ + ': ' + str(e).splitlines()[0][:120]\n"
        "print(f'{time.perf_counter() - t0:.2f} s, {status}')\n")
    (work / "inline").mkdir()
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": "9.0a", "CUDA_HOME": str(Settings.from_env().cuda_home)}
    _, result = timed_python(inline, env)
    rows.append(f"| first build of the same CUDA kernel, `cpp_extension.load_inline` | {result} |")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer solutions in the -j comparison")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (default: stdout)")
    parser.add_argument("--noop-solutions", type=int, default=50)
    args = parser.parse_args()
    n_par = 6 if args.quick else 16
    rows = ["| measurement | result |", "|---|---|"]
    with tempfile.TemporaryDirectory(prefix="fibuild-bench-") as tmp:
        work = Path(tmp)
        build_dir = bench_noop_and_parallel(work, args.noop_solutions, n_par, rows)
        bench_cold_start(work, build_dir, rows)
        bench_cuda_first_build(work, rows)
    report = "\n".join(["# fibuild build benchmarks\n", f"Machine: {machine()}.", "",
                        f"Command: `python benchmarks/bench_build.py{' --quick' if args.quick else ''}`"
                        f" ({time.strftime('%Y-%m-%d')}).", "", *rows, ""])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

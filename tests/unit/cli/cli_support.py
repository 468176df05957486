"""A tiny workspace made the way a user makes one: ``fibuild init``, then files written in it."""
from __future__ import annotations

from pathlib import Path

from fibuild.cli import main

DEFINITION = """\
name: toy_double
op_type: toy
axes:
  n: {type: var}
inputs:
  x: {shape: [n], dtype: float32}
outputs:
  y: {shape: [n], dtype: float32}
reference: |
  def run(x):
      return x * 2
workloads:
  - axes: {n: 4}
  - axes: {n: 64}
"""

PYTHON_SOLUTION = """\
name: {name}
definition: toy_double
author: tests
language: python
entry_point: kernel.py::run
sources: [kernel.py]
{extra}"""

CUDA_SOLUTION = """\
name: cuda_double
definition: toy_double
author: tests
language: cuda
entry_point: kernel.cu::run
sources: [kernel.cu]
target_hardware: [sm_90a]
destination_passing_style: true
"""

CUDA_SOURCE = """\
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>
void run(tvm::ffi::TensorView x, tvm::ffi::TensorView y) {}
TVM_FFI_DLL_EXPORT_TYPED_FUNC(run, run);
"""


def make_workspace(root: Path) -> Path:
    """``fibuild init root``, then toy_double with solutions: ``torch`` (right), ``wrong``
    (x * 3), ``needs_dist`` (declares a dependency that is not installed), ``cuda_double``."""
    assert main(["init", str(root)]) == 0
    (root / "defs" / "toy").mkdir()
    (root / "defs" / "toy" / "toy_double.yaml").write_text(DEFINITION)
    for name, body, extra in (("torch", "x * 2", ""), ("wrong", "x * 3", ""),
                              ("needs_dist", "x * 2", "dependencies: [fibuild-test-absent-dist]\n")):
        folder = root / "solutions" / "toy_double" / name
        folder.mkdir(parents=True)
        (folder / "solution.yaml").write_text(PYTHON_SOLUTION.format(name=name, extra=extra))
        (folder / "kernel.py").write_text(f"def run(x):\n    return {body}\n")
    folder = root / "solutions" / "toy_double" / "cuda_double"
    folder.mkdir(parents=True)
    (folder / "solution.yaml").write_text(CUDA_SOLUTION)
    (folder / "kernel.cu").write_text(CUDA_SOURCE)
    return root

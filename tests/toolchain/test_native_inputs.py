"""A native kernel reads its tensors' memory: a negative view (``x._neg_view()``, whose memory
holds x) must never reach it. Real g++ build of the shipped C++ RMSNorm, called through
``fibuild.load``."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from fibuild.errors import InputError
from fibuild.runtime import input_checks
from fibuild.runtime.api import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "runtime"))
from runtime_helpers import DEF, inputs, make_workspace, reference_rmsnorm  # noqa: E402


@pytest.fixture
def native_ws(tmp_path):
    ws = make_workspace(tmp_path)
    shipped = Path(__file__).resolve().parents[2] / "solutions"
    shutil.copytree(shipped / DEF / "cpp_bf16", ws.root / "solutions" / DEF / "cpp_bf16")
    shutil.copytree(shipped / "_lib" / "cpu_bf16_rows", ws.root / "solutions" / "_lib" / "cpu_bf16_rows")
    ws.record("cpp_bf16", 3, 1.0)  # the fastest at batch 3: load resolves to it
    ws.record("torch_fp32", 3, 50.0)
    return ws


def _close(a, b):
    torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


def test_a_negative_view_never_reaches_a_native_kernel(native_ws, monkeypatch):
    x, w = inputs(3)
    kernel = load(DEF, settings=native_ws.settings)
    _close(kernel(x, w), reference_rmsnorm(x, w))
    assert kernel.resolution((3,)).solution.name == "cpp_bf16"
    with pytest.raises(InputError, match="input 'hidden_states': is a negative view"):
        kernel(x._neg_view(), w)
    _close(kernel(x._neg_view().resolve_neg(), w), reference_rmsnorm(-x, w))
    # Without the check the C++ kernel silently computes rmsnorm(x) for -x: the danger is real.
    original = input_checks.guarded
    monkeypatch.setattr("fibuild.runtime.dispatch.guarded",
                        lambda *a, **k: original(*a, **dict(k, reads_memory=False)))
    unguarded = load(DEF, settings=native_ws.settings)
    _close(unguarded(x._neg_view(), w), reference_rmsnorm(x, w))

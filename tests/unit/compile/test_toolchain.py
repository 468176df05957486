"""Toolchain probes and arch handling."""
from __future__ import annotations

import sys

import pytest

from fibuild.compile import toolchain


def test_gencode_flags():
    assert toolchain.gencode_flags(("9.0a",)) == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert toolchain.gencode_flags(("8.0+PTX",)) == ["-gencode=arch=compute_80,code=[sm_80,compute_80]"]
    assert toolchain.gencode_flags(("10.0f",)) == ["-gencode=arch=compute_100f,code=sm_100f"]
    with pytest.raises(ValueError, match="not a CUDA arch: 'hopper'"):
        toolchain.gencode_flags(("hopper",))


def test_cuda_archs_from_settings_sorted_and_unique(make_settings):
    assert toolchain.cuda_archs(make_settings(FIBUILD_CUDA_ARCH_LIST="9.0a;8.0;9.0a")) == ("8.0", "9.0a")


def test_cuda_archs_default_is_visible_gpu_or_90a(make_settings):
    expected = toolchain.visible_gpu_arch() or "9.0a"
    assert toolchain.cuda_archs(make_settings()) == (expected,)


def test_cuda_unavailable_without_cuda_home(make_settings, tmp_path):
    reason = toolchain.cuda_unavailable_reason(make_settings(CUDA_HOME=str(tmp_path / "nowhere")))
    assert reason and "does not exist" in reason and "nowhere" in reason
    (tmp_path / "empty").mkdir()
    reason = toolchain.cuda_unavailable_reason(make_settings(CUDA_HOME=str(tmp_path / "empty")))
    assert reason and "no nvcc at" in reason


def test_host_compiler_is_resolved_and_versioned():
    cxx = toolchain.host_compiler()
    if cxx is None:
        pytest.skip("no c++ here")
    assert cxx.path.startswith("/") and cxx.version


def test_host_compiler_keeps_the_name_it_is_run_by(tmp_path, monkeypatch):
    """``/usr/bin/clang++`` links to ``clang``: resolved, it would run as a C compiler."""
    real = tmp_path / "llvm" / "clang"
    real.parent.mkdir()
    real.write_text('#!/bin/sh\necho "${0##*/} version 99"\n')
    real.chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "clang++").symlink_to(real)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    toolchain.host_compiler.cache_clear()
    try:
        cxx = toolchain.host_compiler("clang++")
        assert cxx.path == str(tmp_path / "bin" / "clang++") and cxx.version == "clang++ version 99"
    finally:
        monkeypatch.undo()
        toolchain.host_compiler.cache_clear()


def test_tvm_ffi_paths_without_importing_torch():
    # A fresh interpreter: the probe must not import tvm_ffi (which imports torch).
    import subprocess

    code = ("import sys; from fibuild.compile import toolchain; p = toolchain.tvm_ffi_paths(); "
            "print(p.version, 'torch' in sys.modules, 'tvm_ffi' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1:] == ["False", "False"] and out[0]
    paths = toolchain.tvm_ffi_paths()
    from pathlib import Path

    assert (Path(paths.include_dir) / "tvm" / "ffi" / "function.h").is_file()
    assert Path(paths.library).is_file()

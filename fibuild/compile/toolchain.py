"""Toolchain probes: compilers, CUDA, tvm-ffi and Triton, as plain strings for the build key.

Each probe runs at most once per process (``functools.cache``) and never imports torch:
package versions come from installed metadata and tvm-ffi's paths from its package
location, because ``import tvm_ffi`` imports torch (over a second on a CPU machine).
``CUDA_HOME`` comes from Settings only, never from the ``nvcc`` on PATH (that can be a
wrapper script).
"""
from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fibuild.config import Settings

# Heavy or optional dependencies, imported inside the functions that use them:
# importlib.metadata, importlib.util, tvm_ffi.

#: Default CUDA arch when FIBUILD_CUDA_ARCH_LIST is empty and no GPU is visible.
DEFAULT_CUDA_ARCH = "9.0a"


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def package_version(dist: str) -> str | None:
    """Installed version of distribution ``dist`` (metadata only, no import), or None."""
    import importlib.metadata  # ~15 ms; only key computation needs it

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Compiler:
    """A resolved host C++ compiler: absolute path and its ``--version`` first line."""

    path: str
    version: str


@functools.cache
def host_compiler(name: str = "c++") -> Compiler | None:
    """The C++ compiler ``name`` on PATH as an absolute path; None when absent.

    Links are not resolved: a compiler driver picks its mode from the name it is run by
    (``/usr/bin/clang++`` links to ``clang``, which run as ``clang`` compiles C and links
    without the C++ library). Its identity in build keys is the ``--version`` line.
    """
    found = shutil.which(name)
    if not found:
        return None
    version = _first_line([found, "--version"])
    if version is None:
        return None
    return Compiler(path=os.path.abspath(found), version=version)


@functools.cache
def _nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    text = out.stdout
    # The last line names the exact build: "Build cuda_13.0.r13.0/compiler.36424714_0".
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    release = next((ln for ln in lines if "release" in ln), "")
    return f"{release} {lines[-1]}".strip() if lines else None


def nvcc_path(settings: Settings) -> Path:
    """``$CUDA_HOME/bin/nvcc`` (it may not exist; see :func:`cuda_unavailable_reason`)."""
    return settings.cuda_home / "bin" / "nvcc"


def nvcc_version(settings: Settings) -> str | None:
    """The ``nvcc --version`` release and build lines of ``$CUDA_HOME``'s nvcc, or None."""
    path = nvcc_path(settings)
    return _nvcc_version(str(path)) if path.is_file() else None


def cuda_unavailable_reason(settings: Settings) -> str | None:
    """Why CUDA sources cannot be compiled here, or None when they can."""
    if not settings.cuda_home.is_dir():
        return f"CUDA_HOME {settings.cuda_home} does not exist (set CUDA_HOME)"
    nvcc = nvcc_path(settings)
    if not nvcc.is_file():
        return f"no nvcc at {nvcc} (CUDA_HOME={settings.cuda_home})"
    if nvcc_version(settings) is None:
        return f"{nvcc} --version failed"
    if host_compiler() is None:
        return "no C++ host compiler (c++) on PATH"
    return None


def cxx_unavailable_reason() -> str | None:
    """Why C++ sources cannot be compiled here, or None when they can."""
    return None if host_compiler() is not None else "no C++ compiler (c++) on PATH"


@dataclass(frozen=True)
class TvmFfiPaths:
    version: str
    include_dir: str
    lib_dir: str
    library: str


@functools.cache
def tvm_ffi_paths() -> TvmFfiPaths | None:
    """tvm-ffi's version, include dir and ``libtvm_ffi`` without importing the package.

    Falls back to ``tvm_ffi.libinfo`` (which imports torch) only if the installed layout
    is not the wheel's ``tvm_ffi/{include,lib}``.
    """
    import importlib.util

    version = package_version("apache-tvm-ffi")
    spec = importlib.util.find_spec("tvm_ffi")
    if version is None or spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(list(spec.submodule_search_locations)[0])
    include, lib = pkg / "include", pkg / "lib" / "libtvm_ffi.so"
    if include.is_dir() and lib.is_file():
        return TvmFfiPaths(version, str(include), str(lib.parent), str(lib))
    from tvm_ffi import libinfo  # layout differs (a source build): ask the package

    lib_path = Path(libinfo.find_libtvm_ffi())
    return TvmFfiPaths(version, str(libinfo.find_include_path()), str(lib_path.parent), str(lib_path))


@functools.cache
def visible_gpu_arch() -> str | None:
    """Compute capability of the first visible GPU as ``"9.0a"``-style text, or None.

    Asks ``nvidia-smi`` (no CUDA context, no torch); archs 9.0 and up get the ``a``
    suffix so arch-specific instructions (wgmma, tcgen05) are available.
    """
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    line = _first_line([smi, "--query-gpu=compute_cap", "--format=csv,noheader"])
    if not line:
        return None
    try:
        major = int(line.split(".")[0])
    except ValueError:
        return None
    return f"{line}a" if major >= 9 else line


def cuda_archs(settings: Settings) -> tuple[str, ...]:
    """Archs to build for, sorted: FIBUILD_CUDA_ARCH_LIST, else the visible GPU's, else 9.0a."""
    archs = settings.cuda_arch_list or ((visible_gpu_arch() or DEFAULT_CUDA_ARCH),)
    return tuple(sorted(set(archs)))


def gencode_flags(archs: tuple[str, ...]) -> list[str]:
    """nvcc ``-gencode`` flags: ``9.0a`` -> ``arch=compute_90a,code=sm_90a``; ``+PTX`` adds PTX.

    Raises ValueError on text that is not an arch (the caller turns it into BuildError).
    """
    flags = []
    for arch in archs:
        ptx = arch.endswith("+PTX")
        base = arch[:-4] if ptx else arch
        suffix = base[-1] if base and base[-1] in "af" else ""
        digits = (base[:-1] if suffix else base).replace(".", "")
        if not digits.isdigit():
            raise ValueError(f"not a CUDA arch: {arch!r} (expected e.g. 9.0a or 8.0+PTX)")
        sm = f"{digits}{suffix}"
        code = f"sm_{sm},compute_{sm}" if ptx else f"sm_{sm}"
        flags.append(f"-gencode=arch=compute_{sm},code=[{code}]" if ptx else f"-gencode=arch=compute_{sm},code={code}")
    return flags


def machine() -> str:
    """CPU architecture and OS of native artifacts, e.g. ``x86_64-linux``."""
    return f"{platform.machine()}-{platform.system().lower()}"

"""Device identity: the slug that names registry files, and the environment recorded with
every evaluation.

``device_slug("cuda")`` reads like ``nvidia-h100-80gb-hbm3-sm90`` (device name plus compute
capability); ``device_slug("cpu")`` like ``cpu-amd-epyc``. Both are cached per process
(one probe, then a dict hit). Nothing here runs at import.
"""
from __future__ import annotations

import functools
import importlib.metadata
import platform
import re
from pathlib import Path
from typing import Any

from .errors import BenchError

#: Distribution names whose versions go into every evaluation's environment.
_PACKAGES = {"torch": "torch", "triton": "triton", "tvm_ffi": "apache-tvm-ffi",
             "flashinfer": "flashinfer-python"}


def slugify(text: str) -> str:
    """Lowercase ``text``; every run of non-alphanumerics becomes one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _split(device: str) -> tuple[str, int]:
    """``"cuda:1"`` -> ``("cuda", 1)``; ``"cpu"`` -> ``("cpu", 0)``. BenchError on others."""
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "cpu") or (index and not index.isdigit()):
        raise BenchError(f"device {device!r}: expected cpu, cuda or cuda:N")
    return kind, int(index or 0)


@functools.cache
def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo ("model name"), else platform.processor()/machine()."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass  # not Linux: fall back to what platform knows
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def _cuda_identity(index: int) -> tuple[str, tuple[int, int]]:
    import torch

    if not torch.cuda.is_available():
        raise BenchError("device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if index >= torch.cuda.device_count():
        raise BenchError(f"device cuda:{index}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))


@functools.cache
def device_slug(device: str = "cuda") -> str:
    """The registry name of ``device`` (``cpu``, ``cuda`` or ``cuda:N``).

    Raises BenchError for an unknown device string or a missing GPU. Cost: one probe per
    process and device, then a cache hit.
    """
    kind, index = _split(device)
    if kind == "cpu":
        return "cpu-" + (slugify(cpu_model_name()) or "unknown")
    name, (major, minor) = _cuda_identity(index)
    return f"{slugify(name)}-sm{major}{minor}"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None  # not installed: recorded as null, never imported to find out


@functools.cache
def _environment(device: str) -> tuple[tuple[str, Any], ...]:
    kind, index = _split(device)
    env: dict[str, Any] = {"device": device_slug(device), "device_kind": kind}
    if kind == "cpu":
        env["device_name"] = cpu_model_name()
        env["compute_capability"] = None
    else:
        name, (major, minor) = _cuda_identity(index)
        env["device_name"] = name
        env["compute_capability"] = f"{major}.{minor}"
    import torch

    env["cuda"] = torch.version.cuda
    env["driver"] = _driver_version() if kind == "cuda" else None
    for key, dist in _PACKAGES.items():
        env[key] = _version(dist)
    from . import __version__

    env["fibuild"] = __version__  # also when run from a checkout that is not installed
    env["python"] = platform.python_version()
    return tuple(env.items())


def _driver_version() -> str | None:
    """The NVIDIA driver version, from the kernel module's proc file (no nvidia-smi call)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return match.group(1) if match else None


def device_environment(device: str = "cuda") -> dict[str, Any]:
    """What an evaluation on ``device`` ran with: device name, compute capability, driver,
    CUDA, torch, triton, tvm-ffi, flashinfer (None when absent), fibuild, Python.

    Holds no host name. Raises BenchError like :func:`device_slug`. Cached per process;
    returns a fresh dict each call so callers may add to it.
    """
    return dict(_environment(device))

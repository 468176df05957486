"""Device identity: one typed :class:`Device`, parsed once, shared by bench and resolver.

A device is named two ways. A *kind* (``cpu``, ``cuda``, ``cuda:N``) names a device of this
machine; :meth:`Device.parse` probes it. A *slug* names a registry file and reads like
``nvidia-h100-80gb-hbm3-sm90`` (device name plus compute capability) or ``cpu-amd-epyc``;
:meth:`Device.from_slug` makes a Device from one without probing (it may be another
machine's). :meth:`Device.matches` decides whether a solution's ``target_hardware`` admits
the device: the bench runner skips what it does not match and the resolver excludes it, by
the same rule. :func:`resolve_device_arg` turns a ``--device`` argument (kind or slug) into a
Device. Every device problem raises ConfigError. Probes are cached per process; nothing
runs at import (torch is imported by the first CUDA probe).
"""
from __future__ import annotations

import functools
import importlib.metadata
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import __version__
from .errors import ConfigError

# Heavy or optional dependencies, imported inside the functions that use them: torch.

#: Distribution names whose versions go into every evaluation's environment.
_PACKAGES = {"torch": "torch", "triton": "triton", "tvm_ffi": "apache-tvm-ffi",
             "flashinfer": "flashinfer-python"}
#: target_hardware words that admit any device, and those that admit any GPU.
_ANY_WORDS = ("any", "all")
_GPU_WORDS = ("cuda", "gpu", "nvidia")
_KIND_HELP = "expected cpu, cuda or cuda:N"


def slugify(text: str) -> str:
    """Lowercase ``text``; every run of non-alphanumerics becomes one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def parse_kind(text: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; ``"cuda"`` -> ``("cuda", None)``; ``"cpu"`` ->
    ``("cpu", None)``. Syntax only (no probe); ConfigError for anything else."""
    kind, colon, index = text.strip().lower().partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise ConfigError(f"device {text!r}: {_KIND_HELP}")
    return kind, int(index) if colon else None


def is_kind(text: str) -> bool:
    """Whether ``text`` is a device kind (``cpu``, ``cuda``, ``cuda:N``) rather than a slug."""
    try:
        parse_kind(text)
    except ConfigError:
        return False
    return True


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


def cuda_count() -> int:
    """Visible CUDA devices (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Device:
    """One device: ``kind`` (``cpu`` | ``cuda``), CUDA ``index`` (None for the CPU and for a
    device known only by its slug), ``name``, ``compute_capability`` ((major, minor) or
    None), ``slug`` (the registry name) and ``local`` (whether it is this machine's)."""

    kind: str
    index: int | None
    name: str
    compute_capability: tuple[int, int] | None
    slug: str
    local: bool = True

    @classmethod
    def parse(cls, text: str) -> "Device":
        """The device of this machine named by kind ``text`` (``cuda`` is ``cuda:0``).

        Raises ConfigError for a malformed kind, no CUDA, or an index past the visible
        GPUs. Cost: one probe per process and device, then a cache hit.
        """
        kind, index = parse_kind(text)
        return _probe(kind, 0 if kind == "cuda" and index is None else index)

    @classmethod
    def from_slug(cls, slug: str) -> "Device":
        """A Device known only by its registry slug (no probe; ``local`` is False).

        The compute capability comes from an ``-smNN`` suffix (last digit the minor).
        Raises ConfigError for text that is not a slug.
        """
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug):
            raise ConfigError(f"device {slug!r}: not a device slug (like nvidia-h100-80gb-hbm3-sm90 "
                              "or cpu-amd-epyc)")
        if slug.startswith("cpu-") or slug == "cpu":
            return cls("cpu", None, "", None, slug, local=False)
        sm = re.search(r"-sm(\d+)(\d)$", slug)
        cc = (int(sm.group(1)), int(sm.group(2))) if sm else None
        return cls("cuda", None, "", cc, slug, local=False)

    @property
    def torch_device(self) -> str:
        """``cpu`` or ``cuda:N``, as torch takes it (ConfigError for a slug-only GPU)."""
        if self.kind == "cpu":
            return "cpu"
        if self.index is None:
            raise ConfigError(f"device {self.slug}: not a device of this machine")
        return f"cuda:{self.index}"

    def mismatch(self, target_hardware: Sequence[str]) -> str:
        """Why ``target_hardware`` excludes this device ("" when it admits it).

        Empty, ``any`` or ``all`` admit every device; ``cpu`` admits CPUs; ``cuda``, ``gpu``,
        ``nvidia`` any GPU; ``sm90``, ``sm_90a``, ``9.0`` the GPUs of that compute capability;
        any other word a GPU whose slug contains it (``h100``).
        """
        if not target_hardware:
            return ""
        for target in target_hardware:
            t = target.strip().lower()
            if t in _ANY_WORDS:
                return ""
            if self.kind == "cpu":
                if t == "cpu":
                    return ""
                continue
            if t in _GPU_WORDS:
                return ""
            arch = re.fullmatch(r"(?:sm_?|compute_?)?(\d+)\.?(\d)?a?", t)
            if arch:
                if self.compute_capability is not None and \
                        arch.group(1) + (arch.group(2) or "") == "%d%d" % self.compute_capability:
                    return ""
                continue
            if t != "cpu" and slugify(t) and slugify(t) in self.slug:
                return ""
        return f"target_hardware [{', '.join(target_hardware)}] does not include {self.slug}"

    def matches(self, target_hardware: Sequence[str]) -> bool:
        """Whether a solution with this ``target_hardware`` runs on this device."""
        return not self.mismatch(target_hardware)

    def environment(self) -> dict[str, Any]:
        """What an evaluation on this device ran with: device name, compute capability,
        driver, CUDA, torch, triton, tvm-ffi, flashinfer (None when absent), fibuild, Python.

        Holds no host name. Cached per process; a fresh dict each call.
        """
        return dict(_environment(self))


@functools.cache
def _probe(kind: str, index: int | None) -> Device:
    if kind == "cpu":
        name = cpu_model_name()
        return Device("cpu", None, name, None, "cpu-" + (slugify(name) or "unknown"))
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device cuda:{index}: only {torch.cuda.device_count()} CUDA device(s) visible")
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    return Device("cuda", index, name, (major, minor), f"{slugify(name)}-sm{major}{minor}")


def local_devices(text: str) -> list[Device]:
    """The devices kind ``text`` names here: every visible GPU for ``cuda``, one otherwise.

    Raises ConfigError like :meth:`Device.parse` (``cuda`` with no GPU visible included).
    """
    kind, index = parse_kind(text)
    if kind == "cuda" and index is None:
        count = cuda_count()
        if count == 0:
            raise ConfigError("device cuda: no CUDA device is visible")
        return [_probe("cuda", i) for i in range(count)]
    return [Device.parse(text)]


def default_device(settings) -> str:
    """The device kind to run on: ``settings.device``, else ``cuda`` when available, else ``cpu``."""
    if settings.device:
        return settings.device
    return "cuda" if cuda_count() else "cpu"


def local_slugs() -> dict[str, Device]:
    """This machine's devices by slug: the CPU and every visible GPU."""
    found = {d.slug: d for d in [Device.parse("cpu")] + [_probe("cuda", i) for i in range(cuda_count())]}
    return found


def resolve_device_arg(text: str, known_slugs: Iterable[str] = ()) -> Device:
    """The Device a ``--device`` argument names: a kind (``cpu``, ``cuda``, ``cuda:N``), a
    slug of this machine's devices, or one of ``known_slugs`` (e.g. the registry's devices
    of a definition; such a Device has ``local`` False).

    Raises ConfigError naming what was expected (and the known slugs) for anything else.
    Cost: a device probe (cached).
    """
    text = text.strip()
    if is_kind(text):
        return Device.parse(text)
    here = local_slugs()
    if text in here:
        return here[text]
    known = sorted(set(known_slugs))
    if text in known:
        return Device.from_slug(text)
    listed = ", ".join(sorted(set(here) | set(known)))
    raise ConfigError(f"device {text!r}: {_KIND_HELP}, or a device slug ({listed})")


def device_named(text: str | None, settings=None, *, known_slugs: Iterable[str] = (),
                 any_slug: bool = False) -> Device:
    """The Device that device text names; every ``--device``/``device=`` is read here.

    Empty: ``settings``' kind (FIBUILD_DEVICE, else cuda when present, else cpu). A kind
    (``cpu``, ``cuda``, ``cuda:N``); a slug of this machine's devices; one of ``known_slugs``
    (e.g. the registry's devices); with ``any_slug``, any well-formed slug (another
    machine's: ``local`` False). Raises ConfigError naming what was expected otherwise.
    Cost: a device probe (cached).
    """
    text = (text or "").strip()
    if not text:
        text = default_device(settings)
    if is_kind(text):
        return Device.parse(text.lower())
    known = list(known_slugs) + ([Device.from_slug(text).slug] if any_slug else [])
    return resolve_device_arg(text, known_slugs=known)


def device_slug(device: str = "cuda") -> str:
    """The registry slug of kind ``device`` (``cpu``, ``cuda``, ``cuda:N``); ConfigError as
    :meth:`Device.parse`."""
    return Device.parse(device).slug


def device_environment(device: str = "cuda") -> dict[str, Any]:
    """:meth:`Device.environment` of kind ``device``; ConfigError as :meth:`Device.parse`."""
    return Device.parse(device).environment()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None  # not installed: recorded as null, never imported to find out


def _driver_version() -> str | None:
    """The NVIDIA driver version, from the kernel module's proc file (no nvidia-smi call)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return match.group(1) if match else None


@functools.cache
def _environment(device: Device) -> tuple[tuple[str, Any], ...]:
    import torch

    cc = device.compute_capability
    env: dict[str, Any] = {"device": device.slug, "device_kind": device.kind, "device_name": device.name,
                           "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
                           "cuda": torch.version.cuda,
                           "driver": _driver_version() if device.kind == "cuda" else None}
    for key, dist in _PACKAGES.items():
        env[key] = _version(dist)
    env["fibuild"] = __version__  # also when run from a checkout that is not installed
    env["python"] = platform.python_version()
    return tuple(env.items())

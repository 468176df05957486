"""What every subcommand shares: the ``--device`` reading, JSON output, a rich console.

Only the standard library is imported at module level; torch is imported only when a
device has to be probed.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceChoice:
    """What ``--device`` named. ``slug`` names registry files; ``kind`` (``cpu``, ``cuda``,
    ``cuda:N``) is set when the device is this machine's, so work can run on it."""

    slug: str
    kind: str | None

    @property
    def here(self) -> bool:
        return self.kind is not None


def _is_kind(text: str) -> bool:
    kind, sep, index = text.partition(":")
    return (kind == "cpu" and not sep) or (kind == "cuda" and (not sep or index.isdigit()))


def local_devices() -> dict[str, str]:
    """This machine's devices, ``slug -> kind``: the CPU, then each visible GPU (``cuda:N``).

    Cost: the first call imports torch and probes the GPUs (cached by fibuild.devices).
    """
    from fibuild.devices import device_slug

    found = {device_slug("cpu"): "cpu"}
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        gpus: dict[str, list[int]] = {}
        for index in range(count):
            gpus.setdefault(device_slug(f"cuda:{index}"), []).append(index)
        for slug, indices in gpus.items():
            # A slug every visible GPU shares means all of them, as the kind ``cuda`` does.
            found[slug] = "cuda" if len(indices) == count else f"cuda:{indices[0]}"
    return found


def recorded_devices(workspace) -> list[str]:
    """Device slugs with an evaluation file anywhere in ``workspace``'s registry, sorted."""
    from fibuild.registry import WORKLOADS_FILE

    return sorted({p.stem for p in workspace.registry_dir.glob("*/*.jsonl") if p.name != WORKLOADS_FILE})


def parse_device(text: str, workspace, *, local_only: bool = False) -> DeviceChoice:
    """Read a ``--device`` value: a kind (``cpu``, ``cuda``, ``cuda:N``) or a device slug.

    A kind must be present here (BenchError otherwise, from fibuild.devices). A slug must
    name this machine's CPU or a visible GPU, or (unless ``local_only``: the command runs
    work here) a device with records in the workspace's registry; anything else raises
    FibuildError listing the known slugs. Cost: one device probe (torch import).
    """
    from fibuild.devices import device_slug
    from fibuild.errors import FibuildError

    value = text.strip()
    if _is_kind(value.lower()):
        kind = value.lower()
        return DeviceChoice(device_slug(kind), kind)
    here = local_devices()
    if value in here:
        return DeviceChoice(value, here[value])
    recorded = [] if local_only else recorded_devices(workspace)
    if value in recorded:
        return DeviceChoice(value, None)
    known = sorted(set(here) | set(recorded))
    what = "this machine's devices" if local_only else "known devices"
    raise FibuildError(f"--device {text!r}: not a device kind (cpu, cuda, cuda:N) nor a known slug; "
                       f"{what}: {', '.join(known)}")


def print_json(data: Any) -> None:
    """One JSON document on stdout (indented, a final newline)."""
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def console(stderr: bool = False):
    """A rich Console; when not a terminal, wide enough that names are never folded."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=200)

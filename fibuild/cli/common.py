"""What every subcommand shares: the ``--device`` reading, JSON output, a rich console.

torch is imported only when a device has to be probed, rich only when a console is made.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from fibuild.devices import device_named, is_kind, local_devices
from fibuild.errors import ConfigError
from fibuild.registry import WORKLOADS_FILE

# Heavy or optional dependencies, imported inside the functions that use them: rich.


@dataclass(frozen=True)
class DeviceChoice:
    """What ``--device`` named. ``slug`` names registry files; ``kind`` (``cpu``, ``cuda``,
    ``cuda:N``) is set when the device is this machine's, so work can run on it."""

    slug: str
    kind: str | None

    @property
    def here(self) -> bool:
        return self.kind is not None


def recorded_devices(workspace) -> list[str]:
    """Device slugs with an evaluation file anywhere in ``workspace``'s registry, sorted."""
    return sorted({p.stem for layer in workspace.layers for p in (layer / "registry").glob("*/*.jsonl")
                   if p.name != WORKLOADS_FILE})


def parse_device(text: str, workspace, *, local_only: bool = False) -> DeviceChoice:
    """Read a ``--device`` value: a kind (``cpu``, ``cuda``, ``cuda:N``) or a device slug.

    A kind must be present here. A slug must name this machine's CPU or a visible GPU, or
    (unless ``local_only``: the command runs work here) a device with records in the
    workspace's registry. Anything else raises ConfigError listing the known slugs. A GPU
    slug that every visible GPU shares means them all, as ``cuda`` does. Cost: one device
    probe (torch import), cached by fibuild.devices.
    """
    try:
        device = device_named(text, known_slugs=[] if local_only else recorded_devices(workspace))
    except ConfigError as exc:
        raise ConfigError(f"--{exc}" + (" (this command runs on this machine's devices only)"
                                         if local_only else "")) from None
    if not device.local:
        return DeviceChoice(device.slug, None)
    if is_kind(text):
        return DeviceChoice(device.slug, text.strip().lower())
    if device.kind == "cpu":
        return DeviceChoice(device.slug, "cpu")
    gpus = local_devices("cuda")
    sharing = [d for d in gpus if d.slug == device.slug]
    return DeviceChoice(device.slug, "cuda" if len(sharing) == len(gpus) else f"cuda:{device.index}")


def print_json(data: Any) -> None:
    """One JSON document on stdout (indented, a final newline)."""
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def console(stderr: bool = False):
    """A rich Console that prints text as given: markup and highlighting are off, so a
    name or message holding brackets (``[cuda]``, ``[red]``) is never read as a style. Style
    with :func:`styled`. When not a terminal, wide enough that names are never folded."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, width=width, markup=False, highlight=False)


def styled(word: str, style: str, rest: str = ""):
    """``word`` in ``style`` followed by ``rest``, both printed as given (a rich Text)."""
    from rich.text import Text

    return Text.assemble((word, style), rest)

"""``fibuild resolve NAME --axes k=v[,k=v...]``: which solution runs a key, and why.

Axis values are checked in ``run_resolve`` (not by argparse) so a bad one exits 1 with a
message, like every other user error.
"""
from __future__ import annotations

import argparse

from fibuild.bench.compare import MODES
from fibuild.cli.common import parse_device, print_json
from fibuild.compile.cache import BuildCache
from fibuild.errors import FibuildError, ResolveError
from fibuild.runtime.api import resolve
from fibuild.runtime.collect import target_device
from fibuild.runtime.decisions import format_key
from fibuild.runtime.resolve import POLICIES
from fibuild.spec.workspace import Workspace
from fibuild.units import format_us


def add_resolve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("definition", metavar="NAME", help="the definition to resolve")
    parser.add_argument("--axes", action="append", default=[], metavar="AXIS=N[,AXIS=N...]",
                        help="var-axis values, e.g. batch_size=32 (repeatable)")
    parser.add_argument("--policy", choices=POLICIES, default="nearest",
                        help="first policy tried; the chain exact, nearest, def_best, baseline, "
                             "reference goes on after it (default: nearest)")
    parser.add_argument("--mode", choices=MODES, default="eager",
                        help="the cost ranked: eager (max of host and GPU time per call, the default) "
                             "or graph (GPU time, for calls captured in a CUDA graph)")
    parser.add_argument("--strict", action="store_true",
                        help="try only --policy; exit 1 when it has no answer")
    parser.add_argument("--device", metavar="DEVICE",
                        help="cpu, cuda, cuda:N, or a device slug such as nvidia-h100-80gb-hbm3-sm90 "
                             "(a slug with records in registry/ answers from them; unknown slugs are errors)")
    parser.add_argument("--explain", action="store_true", help="print the decision trace")


def parse_axes(items: list[str]) -> dict[str, str]:
    """``["batch_size=32,k=4", "m=8"]`` -> ``{"batch_size": "32", ...}``.

    Values stay strings: the definition decides which names are valid and
    ``key_from_axes`` checks the integers. Raises ResolveError for a malformed item or a
    name given twice.
    """
    axes: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or not name or not value.strip():
                raise ResolveError(f"--axes {part!r}: expected AXIS=N, e.g. batch_size=32")
            if name in axes:
                raise ResolveError(f"--axes: axis {name!r} given twice")
            axes[name] = value.strip()
    return axes


def build_status(resolution, settings, here: bool) -> str:
    """``committed (<dir>)``, ``failed (<dir>)``, ``not built``, or why it was not checked."""
    if resolution.solution is None:
        return "none needed (the reference runs as Python)"
    if not here:
        return "not checked (the device is not this machine)"

    try:
        defn = Workspace.discover(settings).definition(resolution.definition)
        status, directory, _ = BuildCache(settings).status(defn, resolution.solution)
    except FibuildError as exc:
        return f"unknown ({str(exc).splitlines()[0]})"
    return {"committed": f"committed ({directory})", "failed": f"failed (log in {directory})"}.get(
        status, "not built (built on first use)")


def run_resolve(args: argparse.Namespace, settings) -> int:
    axes = parse_axes(args.axes)
    device = args.device
    if device is not None:
        device = parse_device(device, Workspace.discover(settings)).slug
    res = resolve(args.definition, axes, policy=args.policy, device=device,
                  strict=args.strict, settings=settings, mode=args.mode)
    _, here = target_device(settings, device)
    status = build_status(res, settings, here)
    if args.json:
        data = {"ok": True, **res.to_dict()}
        data["build_status"] = status
        print_json(data)
        return 0
    latency = "-"
    if res.latency_us is not None:
        latency = format_us(res.latency_us)
        if res.evaluated_key is not None and res.evaluated_key != res.key:
            latency += f" (measured at {format_key(res.evaluated_key)})"
    rows = [("solution", res.solution_name), ("language", res.language), ("policy", res.policy),
            ("mode", res.mode), ("verdict", res.verdict or "-"), ("baseline", res.baseline or "-"),
            ("latency", latency), ("build key", res.build_key or "-"), ("build", status)]
    if res.borrowed:
        rows.insert(3, ("borrowed", f"evaluations of {res.borrowed}"))
    print(f"{res.definition} at {', '.join(f'{k}={v}' for k, v in res.axes().items())} on {res.device}")
    for label, value in rows:
        print(f"  {label:<10} {value}")
    if args.explain:
        print("decisions:")
        for note in res.all_notes():
            print(f"  note: {note}")
        for d in res.decisions:
            print(f"  - {d}")
    return 0

"""``fibuild chain NAME``: time a chain's slots in sequence and record each slot's choice.

Runs on this machine's device (``--device``, default FIBUILD_DEVICE, else cuda when there is
one); one line per timing; the choices go to ``registry/<definition>/chains/<device>.jsonl``.
"""
from __future__ import annotations

import argparse
import sys

from fibuild.bench.chain import evaluate_chain
from fibuild.cli.common import parse_device, print_json
from fibuild.cli.resolve import parse_axes
from fibuild.devices import default_device
from fibuild.errors import FibuildError
from fibuild.registry import Registry
from fibuild.spec.chain import chain_files, find_chain
from fibuild.spec.workspace import Workspace


def add_chain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("chain", metavar="NAME", help="a chain of the workspace (chains/NAME.yaml)")
    parser.add_argument("--axes", action="append", default=[], metavar="AXIS=N[,AXIS=N...]",
                        help="the chain's axis values (repeatable); default: every workload of the chain")
    parser.add_argument("--device", metavar="DEVICE", default="", help="cpu, cuda, cuda:N or this GPU's slug")
    parser.add_argument("--layers", type=int, default=8,
                        help="distinct input sets (layers) per slot, timed in one graph (default 8)")
    parser.add_argument("--iters", type=int, default=30, help="timed replays per assignment (default 30)")
    parser.add_argument("--candidates", type=int, default=4,
                        help="per slot, the solutions (variants) fastest alone that are tried in the chain (default 4)")
    parser.add_argument("--dry-run", action="store_true", help="time and print, record nothing")


def run_chain(args: argparse.Namespace, settings) -> int:
    if args.layers < 1 or args.iters < 1 or args.candidates < 1:
        raise FibuildError("--layers, --iters and --candidates must be at least 1")
    ws = Workspace.discover(settings)
    # the first layer holding it (the user workspace, then the shipped library beneath)
    root = next((layer for layer in ws.layers if any(p.stem == args.chain for p in chain_files(layer))), ws.root)
    chain = find_chain(root, args.chain, ws.definitions)
    device = parse_device(args.device or default_device(settings), ws, local_only=True)
    workloads = [{k: int(v) for k, v in parse_axes(args.axes).items()}] if args.axes else list(chain.workloads)
    registry = Registry.of(ws)
    results = []
    for axes in workloads:
        try:
            axes = {k: int(v) for k, v in axes.items()}
        except ValueError as exc:
            raise FibuildError(f"--axes: {exc}") from None
        print(f"chain {chain.name} at {', '.join(f'{k}={v}' for k, v in axes.items())} on {device.slug}",
              file=sys.stderr, flush=True)
        result = evaluate_chain(ws, chain, axes, device=device.kind, device_slug=device.slug, settings=settings,
                                registry=registry, layers=args.layers, iters=args.iters, candidates=args.candidates,
                                progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
        records = result.records()
        if not args.dry_run:
            for record in records:
                registry.append_chain(record)
        results.append({"axes": axes, "latency_us": result.latency_us, "slots": records})
    if args.json:
        print_json({"ok": True, "chain": chain.name, "device": device.slug, "results": results})
    else:
        for r in results:
            print(f"{', '.join(f'{k}={v}' for k, v in r['axes'].items())}: {r['latency_us']:.2f} µs per layer: "
                  + ", ".join(f"{s['slot_name']}={s['solution']}" for s in r["slots"]))
    return 0

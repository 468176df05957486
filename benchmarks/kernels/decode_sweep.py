"""Check and time paged decode attention: fibuild's Triton split-KV variants against FlashInfer's run.

For each workload of the page-size-1 and -16 decode definitions: inputs as ``fibuild bench``
makes them (CUDA), the reference output once; every candidate checked against it, then its
*run* timed with fibuild's CUDA-event timer (L2 flushed before each sample, samples queued
behind a GPU sleep), its plan made beforehand and timed apart. Candidates: FlashInfer's
CUDA-core and tensor-core decode wrappers, and the Triton solution under several split
policies and launch shapes. A device-to-device copy measured in the same run is the
bandwidth ceiling: % of copy = KV bytes read per second / copy bandwidth (read + write).
Also captures each candidate's run in a CUDA graph and replays it (output checked).

    python3 benchmarks/kernels/decode_sweep.py --out "$OUT" [--quick]

Writes ``<out>/decode_sweep.md`` (one table per definition) and ``<out>/decode_sweep.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEFINITIONS = ("gqa_paged_decode_h32_kv8_d128_ps1", "gqa_paged_decode_h32_kv8_d128_ps16")
# Triton variants: label -> make_plan keywords (waves of programs aimed at, min chunk tokens, stages).
VARIANTS = {
    "fused_w4_c128_s3": dict(),  # the solution's defaults
    "sep_w4_c128_s3": dict(fused=False),
    "fused_w8_c64_s3": dict(target_waves=8, min_chunk_tokens=64),
    "fused_w4_c64_s3": dict(min_chunk_tokens=64),
    "fused_w2_c128_s3": dict(target_waves=2),
    "fused_w4_c128_s2": dict(num_stages=2),
    "fused_w4_c128_n32_s4": dict(block_n=32, num_stages=4),
}


def built_module(ws, defn, sol):
    """The module holding ``sol``'s run, built and imported as fibuild loads it (its library
    files included)."""
    from fibuild.compile.cache import BuildCache
    from fibuild.config import Settings

    entry = BuildCache(Settings.from_env()).get_or_build(defn, sol).entry
    return sys.modules[entry.run.__module__], entry.plan


def copy_bandwidth(torch, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), median of 20 copies."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * nbytes / times[len(times) // 2]


def kv_bytes(args, page_size: int) -> int:
    """Bytes of K and V the workload reads (tokens x 8 heads x 128 x 2 bytes x 2)."""
    indptr = args[3].cpu().long()
    pages = int(indptr[-1])
    tokens = pages * page_size
    if page_size > 1:
        last = args[5].cpu().long()
        tokens -= int(((page_size - last) * ((indptr[1:] - indptr[:-1]) > 0)).sum())
    return tokens * 8 * 128 * 2 * 2


def candidates(ws, defn):
    """label -> (PlannedEntry-like callable factory)."""
    from fibuild.compile.plans import PlannedEntry

    positions = [i for i, s in enumerate(defn.inputs) if s.structural]
    out = {}
    page_size = defn.const_axes["page_size"]
    for name in ("flashinfer", "flashinfer_tc"):
        mod, plan = built_module(ws, defn, ws.solution(f"{defn.name}/{name}"))
        out[name] = lambda mod=mod, plan=plan: PlannedEntry(mod.gqa_paged_decode, plan, positions)
    mod, _plan = built_module(ws, defn, ws.solution(f"{defn.name}/triton_split_kv"))
    for label, knobs in VARIANTS.items():
        def make(mod=mod, knobs=knobs):
            def plan(indptr, indices, *rest):
                return mod.make_plan(indptr, rest[0] if len(rest) == 2 else None, page_size=page_size, **knobs)
            return PlannedEntry(mod.gqa_paged_decode, plan, positions)
        out[f"triton_{label}"] = make
    return out


def check(defn, got, want) -> str:
    problems = []
    for name, g, w in zip(("output", "lse"), got, want):
        if g.shape != w.shape or g.dtype != w.dtype:
            problems.append(f"{name}: {tuple(g.shape)} {g.dtype}")
            continue
        g64, w64 = g.double(), w.double()
        same = g64 == w64
        bad = ~same & ~((g64 - w64).abs() <= defn.tolerance.atol + defn.tolerance.rtol * w64.abs())
        if bool(bad.any()):
            worst = float((g64 - w64).abs().nan_to_num(1e30).max())
            problems.append(f"{name}: {int(bad.sum())} beyond tolerance, max {worst:.3g}")
    return "; ".join(problems)


def graph_replay(torch, entry, args, want, defn) -> str:
    """Capture the run in a CUDA graph (plan made before), replay, check; '' when fine."""
    entry.prepare(args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        entry(*args)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = entry(*args)
    graph.replay()
    torch.cuda.synchronize()
    return check(defn, out, want) or ""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="out")
    parser.add_argument("--quick", action="store_true", help="fewer variants and workloads")
    parser.add_argument("--rep-ms", type=float, default=30.0)
    opts = parser.parse_args()
    import torch

    from fibuild.bench.inputs import make_inputs
    from fibuild.bench.timing import time_cuda
    from fibuild.spec.calling import load_reference
    from fibuild.spec.workspace import Workspace

    out_dir = Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ws = Workspace(ROOT)
    copy_bps = copy_bandwidth(torch)
    print(f"copy bandwidth {copy_bps / 1e12:.3f} TB/s (read + write)", flush=True)
    results = {"copy_tbps": copy_bps / 1e12, "device": torch.cuda.get_device_name(), "rows": []}
    lines = [f"# Paged decode sweep on {torch.cuda.get_device_name()}", "",
             f"Copy ceiling (device-to-device, read + write) measured in the same run: "
             f"{copy_bps / 1e12:.2f} TB/s. Cells: run µs (% of copy ceiling); plan µs apart.", ""]
    for def_name in DEFINITIONS:
        defn = ws.definition(def_name)
        page_size = defn.const_axes["page_size"]
        ns = load_reference(defn)
        makers = candidates(ws, defn)
        labels = list(makers)
        if opts.quick:
            labels = labels[:4]
        lines += [f"## {def_name}", "",
                  "| batch | KV/seq | " + " | ".join(labels) + " | best triton / best flashinfer |",
                  "|---" * (len(labels) + 3) + "|"]
        for workload in defn.workloads[:: 2 if opts.quick else 1]:
            t0 = time.perf_counter()
            args = make_inputs(defn, workload, device="cuda", reference_ns=ns)
            want = ns["run"](*args)
            nbytes = kv_bytes(args, page_size)
            batch = workload.axes["batch_size"]
            row = {"definition": def_name, "axes": dict(workload.axes), "kv_bytes": nbytes, "cells": {}}
            for label in labels:
                cell = {}
                try:
                    entry = makers[label]()
                    got = entry(*args)
                    torch.cuda.synchronize()
                    cell["check"] = check(defn, got, want)
                    t1 = time.perf_counter()
                    entry.plan(*entry.structural(args))
                    torch.cuda.synchronize()
                    cell["plan_us"] = (time.perf_counter() - t1) * 1e6
                    if not cell["check"]:
                        stats = time_cuda(entry, [args], warmup_ms=5, rep_ms=opts.rep_ms).stats
                        cell["run_us"] = stats.median_us
                        cell["pct_copy"] = 100 * nbytes / (stats.median_us * 1e-6) / copy_bps
                        cell["graph"] = graph_replay(torch, makers[label](), args, want, defn) or "ok"
                except Exception as exc:  # noqa: BLE001 - a failing candidate is a table cell
                    cell["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    traceback.print_exc()
                row["cells"][label] = cell
            results["rows"].append(row)

            def fmt(c):
                if "run_us" in c:
                    return f"{c['run_us']:.1f} ({c['pct_copy']:.0f}%)" + ("" if c["graph"] == "ok" else " G!")
                return "ERR" if "error" in c else "WRONG"
            fi = min((c["run_us"] for k, c in row["cells"].items() if k.startswith("flashinfer") and "run_us" in c),
                     default=None)
            tr = min((c["run_us"] for k, c in row["cells"].items() if k.startswith("triton") and "run_us" in c),
                     default=None)
            ratio = f"{fi / tr:.2f}x" if fi and tr else "-"
            kv = nbytes // (batch * 8 * 128 * 2 * 2)
            cells = " | ".join(fmt(row["cells"][lab]) for lab in labels)
            lines.append(f"| {batch} | {kv} | " + cells + f" | {ratio} |")
            print(lines[-1], f"[{time.perf_counter() - t0:.1f}s]", flush=True)
            del args, want
            torch.cuda.empty_cache()
        lines += ["", "Plan µs (first workloads, one plan, host wall clock): " + ", ".join(
            f"{lab} {results['rows'][-1]['cells'][lab].get('plan_us', float('nan')):.0f}" for lab in labels[:3]), ""]
    (out_dir / "decode_sweep.md").write_text("\n".join(lines) + "\n")
    (out_dir / "decode_sweep.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Grids on the GPU: bench the variants on the declared workloads, then check what the
resolver picks at shapes that are among no workload against every variant measured there.

1. ``fibuild bench`` of the ``triton_stream`` GEMM grid (two definitions) and the Triton
   split-KV decode grid (page size 1) in a scratch copy of the workspace (empty registry),
   so the resolver sees only these records.
2. At held-out shapes (M between the GEMM workloads; decode batches and KV lengths between
   the decode workloads): every variant checked and timed as ``fibuild bench`` times it (same
   inputs, L2 flushed, plans made before timing), and the variant ``fibuild.resolve`` picks
   from step 1's records. Ratio = best variant's median / the resolved variant's median;
   the goal is >= 0.95 everywhere.

    python3 benchmarks/device/variants_heldout.py --out "$OUT" [--budget-s 450] [--shapes fresh]
    python3 benchmarks/device/variants_heldout.py --rerank RUN --device-slug SLUG --out DIR   (no GPU)

Writes ``<out>/variants-heldout.md`` (the table), ``<out>/variants-heldout.json`` and
``<out>/registry/`` (step 1's evaluations, for the repository's registry). Stops starting
new work once the budget is spent and says what it skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GEMMS = ("gemm_n4096_k4096_bf16", "gemm_n4096_k14336_bf16")
DECODE = "gqa_paged_decode_h32_kv8_d128_ps1"
#: held-out shapes by set: ``seen`` chose the nearest-key rule (docs/resolution.md), ``fresh``
#: checks it on shapes it had not seen. GEMM: M; decode: (batch, KV tokens per sequence).
GEMM_HELD_OUT = {"seen": (3, 6, 12, 24, 48, 96, 256, 1024, 4096),
                 "fresh": (5, 10, 20, 40, 80, 160, 384, 768, 3072)}
DECODE_HELD_OUT = {"seen": ((2, 256), (2, 1024), (8, 2048), (8, 512), (32, 1024), (64, 2048), (128, 1024)),
                   "fresh": ((3, 768), (6, 1536), (12, 512), (24, 2048), (48, 1024), (96, 512), (200, 1024))}
#: ``--shapes`` choices: a set, or ``all`` (both, after one bench of the grids)
SHAPE_SETS = ("all", "fresh", "seen")


def held_out_shapes(sets: dict, which: str) -> tuple:
    """The shapes of held-out set ``which`` (``all``: both sets) of ``sets``."""
    return tuple(sorted(sets["seen"] + sets["fresh"])) if which == "all" else sets[which]
FAMILIES = {"gemm": "triton_stream", "decode": "triton_split_kv"}


def scratch_workspace(prefix: str) -> Path:
    """A temporary workspace holding this checkout's definitions and solutions, no registry."""
    ws = Path(tempfile.mkdtemp(prefix=prefix))
    for part in ("defs", "solutions"):
        shutil.copytree(ROOT / part, ws / part)
    return ws


def bench(ws: Path, out: Path, timeout_s: float, names) -> dict:
    """Step 1: ``fibuild bench`` of the grids of ``names`` in the scratch workspace."""
    cmd = [sys.executable, "-m", "fibuild", "--root", str(ws), "bench", *names,
           "--solution", FAMILIES["gemm"], "--solution", FAMILIES["decode"], "--device", "cuda",
           "--warmup", "10", "--rep", "40", "--timeout", "60", "--allow-failures"]
    t0 = time.time()
    with open(out / "bench.log", "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, cwd=ROOT)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    shutil.copytree(ws / "registry", out / "registry", dirs_exist_ok=True)
    return {"rc": rc, "seconds": round(time.time() - t0, 1)}


def decode_workload(defn, batch: int, kv: int):
    """A decode workload of ``batch`` sequences of ``kv`` pages (page size 1), inputs as declared."""
    from fibuild.spec.model import Workload

    declared = defn.workloads[0]
    pages = batch * kv
    axes = {"batch_size": batch, "num_pages": pages, "len_indptr": batch + 1, "num_kv_indices": pages}
    return Workload(uuid=f"held-out-b{batch}-kv{kv}", axes=axes, inputs=declared.inputs)


def measure(defn, variants, workload, settings) -> dict:
    """Median µs of every variant on ``workload``, as ``fibuild bench`` times it."""
    import torch

    from fibuild.bench.checks import PASSED, check_outputs, reference_outputs
    from fibuild.bench.inputs import clone_inputs, make_inputs
    from fibuild.bench.plans import prepare_plans
    from fibuild.bench.timing import time_calls
    from fibuild.compile.cache import BuildCache
    from fibuild.spec.calling import load_reference

    ns = load_reference(defn)
    inputs = make_inputs(defn, workload, device="cuda", reference_ns=ns)
    args = clone_inputs(inputs)
    want = reference_outputs(defn, ns["run"](*args), args)
    cache = BuildCache(settings)
    out = {}
    for sol in variants:
        try:
            kernel = cache.get_or_build(defn, sol)
            got = kernel.call(*clone_inputs(inputs))
            torch.cuda.synchronize()
            check = check_outputs(defn, got, want)
            if check.status != PASSED:
                out[sol.name] = {"status": check.status}
                continue
            sets = [clone_inputs(inputs) for _ in range(2)]
            prepare_plans(kernel.entry, sets, device="cuda", rep_ms=5)
            timing = time_calls(kernel.call, sets, device="cuda", warmup_ms=10, rep_ms=40)
            out[sol.name] = {"status": "PASSED", "median_us": timing.stats.median_us}
        except Exception as exc:  # one variant failing is a row entry, not the end of the run
            out[sol.name] = {"status": f"{type(exc).__name__}: {exc}"[:200]}
    return out


def held_out(ws: Path, deadline: float, names, shapes: str = "seen") -> list[dict]:
    """Step 2: every variant and the resolved one at each held-out shape of ``names``."""
    from fibuild.config import Settings
    from fibuild.runtime.api import resolve
    from fibuild.spec.model import Workload
    from fibuild.spec.workspace import Workspace

    settings = Settings.from_env(root=ws)
    workspace = Workspace(ws)
    cases = [(d, Workload(uuid=f"held-out-M{m}", axes={"M": m}), "gemm")
             for d in GEMMS if d in names for m in held_out_shapes(GEMM_HELD_OUT, shapes)]
    if DECODE in names:
        decode = workspace.definition(DECODE)
        cases += [(DECODE, decode_workload(decode, b, kv), "decode")
                  for b, kv in held_out_shapes(DECODE_HELD_OUT, shapes)]
    rows = []
    for name, workload, kind in cases:
        if time.time() > deadline:
            rows.append({"definition": name, "axes": dict(workload.axes), "skipped": "time budget spent"})
            continue
        defn = workspace.definition(name)
        variants = [s for s in workspace.solutions(defn) if s.family == FAMILIES[kind]]
        row = {"definition": name, "axes": dict(workload.axes)}
        try:
            # among the variants alone (the baseline is not benched here, and the resolver keeps
            # an unmeasured baseline unless strict), on GPU time, as the held-out shapes are timed
            res = resolve(name, dict(workload.axes), device="cuda", settings=settings, policy="nearest",
                          strict=True, mode="graph")
            row["resolved"] = res.solution.name if res.solution is not None else f"({res.policy})"
            row["evaluated_key"] = list(res.evaluated_key) if res.evaluated_key else None
        except Exception as exc:
            row["resolved"] = f"error: {exc}"[:200]
        t0 = time.time()
        row["variants"] = measure(defn, variants, workload, settings)
        row["seconds"] = round(time.time() - t0, 1)
        passed = {k: v["median_us"] for k, v in row["variants"].items() if v["status"] == "PASSED"}
        if passed:
            best = min(passed, key=passed.get)
            row["best"], row["best_us"] = best, passed[best]
            row["resolved_us"] = passed.get(row["resolved"])
            row["ratio"] = round(passed[best] / row["resolved_us"], 3) if row["resolved_us"] else None
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "variants"}), flush=True)
    return rows


def held_out_set(row: dict) -> str:
    """``seen`` or ``fresh``: the held-out set a row's shape comes from."""
    axes = row["axes"]
    if "M" in axes:
        return "seen" if axes["M"] in GEMM_HELD_OUT["seen"] else "fresh"
    shape = (axes["batch_size"], axes["num_kv_indices"] // axes["batch_size"])
    return "seen" if shape in DECODE_HELD_OUT["seen"] else "fresh"


def params(name: str | None) -> str:
    return name.split("[", 1)[1].rstrip("]") if name and "[" in name else str(name)


def write_table(rows: list[dict], bench_info: dict, out: Path, device_name: str, shapes: str = "seen",
                note: str = "", stem: str = "variants-heldout") -> None:
    """``<out>/<stem>.md`` (the table) and ``.json``; ``note`` follows the caption."""
    lines = [f"# Variants at held-out shapes ({shapes} set), {device_name}", "",
             f"Step 1 (`fibuild bench` of the grids): exit {bench_info['rc']}, {bench_info['seconds']} s. "
             "Resolved: `fibuild.resolve(policy='nearest', strict=True, mode='graph')` from step 1's records "
             "(the variants alone, on GPU time). Ratio = best variant's median / the resolved variant's median "
             f"(goal >= 0.95).{(' ' + note) if note else ''}", "",
             "| definition | shape | resolved variant (evaluated key) | µs | best variant | µs | ratio |",
             "|---|---|---|---:|---|---:|---:|"]
    for r in rows:
        shape = ", ".join(f"{k}={v}" for k, v in r["axes"].items() if k in ("M", "batch_size", "num_kv_indices"))
        if "skipped" in r:
            lines.append(f"| {r['definition']} | {shape} | skipped: {r['skipped']} | | | | |")
            continue
        res_us = f"{r['resolved_us']:.2f}" if r.get("resolved_us") else "-"
        best_us = f"{r['best_us']:.2f}" if r.get("best_us") else "-"
        lines.append(f"| {r['definition']} | {shape} | {params(r.get('resolved'))} ({r.get('evaluated_key')}) | "
                     f"{res_us} | {params(r.get('best'))} | {best_us} | {r.get('ratio', '-')} |")
    measured = [r for r in rows if r.get("ratio") is not None]
    for label, part in [("", measured)] + ([(f" ({which} set)", [r for r in measured if held_out_set(r) == which])
                                            for which in ("seen", "fresh")] if shapes == "all" else []):
        ratios = [r["ratio"] for r in part]
        if ratios:
            lines += ["", f"{sum(x >= 0.95 for x in ratios)} of {len(ratios)} held-out shapes{label} within 0.95x; "
                      f"worst {min(ratios):.3f}."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"bench": bench_info, "device": device_name, "shapes": shapes,
                                                  "rows": rows}, indent=1))
    print("\n".join(lines))


def rerank(run_rows: list[dict], registry: Path, device: str) -> list[dict]:
    """A finished run's held-out rows (``run_rows``, from its variants-heldout.json) resolved
    again with this checkout's rule, from the run's step-1 records (``registry``: a registry
    folder) and against the variants' timings it kept: no GPU needed. ``device``: the records'
    device slug."""
    from fibuild.config import Settings
    from fibuild.runtime.resolve import Resolver
    from fibuild.runtime.table_cache import load_table
    from fibuild.spec.workspace import Workspace

    ws = scratch_workspace("fibuild-rerank-ws-")
    shutil.copytree(registry, ws / "registry")
    settings = Settings.from_env({**os.environ, "FIBUILD_CACHE_DIR": str(ws / "cache")}, root=ws)
    workspace, rows = Workspace(ws), []
    for row in run_rows:
        if "variants" not in row:
            continue
        defn, table, _ = load_table(workspace, settings, row["definition"], device, here=False)
        res = Resolver(table).resolve(defn.apply_key(row["axes"]), "nearest", strict=True, mode="graph")
        passed = {k: v["median_us"] for k, v in row["variants"].items() if v["status"] == "PASSED"}
        new = dict(row, resolved=res.solution_name, evaluated_key=list(res.evaluated_key or ()) or None)
        new["resolved_us"] = passed.get(new["resolved"])
        new["ratio"] = round(new["best_us"] / new["resolved_us"], 3) if new["resolved_us"] else None
        rows.append(new)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    parser.add_argument("--budget-s", type=float, default=450.0, help="whole run (default 450 s)")
    # the decode grid second: a bench cut short by its time limit still leaves records of each kind
    parser.add_argument("--defs", nargs="+", default=[GEMMS[0], DECODE, *GEMMS[1:]], metavar="DEF",
                        choices=[*GEMMS, DECODE], help="the grids' definitions (default: all three)")
    parser.add_argument("--shapes", choices=SHAPE_SETS, default="seen",
                        help="which held-out set (default seen; fresh: shapes the rule was not chosen on; all: both)")
    parser.add_argument("--rerank", metavar="RUN", type=Path,
                        help="no GPU: resolve a finished run's shapes again with this checkout's rule "
                             "(RUN: its --out folder, with variants-heldout.json and registry/)")
    parser.add_argument("--device-slug", help="with --rerank: the records' device (e.g. nvidia-h100-80gb-hbm3-sm90)")
    args = parser.parse_args()
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.rerank:
        if not args.device_slug:
            parser.error("--rerank needs --device-slug")
        run = json.loads((args.rerank / "variants-heldout.json").read_text())
        rows = rerank(run["rows"], args.rerank / "registry", args.device_slug)
        write_table(rows, run["bench"], out, run.get("device", args.device_slug), run.get("shapes", args.shapes),
                    note="Resolved again without a GPU (`--rerank`) with this checkout's rule, against the "
                         "timings the run kept.", stem="variants-heldout-rerank")
        return 0
    ws = scratch_workspace("fibuild-grid-ws-")
    (ws / "registry").mkdir()
    bench_info = bench(ws, out, timeout_s=args.budget_s * 0.6, names=args.defs)
    print(f"bench: {bench_info}", flush=True)
    rows = held_out(ws, deadline=start + args.budget_s - 20, names=args.defs, shapes=args.shapes)
    import torch

    write_table(rows, bench_info, out, torch.cuda.get_device_name(), args.shapes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

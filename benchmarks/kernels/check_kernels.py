"""Check and time the shipped GPU solutions against FlashInfer on one CUDA device.

Standalone (no fibuild build cache): every CUDA solution of the chosen definitions is
compiled with nvcc for sm_90a into a scratch directory (plus launch-shape variants given as
-D macros, to see which shape wins where), loaded with ``tvm_ffi.load_module``; Triton and
Python solutions (FlashInfer baselines, torch) are imported from their files. Each is
checked against the definition's reference on fresh random inputs with poisoned outputs,
then timed with CUDA events around single launches, L2 flushed before each (median of
``--reps``), and with ``triton.testing.do_bench`` (median). Writes a markdown table to
``<out>/kernels.md`` and prints it.

    python3 benchmarks/kernels/check_kernels.py --out "$OUT"

Cost: FlashInfer JIT-compiles its norm and activation modules on first use (about a
minute); nvcc about 10 s per variant, run in parallel.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

COPY_CEILING_TBPS = 2.96  # device-to-device copy, read + write, measured on the H100
BATCHES = (1, 32, 128, 1024, 8192)
DEFINITIONS = ("rmsnorm_h4096", "fused_add_rmsnorm_h4096", "silu_and_mul_i14336")
# Launch-shape variants compiled beside each solution's default: {solution: {label: [flags]}}.
VARIANTS = {
    "rmsnorm_h4096/cuda_row_per_block": {"t128": ["-DRMSNORM_THREADS=128"], "t512": ["-DRMSNORM_THREADS=512"]},
    "rmsnorm_h4096/cuda_warp_per_row": {"w2": ["-DRMSNORM_WARPS=2"], "w8": ["-DRMSNORM_WARPS=8"]},
    "fused_add_rmsnorm_h4096/cuda_row_per_block": {"t128": ["-DRMSNORM_THREADS=128"],
                                                   "t512": ["-DRMSNORM_THREADS=512"]},
}


def nvcc_compile(source: Path, out: Path, extra: list[str]) -> tuple[Path, float, str]:
    """Compile one .cu into a tvm-ffi module for sm_90a; returns (path, seconds, ptxas report)."""
    import tvm_ffi.libinfo as libinfo

    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    lib_dir = str(Path(libinfo.find_libtvm_ffi()).parent)
    cmd = [f"{cuda_home}/bin/nvcc", "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-shared",
           "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v",
           "-isystem", libinfo.find_include_path(), *extra, str(source),
           f"-L{lib_dir}", "-ltvm_ffi", "-Xlinker", "-rpath", "-Xlinker", lib_dir, f"-L{cuda_home}/lib64", "-lcudart",
           "-o", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"nvcc failed for {source}:\n{proc.stderr[-3000:]}")
    report = [line for line in proc.stderr.splitlines() if "Used" in line or "spill" in line]
    return out, time.perf_counter() - t0, " | ".join(s.split(":", 1)[-1].strip() for s in report)


def import_entry(ws, sol):
    """A Python/Triton solution's entry function, built and loaded as fibuild loads it."""
    from fibuild.compile.cache import BuildCache
    from fibuild.config import Settings

    return BuildCache(Settings.from_env()).get_or_build(ws.definition(sol.definition), sol).entry


def make_inputs(torch, defn, axes, seed):
    """Fresh random inputs (normal, in the declared dtype) for one set of var-axis values."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    sizes = {**defn.const_axes, **axes}
    return [torch.randn([sizes[a] for a in spec.shape], generator=g, device="cuda",
                        dtype=getattr(torch, spec.dtype)) for spec in defn.inputs]


def check(torch, defn, call, reference, batch, seed) -> tuple[bool, float]:
    """Run ``call`` and the reference on the same fresh inputs; (within tolerance, max abs error)."""
    var = defn.var_axes[0]
    inputs = make_inputs(torch, defn, {var: batch}, seed)
    ref_out = reference(*[t.clone() for t in inputs])
    ref_out = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    fresh = [o for o in defn.outputs if not o.inplace]
    poisoned = []
    if fresh:  # poison the outputs: an unwritten element must fail the check
        sizes = {**defn.const_axes, var: batch}
        for o in fresh:
            poisoned.append(torch.full([sizes[a] for a in o.shape], float("nan"), device="cuda",
                                       dtype=getattr(torch, o.dtype)))
    args = [t.clone() for t in inputs]
    out = call(*args, out=(poisoned if len(poisoned) > 1 else poisoned[0]) if poisoned else None)
    torch.cuda.synchronize()
    out = out if isinstance(out, tuple) else (out,)
    ok, worst = True, 0.0
    tol = defn.tolerance
    for got, want in zip(out, ref_out):
        got, want = got.float(), want.float()
        if got.shape != want.shape or not torch.isfinite(got).all():
            return False, float("nan")
        diff = (got - want).abs()
        worst = max(worst, float(diff.max()))
        ok = ok and bool((diff <= tol.atol + tol.rtol * want.abs()).all())
    return ok, worst


def time_events(torch, fn, reps: int) -> float:
    """Median microseconds of single launches between CUDA events, L2 flushed before each."""
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for _ in range(5):
        fn()
    for i in range(reps):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1000.0


def bytes_moved(defn_name: str, batch: int) -> int:
    if defn_name == "rmsnorm_h4096":
        return 2 * batch * 4096 * 2 + 4096 * 2
    if defn_name == "fused_add_rmsnorm_h4096":
        return 4 * batch * 4096 * 2 + 4096 * 2
    return 3 * batch * 14336 * 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--scratch", default="/tmp/fibuild-check-kernels")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    out_dir, scratch = Path(args.out), Path(args.scratch)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)

    import torch
    import triton
    import tvm_ffi

    from fibuild.spec.calling import load_reference, make_caller, solution_caller
    from fibuild.spec.workspace import Workspace

    ws = Workspace(ROOT)
    device_name = torch.cuda.get_device_name()
    print(f"device: {device_name}; torch {torch.__version__}, triton {triton.__version__}", flush=True)

    # Compile every CUDA variant in parallel while FlashInfer JIT-compiles in this thread.
    jobs = {}
    pool = futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    for dname in DEFINITIONS:
        for sol in ws.solutions(dname):
            if sol.language != "cuda":
                continue
            for label, flags in {"": [], **VARIANTS.get(sol.qualified_name, {})}.items():
                name = sol.name + (f"[{label}]" if label else "")
                so = scratch / f"{dname}-{sol.name}-{label or 'default'}.so"
                includes = [f"-I{d}" for d in sol.source_dirs]  # its own folder and its libraries
                jobs[(dname, name, sol.entry_symbol)] = pool.submit(nvcc_compile, sol.path / sol.entry_file, so,
                                                                    flags + includes)
    results: dict = {"device": device_name, "rows": [], "compile": {}, "errors": []}
    impls: dict[str, dict[str, object]] = {d: {} for d in DEFINITIONS}
    for dname in DEFINITIONS:
        for sol in ws.solutions(dname):
            if sol.language not in ("python", "triton") or "cuda" not in sol.target_hardware:
                continue
            try:
                entry = import_entry(ws, sol)
                impls[dname][sol.name] = solution_caller(ws.definition(dname), sol, entry)
                t0 = time.perf_counter()
                check(torch, ws.definition(dname), impls[dname][sol.name],
                      load_reference(ws.definition(dname))["run"], 8, 0)
                print(f"warm {dname}/{sol.name}: {time.perf_counter() - t0:.1f} s", flush=True)
            except Exception as exc:  # a baseline that cannot run is reported, not fatal
                impls[dname].pop(sol.name, None)
                results["errors"].append(f"{dname}/{sol.name}: {exc!r}")
                print(f"skip {dname}/{sol.name}: {exc!r}", flush=True)
    for (dname, name, symbol), job in jobs.items():
        try:
            so, secs, report = job.result()
            results["compile"][f"{dname}/{name}"] = {"seconds": round(secs, 1), "ptxas": report}
            print(f"nvcc {dname}/{name}: {secs:.1f} s; {report}", flush=True)
            entry = tvm_ffi.load_module(str(so))[symbol]
            impls[dname][name] = make_caller(ws.definition(dname), entry, destination_passing_style=True)
        except Exception as exc:
            results["errors"].append(f"{dname}/{name}: {exc}")
            print(f"FAILED {dname}/{name}: {exc}", flush=True)
    pool.shutdown()

    for dname in DEFINITIONS:
        defn = ws.definition(dname)
        reference = load_reference(defn)["run"]
        var = defn.var_axes[0]
        for batch in batches:
            inputs = make_inputs(torch, defn, {var: batch}, seed=1234 + batch)
            for name, call in sorted(impls[dname].items()):
                row = {"definition": dname, "impl": name, "batch": batch}
                try:
                    ok, err = True, 0.0
                    for seed in (batch, batch + 1):  # two fresh draws, poisoned outputs each time
                        o, e = check(torch, defn, call, reference, batch, seed)
                        ok, err = ok and o, max(err, e)
                    row.update(correct=ok, max_abs_err=err)
                    def fn(c=call, a=inputs):
                        return c(*a)

                    row["events_us"] = time_events(torch, fn, args.reps)
                    row["do_bench_us"] = triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") * 1000.0
                    row["pct_ceiling"] = (bytes_moved(dname, batch) / (row["events_us"] * 1e-6)
                                          / (COPY_CEILING_TBPS * 1e12) * 100)
                except Exception:
                    row["error"] = traceback.format_exc(limit=2)
                results["rows"].append(row)
                print(json.dumps(row), flush=True)

    (out_dir / "kernels.json").write_text(json.dumps(results, indent=1))
    table = render(results, batches)
    (out_dir / "kernels.md").write_text(table)
    print(table)
    return 0 if all(r.get("correct") for r in results["rows"]) and not results["errors"] else 1


def render(results: dict, batches: list[int]) -> str:
    """Markdown: per definition, one row per implementation, µs (events) and % of the copy ceiling."""
    lines = [f"# Kernel check on {results['device']}", "",
             f"Median µs of single launches between CUDA events, L2 flushed before each; "
             f"(do_bench median); % of the {COPY_CEILING_TBPS} TB/s copy ceiling (bytes read + written). "
             "✗ marks a failed correctness check.", ""]
    by_def: dict[str, dict[str, dict[int, dict]]] = {}
    for r in results["rows"]:
        by_def.setdefault(r["definition"], {}).setdefault(r["impl"], {})[r["batch"]] = r
    for dname, rows in by_def.items():
        lines += [f"## {dname}", "", "| implementation | " + " | ".join(f"B={b}" for b in batches) + " |",
                  "|---|" + "---|" * len(batches)]
        for impl, cells in sorted(rows.items(), key=lambda kv: kv[1].get(batches[-1], {}).get("events_us", 1e9)):
            out = []
            for b in batches:
                c = cells.get(b, {})
                if "events_us" not in c:
                    out.append("error")
                    continue
                mark = "" if c.get("correct") else " ✗"
                out.append(f"{c['events_us']:.1f} ({c['do_bench_us']:.1f}) {c['pct_ceiling']:.0f}%{mark}")
            lines.append(f"| {impl} | " + " | ".join(out) + " |")
        lines.append("")
    if results["compile"]:
        lines += ["## nvcc (sm_90a)", "", "| variant | s | ptxas |", "|---|---|---|"]
        lines += [f"| {k} | {v['seconds']} | {v['ptxas']} |" for k, v in results["compile"].items()]
        lines.append("")
    if results["errors"]:
        lines += ["## errors", ""] + [f"- {e}" for e in results["errors"]] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

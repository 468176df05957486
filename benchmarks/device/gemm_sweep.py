"""Profile small-M GEMM on one CUDA GPU: cuBLAS against the weight-streaming Triton kernels.

For each Llama-3.1-8B projection (bf16, weight [N, K]) and each M, times ``torch.matmul``
and every launch config of ``gemv.py`` (the kernels the ``triton_stream`` solutions ship)
as a decode step runs them: a CUDA graph replaying calls over distinct weight buffers whose
total exceeds the L2 several times, so every call reads its weight from HBM. Measures the
device copy ceiling (1 GiB device-to-device copy, bytes read + written) and a bf16 matmul
ceiling in the same run, checks every config against an fp32 reference, records each
compiled kernel's registers, spills and shared memory, and writes
``<out>/gemm_sweep.md`` and ``<out>/gemm_sweep.json``.

    python3 benchmarks/device/gemm_sweep.py --out "$OUT" [--quick]

Cost: about two minutes on an H200 (the Triton configs compile in parallel processes first).
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEMV = ROOT / "solutions" / "_lib" / "gemv" / "gemv.py"  # the library every triton_stream solution names
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
SMALL_M = (1, 2, 4, 8, 16)
MID_M = (32, 64, 128)
LARGE_M = (512, 2048, 8192)
ROTATION_BYTES = 512 << 20  # weights cycled per graph: 8x the H200's 60 MB L2
SMEM_LIMIT = 220 * 1024


def load_gemv():
    spec = importlib.util.spec_from_file_location("gemv_under_test", GEMV)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dot(bn, bk, bm, stages, warps):
    return {"kernel": "dot", "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_M": bm, "num_stages": stages, "num_warps": warps}


def small_m_configs(quick: bool) -> list[dict]:
    cfgs = []
    for bn, bk, stages in itertools.product((16, 32, 64), (128, 256, 512), (3, 4, 6)):
        if stages * (bn * bk + bk * 16) * 2 <= SMEM_LIMIT:
            cfgs.append(dot(bn, bk, 16, stages, 4))
    cfgs += [dot(64, 128, 16, 4, 8), dot(64, 256, 16, 3, 8), dot(32, 256, 16, 4, 2), dot(16, 512, 16, 4, 2)]
    return cfgs[::3] if quick else cfgs


def fma_configs() -> list[dict]:
    return [{"kernel": "fma", "BLOCK_N": bn, "BLOCK_K": bk, "num_stages": 3, "num_warps": w}
            for bn, bk, w in itertools.product((2, 4, 8), (512, 1024), (4, 8)) if bn * bk // (32 * w) <= 128]


def mid_m_configs(m: int) -> list[dict]:
    if m <= 64:
        return [dot(bn, bk, m, s, w) for bn, bk, s, w in
                ((16, 256, 4, 4), (32, 256, 4, 4), (32, 128, 6, 4), (64, 128, 4, 4), (64, 256, 3, 4), (64, 128, 4, 8))]
    return [dot(64, 128, 64, 4, 4), dot(64, 128, 128, 4, 8), dot(128, 64, 64, 4, 8), dot(128, 64, 128, 3, 8)]


LARGE_CFG = dot(128, 64, 128, 3, 8)


def label(cfg: dict) -> str:
    parts = [cfg["kernel"], f"n{cfg['BLOCK_N']}", f"k{cfg['BLOCK_K']}"]
    if "BLOCK_M" in cfg:
        parts.append(f"m{cfg['BLOCK_M']}")
    return "-".join(parts + [f"st{cfg['num_stages']}", f"w{cfg['num_warps']}"])


def _compile_one(args):
    """Worker: launch one config once on small tensors so its binary lands in TRITON_CACHE_DIR."""
    cfg, k, m = args
    import torch

    gemv = load_gemv()
    try:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(128, k, device="cuda", dtype=torch.bfloat16)
        gemv.matmul_nt(a, b, cfg)
        torch.cuda.synchronize()
        return label(cfg), k, ""
    except Exception as exc:  # noqa: BLE001 - an out-of-resources config is reported, not fatal
        return label(cfg), k, f"{type(exc).__name__}: {str(exc)[:200]}"


def precompile(jobs: list[tuple[dict, int, int]]) -> dict:
    failed = {}
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=min(14, os.cpu_count() or 4), mp_context=ctx) as pool:
        for name, k, err in pool.map(_compile_one, jobs):
            if err:
                failed[(name, k)] = err
    return failed


def time_graph(fn, arg_sets, replays: int = 10) -> float:
    """Microseconds per call: a CUDA graph of calls cycling ``arg_sets``, median of replays."""
    import torch

    calls = len(arg_sets) * max(1, math.ceil(24 / len(arg_sets)))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for args in arg_sets[:3]:
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(*arg_sets[i % len(arg_sets)])
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / calls)
    del graph
    return statistics.median(samples)


def ceilings() -> dict:
    import torch

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ts = []
    for _ in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e-3)
    copy_tbps = 2 * src.numel() / statistics.median(ts[2:]) / 1e12
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ts = []
    for _ in range(8):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.matmul(a, b)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e-3)
    return {"copy_tbps": copy_tbps, "matmul_tflops": 2 * 8192 ** 3 / statistics.median(ts[2:]) / 1e12}


def compiled_resources(gemv) -> list[dict]:
    """Registers, spills, shared memory of every compiled kernel (Triton's in-process cache)."""
    rows = []
    for fn in (gemv._stream_dot, gemv._stream_fma):
        for cache in getattr(fn, "device_caches", {}).values():
            for ck in cache[0].values():
                try:
                    consts = {str(k[0] if isinstance(k, tuple) else k): v for k, v in ck.src.constants.items()
                              if isinstance(v, int)}
                except Exception:  # noqa: BLE001 - constants are best-effort labels
                    consts = {}
                rows.append({"kernel": fn.__name__, "constants": consts, "num_warps": ck.metadata.num_warps,
                             "num_stages": ck.metadata.num_stages, "shared": ck.metadata.shared,
                             "n_regs": ck.n_regs, "n_spills": ck.n_spills})
    return rows


def profile_o_m1() -> int:
    """Five launches of the O projection's M = 1 config, cold weights, for a profiler to pick."""
    import torch

    gemv = load_gemv()
    table = ast_configs(GEMV.with_name("kernel.py"))
    weights = [torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) for _ in range(8)]
    a = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    for i in range(5):
        gemv.matmul_nt(a, weights[i % 8], gemv.pick(table, 1))
    torch.cuda.synchronize()
    return 0


def ast_configs(path: Path) -> list:
    """The CONFIGS table of a solution's kernel.py, read without importing it."""
    import ast

    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CONFIGS":
            return eval(compile(ast.Expression(node.value), str(path), "eval"), {"__builtins__": {}})
    raise ValueError(f"{path}: no CONFIGS table")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    parser.add_argument("--quick", action="store_true", help="a third of the small-M configs")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--ceilings-only", action="store_true",
                        help="only measure the copy and matmul ceilings (into <out>/ceilings.json)")
    parser.add_argument("--profile-o-m1", action="store_true",
                        help="only run the O projection's M = 1 config a few times (for ncu)")
    args = parser.parse_args()
    if args.profile_o_m1:
        return profile_o_m1()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ceilings_only:
        import torch

        report = {"device": torch.cuda.get_device_name(0), **ceilings()}
        (out / "ceilings.json").write_text(json.dumps(report))
        print(json.dumps(report))
        return 0
    os.environ.setdefault("TRITON_CACHE_DIR", "/tmp/triton-gemm-sweep")
    import torch
    import triton

    gemv = load_gemv()
    t0 = time.time()
    shapes = {s: SHAPES[s] for s in args.shapes.split(",")}
    small, fmas = small_m_configs(args.quick), fma_configs()
    jobs = [(c, k, 1) for k in sorted({k for _, k in shapes.values()}) for c in small + fmas]
    jobs += [(c, k, m) for k in sorted({k for _, k in shapes.values()}) for m in MID_M for c in mid_m_configs(m)]
    jobs += [(LARGE_CFG, k, 512) for k in sorted({k for _, k in shapes.values()})]
    failed = precompile(jobs)
    print(f"precompiled {len(jobs)} kernels in {time.time() - t0:.0f} s, {len(failed)} failed", flush=True)
    for (name, k), err in sorted(failed.items()):
        print(f"  {name} K={k}: {err}", flush=True)

    props = torch.cuda.get_device_properties(0)
    ceil = ceilings()
    env = {"device": props.name, "sms": props.multi_processor_count, "l2_bytes": props.L2_cache_size,
           "torch": torch.__version__, "triton": triton.__version__, **ceil}
    print(json.dumps(env), flush=True)
    results = []
    for name, (n, k) in shapes.items():
        wbytes = n * k * 2
        nbuf = max(3, math.ceil(ROTATION_BYTES / wbytes))
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(nbuf)]
        # A copy moving the weight's bytes (half read, half written), cold, in the same graph form.
        half = wbytes // 2
        csrc = [torch.empty(half, dtype=torch.uint8, device="cuda") for _ in range(nbuf)]
        cdst = torch.empty(half, dtype=torch.uint8, device="cuda")
        copy_us = time_graph(lambda s, d=cdst: d.copy_(s), [(s,) for s in csrc])
        del csrc, cdst
        for m in SMALL_M + MID_M + LARGE_M:
            a_sets = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(nbuf)]
            arg_sets = list(zip(a_sets, weights))
            want = torch.matmul(a_sets[0].float(), weights[0].float().T)
            nbytes = wbytes + 2 * m * (n + k)
            row = {"shape": name, "N": n, "K": k, "M": m, "bytes": nbytes, "flops": 2 * m * n * k,
                   "floor_us": max(nbytes / (ceil["copy_tbps"] * 1e6), 2 * m * n * k / (ceil["matmul_tflops"] * 1e6)),
                   "copy_same_bytes_us": copy_us, "cublas_us": time_graph(lambda a, b: torch.matmul(a, b.T), arg_sets),
                   "triton": []}
            if m <= 16:
                cfgs = small + (fmas if m == 1 else [])
            elif m <= 128:
                cfgs = mid_m_configs(m)
            else:
                cfgs = [LARGE_CFG]
            for cfg in cfgs:
                if (label(cfg), k) in failed:
                    continue
                try:
                    got = gemv.matmul_nt(a_sets[0], weights[0], cfg).float()
                    err = (got - want).abs()
                    ok = bool((err <= 0.1 + 0.01 * want.abs()).all())
                    us = time_graph(lambda a, b, c=cfg: gemv.matmul_nt(a, b, c), arg_sets)
                except Exception as exc:  # noqa: BLE001 - one broken config must not lose the sweep
                    print(f"  {label(cfg)} M={m}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                    continue
                row["triton"].append({"config": label(cfg), "us": us, "ok": ok, "max_abs": float(err.max())})
            row["triton"].sort(key=lambda r: (not r["ok"], r["us"]))
            results.append(row)
            best = row["triton"][0] if row["triton"] else None
            print(f"{name:8s} M={m:5d} floor {row['floor_us']:8.2f} copy {copy_us:8.2f} cublas {row['cublas_us']:8.2f}"
                  + (f"  best {best['config']} {best['us']:8.2f} ok={best['ok']}" if best else ""), flush=True)
            del a_sets, arg_sets, want
        del weights
        torch.cuda.empty_cache()
        write_markdown(out / "gemm_sweep.md", env, results)  # kept if a later shape runs out of time
    report = {"env": env, "results": results, "compile_failures": {f"{a} K={b}": e for (a, b), e in failed.items()}}
    write_markdown(out / "gemm_sweep.md", env, results)
    (out / "gemm_sweep.json").write_text(json.dumps(report, indent=1))
    try:
        report["resources"] = compiled_resources(gemv)
    except Exception as exc:  # noqa: BLE001 - Triton's cache layout is internal: report what broke, keep the rest
        report["resources"] = f"{type(exc).__name__}: {exc}"
    (out / "gemm_sweep.json").write_text(json.dumps(report, indent=1))
    print(f"done in {time.time() - t0:.0f} s", flush=True)
    return 0


def write_markdown(path: Path, env: dict, results: list[dict]) -> None:
    bw = env["copy_tbps"]
    intro = (f"Copy ceiling {bw:.2f} TB/s (1 GiB device copy, read + write); bf16 matmul ceiling "
             f"{env['matmul_tflops']:.0f} TFLOP/s. Times: µs per call, CUDA graph over distinct weights (cold). "
             "% = share of the copy ceiling (bytes / time / ceiling).")
    lines = [f"# Small-M GEMM sweep, {env['device']} ({env['sms']} SMs), torch {env['torch']}, triton {env['triton']}",
             "", intro, "",
             "| shape | M | MB | floor µs | copy same bytes µs | cuBLAS µs (%) | best Triton | µs (%) "
             "| vs cuBLAS | 2nd | 3rd |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|"]
    for r in results:
        def pct(us, nbytes=r["bytes"]):
            return 100 * nbytes / (us * 1e-6) / (bw * 1e12)
        t = [x for x in r["triton"] if x["ok"]]
        best = t[0] if t else None
        others = [f"{x['config']} {x['us']:.2f}" for x in t[1:3]]
        others += [""] * (2 - len(others))
        lines.append(f"| {r['shape']} | {r['M']} | {r['bytes'] / 1e6:.1f} | {r['floor_us']:.2f} | "
                     f"{r['copy_same_bytes_us']:.2f} | {r['cublas_us']:.2f} ({pct(r['cublas_us']):.0f} %) | "
                     + (f"{best['config']} | {best['us']:.2f} ({pct(best['us']):.0f} %) | "
                        f"{r['cublas_us'] / best['us']:.2f}× | " if best else "— | — | — | ")
                     + " | ".join(others) + " |")
    bad = [(r["shape"], r["M"], x["config"]) for r in results for x in r["triton"] if not x["ok"]]
    lines += ["", f"Configs failing the check (atol 0.1, rtol 0.01): {bad or 'none'}", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

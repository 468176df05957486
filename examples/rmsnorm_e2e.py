"""rmsnorm_h4096 end to end on a GPU machine: build, benchmark, resolve, load.

Run from the repository root on a machine with a CUDA GPU::

    python3 examples/rmsnorm_e2e.py [--batch-sizes 7,128,3000] [--skip-bench]

1. ``fibuild build --all -d rmsnorm_h4096``: every solution this machine can build;
2. ``fibuild bench rmsnorm_h4096``: check and time them over the definition's workloads,
   appending evaluations to ``registry/rmsnorm_h4096/<this GPU's slug>.jsonl``;
3. ``fibuild resolve rmsnorm_h4096 --axes batch_size=N --explain`` for three batch sizes
   (one evaluated, two not: ``nearest`` answers those);
4. ``fibuild.load("rmsnorm_h4096")`` called on CUDA tensors of those sizes, each result
   checked against the definition's reference.

The CLI steps run as subprocesses (as a user types them); step 4 uses the Python API.
Exits non-zero when a step fails or a result is out of tolerance.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

DEF = "rmsnorm_h4096"
ROOT = Path(__file__).resolve().parents[1]


def step(title: str, argv: list[str]) -> None:
    print(f"\n=== {title}\n$ fibuild {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fibuild", *argv], cwd=ROOT)
    print(f"--- {time.perf_counter() - t0:.1f} s, exit {proc.returncode}", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"step failed: fibuild {' '.join(argv)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="7,128,3000",
                        help="three batch sizes to resolve and run (default 7,128,3000)")
    parser.add_argument("--skip-bench", action="store_true",
                        help="use the registry as it is (no new evaluations)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("this example needs a CUDA GPU (torch.cuda.is_available() is False)")

    step("build every rmsnorm solution this machine can build", ["build", "--all", "-d", DEF])
    if not args.skip_bench:
        step("benchmark rmsnorm_h4096 on this GPU", ["bench", DEF, "--device", "cuda"])
        step("leaderboard", ["table", DEF])
    for n in sizes:
        step(f"resolve batch_size={n}", ["resolve", DEF, "--axes", f"batch_size={n}", "--explain"])

    print("\n=== fibuild.load on CUDA tensors, checked against the reference", flush=True)
    import fibuild
    from fibuild.spec.calling import load_reference
    from fibuild.spec.workspace import Workspace

    kernel = fibuild.load(DEF, device="cuda")
    defn = Workspace.discover(fibuild.Settings.from_env()).definition(DEF)
    reference = load_reference(defn)["run"]
    tol = defn.tolerance
    failures = 0
    for n in sizes:
        x = torch.randn(n, 4096, device="cuda").to(torch.bfloat16)
        w = (torch.rand(4096, device="cuda") + 0.5).to(torch.bfloat16)
        y = kernel(x, w)
        torch.cuda.synchronize()
        ref = reference(x, w)
        err = (y.float() - ref.float()).abs().max().item()
        ok = torch.allclose(y.float(), ref.float(), atol=tol.atol, rtol=tol.rtol)
        failures += not ok
        res = kernel.explain(batch_size=n)
        where = "" if res.evaluated_key in (None, res.key) else f" (measured at {res.evaluated_key})"
        latency = f"{res.latency_us:.2f} µs{where}" if res.latency_us is not None else "-"
        print(f"batch_size={n:<6} {res.solution_name:<22} policy={res.policy:<9} "
              f"latency={latency:<28} max|err|={err:.2e} {'ok' if ok else 'OUT OF TOLERANCE'}")
    if failures:
        raise SystemExit(f"{failures} result(s) out of tolerance")
    print("all results within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())

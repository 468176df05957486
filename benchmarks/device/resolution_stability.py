"""Do two back-to-back bench runs resolve the same way? Counts keys, AMBIGUOUS keys, and keys
whose resolution differs between the runs without being AMBIGUOUS in either (should be 0).

Two fresh workspaces (copies of the chosen definitions and their solutions, empty
registries, one shared build cache) are benched one after the other on this machine's GPU
(``fibuild bench DEFS --device cuda``); then every key evaluated in both is resolved from
each run's records (policy ``exact``, in eager and graph mode), with the resolver's own rule.
Time-boxed: the runs share ``--budget-s`` (default 330 s) equally; a run cut short still
counts the keys it recorded. Optionally (``--remeasure``) the second workspace then re-runs
``fibuild bench --ambiguous`` and the AMBIGUOUS count is reported again.

    python3 benchmarks/device/resolution_stability.py --out "$OUT/stability" \
        [--defs rmsnorm_h4096 silu_and_mul_i14336 ...] [--budget-s 330] [--rep 100]
    python3 benchmarks/device/resolution_stability.py --replay RUN --device-slug SLUG --out DIR   (no GPU)

Writes ``stability.md`` and ``stability.json`` under ``--out``.
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

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DEFS = ("rmsnorm_h4096", "silu_and_mul_i14336", "fused_add_rmsnorm_h4096", "gemm_n4096_k4096_bf16")


def make_workspace(root: Path, names) -> None:
    for name in names:
        (src,) = (REPO / "defs").glob(f"*/{name}.yaml")
        (root / "defs" / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / "defs" / src.parent.name)
        shutil.copytree(REPO / "solutions" / name, root / "solutions" / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    # the shared sources the solutions name (libraries:)
    shutil.copytree(REPO / "solutions" / "_lib", root / "solutions" / "_lib",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    (root / "registry").mkdir(parents=True, exist_ok=True)


def bench(root: Path, names, budget_s: float, rep: float, device: str, extra=()) -> dict:
    cmd = [sys.executable, "-m", "fibuild", "--root", str(root), "bench", *names, "--device", device,
           "--allow-failures", "--rep", str(rep), *extra]
    print("$", " ".join(cmd), f"(limit {budget_s:.0f} s)", flush=True)
    t0 = time.monotonic()
    try:
        rc = subprocess.run(cmd, env={**os.environ, "FIBUILD_ROOT": str(root)}, timeout=budget_s).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    return {"rc": rc, "seconds": round(time.monotonic() - t0, 1)}


def resolutions(root: Path, names, slug: str, here: bool = True) -> dict:
    """``{(definition, key, mode): (solution, verdict)}`` at every key evaluated in ``root`` on
    device ``slug``. ``here``: the device is this machine (solutions it cannot run are left out);
    False for records replayed elsewhere."""
    from fibuild.config import Settings
    from fibuild.errors import ResolveError
    from fibuild.runtime.resolve import Resolver
    from fibuild.runtime.table_cache import load_table
    from fibuild.spec.workspace import Workspace

    settings = Settings.from_env({**os.environ, "FIBUILD_ROOT": str(root),
                                  "FIBUILD_CACHE_DIR": str(root / ".fibuild-cache")})
    ws = Workspace(root)
    found = {}
    for name in names:
        _, table, _ = load_table(ws, settings, name, slug, here=here)
        if table.borrowed:
            continue
        resolver = Resolver(table)
        for key in table.ranked:
            for mode in ("eager", "graph"):
                try:
                    res = resolver.resolve(key, "exact", strict=True, mode=mode)
                except ResolveError:
                    continue
                found[(name, tuple(key), mode)] = (res.solution_name, res.verdict)
    return found


def compare(a: dict, b: dict) -> dict:
    rows, counts = [], {"keys": 0, "same": 0, "ambiguous": 0, "differ_ambiguous": 0, "differ_clear": 0}
    for k in sorted(set(a) & set(b)):
        (sa, va), (sb, vb) = a[k], b[k]
        ambiguous = "AMBIGUOUS" in (va, vb)
        counts["keys"] += 1
        counts["same"] += sa == sb
        counts["ambiguous"] += ambiguous
        if sa != sb:
            counts["differ_ambiguous" if ambiguous else "differ_clear"] += 1
        rows.append({"definition": k[0], "key": list(k[1]), "mode": k[2], "run1": sa, "verdict1": va,
                     "run2": sb, "verdict2": vb})
    return {"counts": counts, "rows": rows}


def report(result: dict) -> str:
    c = result["comparison"]["counts"]
    lines = ["# Resolution stability: two back-to-back bench runs", "",
             f"Device {result['device']}; definitions {', '.join(result['definitions'])}; `--rep {result['rep']}`. "
             f"Runs: {result['runs']}.", "",
             f"- keys x modes resolved in both runs: **{c['keys']}**",
             f"- same resolution: {c['same']}",
             f"- AMBIGUOUS in either run: **{c['ambiguous']}**",
             f"- different resolution, AMBIGUOUS in a run: {c['differ_ambiguous']}",
             f"- different resolution, not AMBIGUOUS in either run (should be 0): **{c['differ_clear']}**"]
    if "remeasured" in result:
        r = result["remeasured"]
        lines.append(f"- after `fibuild bench --ambiguous` on run 2's workspace ({r['run']}): AMBIGUOUS "
                     f"{r['ambiguous_before']} -> {r['ambiguous_after']}")
    lines += ["", "| definition | key | mode | run 1 | run 2 |", "|---|---|---|---|---|"]
    for r in result["comparison"]["rows"]:
        mark = "" if r["run1"] == r["run2"] else " ≠"
        lines.append(f"| {r['definition']} | {tuple(r['key'])} | {r['mode']} | {r['run1']} ({r['verdict1']}) | "
                     f"{r['run2']} ({r['verdict2']}){mark} |")
    return "\n".join(lines) + "\n"


def replay(args) -> int:
    """``--replay``: the comparison of a finished run, made again from its registries with this
    checkout's resolver; writes ``stability-replay.md`` and ``.json`` under ``--out``."""
    tmp = Path(tempfile.mkdtemp(prefix="fibuild-stability-replay-"))
    names = sorted(p.name for p in (args.replay / "registry-run1").iterdir() if p.is_dir())
    found = []
    for run in ("run1", "run2"):
        make_workspace(tmp / run, names)
        shutil.copytree(args.replay / f"registry-{run}", tmp / run / "registry", dirs_exist_ok=True)
        found.append(resolutions(tmp / run, names, args.device_slug, here=False))
    result = {"device": args.device_slug, "definitions": names, "rep": "as recorded",
              "runs": "replayed from the recorded registries", "comparison": compare(*found)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stability-replay.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (args.out / "stability-replay.md").write_text(text)
    print(text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defs", nargs="+", default=list(DEFAULT_DEFS))
    parser.add_argument("--budget-s", type=float, default=330.0, help="the bench runs together (default 330)")
    parser.add_argument("--build-s", type=float, default=120.0, help="limit of the build step (default 120)")
    parser.add_argument("--rep", type=float, default=100.0, help="bench --rep in ms (default 100)")
    parser.add_argument("--remeasure", action="store_true", help="then bench --ambiguous in run 2's workspace")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the script itself")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "stability")
    parser.add_argument("--replay", type=Path, metavar="RUN",
                        help="no GPU: resolve a finished run's two registries (RUN/registry-run1, "
                             "RUN/registry-run2) again with this checkout's rule; needs --device-slug")
    parser.add_argument("--device-slug", help="with --replay: the records' device (e.g. nvidia-h100-80gb-hbm3-sm90)")
    args = parser.parse_args()
    if args.replay:
        if not args.device_slug:
            parser.error("--replay needs --device-slug")
        return replay(args)
    import torch

    from fibuild.devices import Device

    if args.device != "cpu" and not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fibuild-stability-"))
    roots = [tmp / "run1", tmp / "run2"]
    runs = []
    share = args.budget_s / (3 if args.remeasure else 2)  # each bench run's limit
    for root in roots:
        make_workspace(root, args.defs)
    # Build first (one parallel ninja run, outside the timed budget), so run 1 does not pay
    # compile time that run 2 does not.
    build = [sys.executable, "-m", "fibuild", "--root", str(roots[0]), "build", "--all"]
    for name in args.defs:
        build += ["-d", name]
    print("$", " ".join(build), flush=True)
    subprocess.run(build, env={**os.environ, "FIBUILD_ROOT": str(roots[0])}, timeout=args.build_s, check=False)
    for root in roots:
        runs.append(bench(root, args.defs, share, args.rep, args.device))
    slug = Device.parse(args.device).slug
    first, second = (resolutions(root, args.defs, slug) for root in roots)
    device_name = torch.cuda.get_device_name() if args.device != "cpu" else "cpu"
    result = {"device": device_name, "definitions": args.defs, "rep": args.rep, "runs": runs,
              "comparison": compare(first, second)}
    if args.remeasure:
        before = sum(v == "AMBIGUOUS" for _, v in second.values())
        run = bench(roots[1], args.defs, share, args.rep, args.device, ["--ambiguous"])
        after = sum(v == "AMBIGUOUS" for _, v in resolutions(roots[1], args.defs, slug).values())
        result["remeasured"] = {"run": run, "ambiguous_before": before, "ambiguous_after": after}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stability.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (args.out / "stability.md").write_text(text)
    print(text)
    for root in roots:  # the registries come back too: the evidence behind each count
        shutil.copytree(root / "registry", args.out / f"registry-{root.name}", dirs_exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

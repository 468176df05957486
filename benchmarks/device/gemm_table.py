"""The small-M GEMM table from the registry: every gemm definition on one device, each
solution's median with its share of the copy ceiling, and the resolved choice per M.

    python3 benchmarks/device/gemm_table.py --device nvidia-h200-sm90 \
        --ceilings ceilings.json --out benchmarks/results/gemm-h200.md

``ceilings.json`` comes from ``gemm_sweep.py --ceilings-only`` in the same device run as the
bench (``gemm_session.sh`` does both), so each % is against the copy bandwidth of that run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def leaderboard(definition: str, device: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "fibuild", "table", definition, "--device", device, "--json",
                           "--mode", "graph"],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode:
        raise SystemExit(f"fibuild table {definition}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True, help="device slug, e.g. nvidia-h200-sm90")
    parser.add_argument("--ceilings", required=True, type=Path, help="ceilings.json of the same run")
    parser.add_argument("--out", type=Path, help="markdown file (default: print)")
    args = parser.parse_args()
    ceil = json.loads(args.ceilings.read_text())
    bw = ceil["copy_tbps"] * 1e12
    intro = ("`fibuild bench --graph`: CUDA-graph replays over distinct weight buffers (up to 8 input sets, "
             f"each with its own weight, > the 60 MB L2), µs per call, median. Copy ceiling "
             f"{ceil['copy_tbps']:.2f} TB/s (1 GiB device copy, read + write), bf16 matmul ceiling "
             f"{ceil['matmul_tflops']:.0f} TFLOP/s, both measured in the same run. % = bytes moved "
             "(A + B + C) / time / copy ceiling. Resolved: `fibuild resolve --mode graph` (cuBLAS, the "
             "baseline, unless a kernel wins clearly: docs/resolution.md).")
    lines = [f"# Small-M GEMM on {ceil['device']} ({args.device})", "", intro, ""]
    for yaml in sorted((ROOT / "defs" / "gemm").glob("*.yaml")):
        table = leaderboard(yaml.stem, args.device)
        sols = table["solutions"]
        lines += [f"## {yaml.stem}", "", "| M | MB | floor µs | " + " | ".join(f"{s} µs (%)" for s in sols)
                  + " | stream vs cuBLAS | resolved |", "|---:|---:|---:|" + "---:|" * len(sols) + "---:|---|"]
        n, k = (int(p[1:]) for p in yaml.stem.split("_")[1:3])
        for row in table["rows"]:
            m = row["axes"]["M"]
            nbytes = 2 * (n * k + m * k + m * n)
            floor = max(nbytes / bw, 2 * m * n * k / (ceil["matmul_tflops"] * 1e12)) * 1e6
            cells = []
            for s in sols:
                c = row["cells"].get(s)
                ok = c and c["status"] == "PASSED"
                cells.append(f"{c['median_us']:.2f} ({100 * nbytes / (c['median_us'] * 1e-6) / bw:.0f} %)" if ok
                             else (c["status"] if c else "—"))
            ts, tm = row["cells"].get("triton_stream"), row["cells"].get("torch_matmul")
            ratio = f"{tm['median_us'] / ts['median_us']:.2f}×" if ts and tm else "—"
            lines.append(f"| {m} | {nbytes / 1e6:.1f} | {floor:.2f} | " + " | ".join(cells)
                         + f" | {ratio} | {row['winner']} |")
        lines.append("")
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

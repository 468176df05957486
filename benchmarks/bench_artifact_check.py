"""What verifying a committed build costs at load: ``load_committed`` with and without the check.

Usage: ``python benchmarks/bench_artifact_check.py [BUILD_DIR ...] [--runs N] [--max-builds K]``. Without a
build directory it measures every committed native build of ``$FIBUILD_CACHE_DIR``
(``fibuild build --all`` first). For each build it prints the artifact's size, the check
alone (``store.check_meta``: meta.json read, its checksum, the artifact's sha256; median
of in-process repeats, page cache warm), and a warm start in fresh processes: the median
wall time of ``load_committed`` against ``load_entry`` on the same meta (no check).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, sys, time
from pathlib import Path
from fibuild.compile import store
from fibuild.compile.builders.loading import load_entry
from fibuild.compile.cache import load_committed
d = Path(sys.argv[1])
meta = json.loads((d / store.META).read_text())
import tvm_ffi  # imported before timing: both variants pay it equally
t = time.perf_counter()
if sys.argv[2] == "check":
    load_committed(d)
else:
    load_entry(d, meta)
print((time.perf_counter() - t) * 1e3)
"""


def fresh_process_ms(directory: Path, variant: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", CHILD, str(directory), variant], check=True,
                             capture_output=True, text=True)
        times.append(float(out.stdout.strip()))
    return statistics.median(times)


def main() -> None:
    from fibuild.compile import store
    from fibuild.config import Settings

    parser = argparse.ArgumentParser()
    parser.add_argument("dirs", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--max-builds", type=int, default=0,
                        help="measure at most this many builds, the largest artifacts first (0: all)")
    args = parser.parse_args()
    dirs = args.dirs or [b.path for b in store.scan(Settings.from_env().cache_dir)
                         if b.meta and b.meta["language"] in ("cpp", "cuda")]
    if args.max_builds > 0:
        def artifact_size(directory):
            return (directory / store.read_meta(directory)["artifact"]).stat().st_size

        dirs = sorted(dirs, key=artifact_size, reverse=True)[:args.max_builds]
    if not dirs:
        sys.exit("no committed native build: run `fibuild build --all` first, or name a build dir")
    rows = []
    for directory in dirs:
        meta = store.read_meta(directory)
        size = (directory / meta["artifact"]).stat().st_size
        checks = []
        for _ in range(50):
            t = time.perf_counter()
            store.check_meta(directory)
            checks.append((time.perf_counter() - t) * 1e6)
        with_check = fresh_process_ms(directory, "check", args.runs)
        without = fresh_process_ms(directory, "plain", args.runs)
        rows.append({"build": meta["solution"], "artifact_bytes": size,
                     "check_us": round(statistics.median(checks), 1),
                     "load_ms_with_check": round(with_check, 3), "load_ms_without": round(without, 3)})
        print(f"{meta['solution']:<40} {size / 1024:8.1f} KiB  check {statistics.median(checks):8.1f} µs  "
              f"load_committed {with_check:7.3f} ms vs {without:7.3f} ms unchecked", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

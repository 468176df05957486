"""``fibuild bench --executor dask``: the farm's command line and its progress display.

Progress covers the whole farm: items done / failed / running per worker, redrawn live on a
terminal; when piped, one line per finished item, then a line per worker.
"""
from __future__ import annotations

import argparse

from fibuild.bench.farm.driver import FarmReporter, run_farm
from fibuild.cli.bench_report import report_evaluations
from fibuild.cli.common import console
from fibuild.devices import default_device
from fibuild.errors import BenchError

# Heavy or optional dependencies, imported inside the functions that use them: rich.


def _reporter(console):
    class FarmProgress(FarmReporter):
        """Live table of workers on a terminal; one line per item otherwise."""

        def __init__(self):
            self.total = 0
            self.finished_items = 0
            self.counts = {}
            self.live = None

        def skipped(self, solution, reason):
            console.print(f"skip {solution}: {reason}")

        def resumed(self, device, count):
            console.print(f"resume: {count} item(s) already recorded on {device}")

        def starting(self, total, workers):
            self.total = total
            devices = sorted(set(workers.values()))
            console.print(f"farm: {total} item(s) on {len(workers)} worker(s) "
                          f"({', '.join(devices)})")
            if console.is_terminal:
                from rich.live import Live

                self.live = Live(self._table(), console=console, transient=True, refresh_per_second=4)
                self.live.start()

        def _table(self):
            from rich.table import Table

            table = Table(title=f"{self.finished_items}/{self.total} items", title_justify="left")
            for column in ("worker", "device", "done", "failed", "running"):
                table.add_column(column, justify="left" if column in ("worker", "device") else "right")
            for addr, count in sorted(self.counts.items()):
                table.add_row(addr, count.slug, str(count.done), str(count.failed), str(count.running))
            return table

        def item_finished(self, evaluation, worker):
            self.finished_items += 1
            if self.live is None:
                where = worker or "no worker"
                console.print(f"[{self.finished_items}/{self.total}] {evaluation.status:<19} "
                              f"{evaluation.definition}/{evaluation.solution} {evaluation.workload_uuid} "
                              f"on {evaluation.device} ({where})", markup=False, highlight=False)

        def progress(self, workers):
            self.counts = dict(workers)
            if self.live is not None:
                self.live.update(self._table())

        def finished(self, evaluations):
            self.stop()
            for addr, count in sorted(self.counts.items()):
                console.print(f"worker {addr} ({count.slug}): {count.done} done, {count.failed} failed",
                              markup=False, highlight=False)

        def stop(self):
            if self.live is not None:
                self.live.stop()
                self.live = None

    return FarmProgress()


def run_bench_farm(args: argparse.Namespace, settings, workspace) -> int:
    """Run ``fibuild bench`` on a Dask cluster; see :func:`fibuild.bench.farm.driver.run_farm`."""
    if args.executor != "dask":
        raise BenchError("--address joins a Dask cluster: use it with --executor dask")
    if args.world_size:
        raise BenchError("--world-size runs on the local machine's ranks; it does not combine with "
                         "--executor dask")
    if args.device and ":" in args.device:
        raise BenchError(f"--device {args.device}: a farm places tasks itself; use cpu or cuda")
    try:
        from fibuild.bench.farm.dask_engine import DaskEngine  # deferred: imports Dask distributed (optional)
    except ImportError as exc:
        raise BenchError(f"--executor dask needs Dask distributed ({exc}): pip install 'fibuild[farm]'") from None
    device = args.device
    if not args.address:  # a local cluster of this machine's devices
        device = device or default_device(settings)
    engine = DaskEngine(args.address, kind=device or "cpu", local_workers=args.farm_workers)
    out, err = console(), console(stderr=True)
    reporter = _reporter(err)
    try:
        evaluations = run_farm(workspace, settings, engine, args.definitions, solutions=args.solutions,
                               device=device, workload_limit=args.workload_limit,
                               recorded_only=args.recorded, warmup_ms=args.warmup,
                               rep_ms=args.rep, graph=args.graph, timeout_s=args.timeout,
                               resume=args.resume, task_size=args.task_size, reporter=reporter,
                               variant_limit=args.variant_limit)
    finally:
        reporter.stop()
    return report_evaluations(args, out, err, evaluations, workspace.registry_dir)

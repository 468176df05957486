"""``fibuild bench`` (check and time solutions into registry/) and ``fibuild table``
(a definition's leaderboard, as a table, JSON or a PNG plot).

This module is imported only when one of its subcommands runs (see :mod:`fibuild.cli`);
torch, rich and Dask are imported where they are used.
"""
from __future__ import annotations

import argparse

from fibuild.bench.compare import AMBIGUOUS, EAGER, GRAPH, MODES
from fibuild.bench.distributed import run_distributed
from fibuild.bench.farm.driver import drop_recorded
from fibuild.bench.leaderboard import leaderboard, plot_leaderboard, rich_table
from fibuild.bench.plan import BenchPlan, PlannedSolution, plan_benchmarks, plan_distributed
from fibuild.bench.reporter import BenchReporter
from fibuild.bench.runner import run_benchmarks
from fibuild.cli.bench_farm import run_bench_farm
from fibuild.cli.bench_report import report_evaluations
from fibuild.cli.common import console, parse_device, print_json, styled
from fibuild.devices import default_device, device_slug, local_devices, local_slugs
from fibuild.errors import BenchError, FibuildError, ResolveError
from fibuild.registry import Registry
from fibuild.runtime.choose import decisions_by_key
from fibuild.runtime.resolve import Resolver
from fibuild.runtime.table_cache import load_table
from fibuild.spec.workspace import Workspace
from fibuild.units import format_us

# Heavy or optional dependencies, imported inside the functions that use them: rich.


def _bounded(cast, minimum, *, strict: bool):
    """An argparse ``type``: ``cast(text)``, > ``minimum`` when ``strict``, else >= it (NaN refused)."""
    noun = "an integer" if cast is int else "a number"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {noun} {'>' if strict else '>='} {minimum}")
        return value

    return parse


_positive_float = _bounded(float, 0, strict=True)
_non_negative_float = _bounded(float, 0, strict=False)
_positive_int = _bounded(int, 1, strict=False)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("definitions", nargs="*", metavar="DEF",
                        help="definitions to benchmark (default: every definition)")
    parser.add_argument("--solution", action="append", metavar="S", dest="solutions",
                        help="only this solution (name or def/name; a grid's name takes all its variants, "
                             "name[K=v,...] one); repeatable")
    parser.add_argument("--workload-limit", type=_positive_int, metavar="N",
                        help="only the first N workloads of each definition")
    parser.add_argument("--variant-limit", type=_positive_int, metavar="N",
                        help="at most N variants of a solution's grid per workload (a different spread of "
                             "the grid per workload; default: every variant)")
    parser.add_argument("--recorded", action="store_true",
                        help="only the workloads recorded in registry/<def>/workloads.jsonl (traced or "
                             "imported), not those the manifests declare")
    parser.add_argument("--device", metavar="DEVICE",
                        help="cpu, cuda (one worker per visible GPU), cuda:N, or this machine's device slug "
                             "(default: FIBUILD_DEVICE, else cuda if available, else cpu)")
    parser.add_argument("--allow-failures", action="store_true",
                        help="exit 0 even when an evaluation is not PASSED (default: exit 1)")
    parser.add_argument("--warmup", type=_non_negative_float, default=25.0, metavar="MS",
                        help="warm-up time per measurement in ms (default 25)")
    parser.add_argument("--rep", type=_positive_float, default=100.0, metavar="MS",
                        help="timed repetitions per measurement, in ms (default 100)")
    parser.add_argument("--graph", action="store_true",
                        help="time CUDA-graph replays (for launch-bound kernels)")
    parser.add_argument("--timeout", type=_positive_float, default=60.0, metavar="S",
                        help="seconds one (solution, workload) may take before it is TIMEOUT (default 60)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would run; build and run nothing")
    parser.add_argument("--world-size", type=_positive_int, metavar="N",
                        help="run one distributed definition on N ranks (gloo on cpu; nccl on cuda, "
                             "one GPU a rank, timed with CUDA-graph replays)")
    parser.add_argument("--resume", action="store_true",
                        help="skip (workload, solution, digest, device) items the registry already holds")
    parser.add_argument("--ambiguous", action="store_true",
                        help="re-measure only the keys whose resolution is AMBIGUOUS on this device (a "
                             "challenger the noise does not let resolution tell apart; see `fibuild table`), "
                             "for the cost --graph or eager timing ranks")
    farm = parser.add_argument_group("farm", "run on the workers of a Dask cluster (pip install 'fibuild[farm]')")
    farm.add_argument("--executor", choices=("local", "dask"), default="local",
                      help="local: worker processes on this machine (default); dask: a Dask cluster")
    farm.add_argument("--address", metavar="ADDR",
                      help="scheduler of an existing Dask cluster (tcp://host:8786); default: start a "
                           "local cluster for this run and stop it after")
    farm.add_argument("--farm-workers", type=_positive_int, default=2, metavar="N",
                      help="CPU workers of a local cluster (default 2; a cuda farm starts one per GPU)")
    farm.add_argument("--task-size", type=_positive_int, default=8, metavar="N",
                      help="workloads per farm task (default 8)")


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("definition", metavar="DEF", help="the definition")
    parser.add_argument("--device", metavar="DEVICE",
                        help="a device slug with records, or cpu, cuda, cuda:N for this machine's (default: "
                             "this machine's device if it has records, else the only device with records)")
    parser.add_argument("--plot", metavar="OUT.png", help="also write a latency plot (needs matplotlib)")
    parser.add_argument("--mode", choices=MODES, default=EAGER,
                        help="the cost shown and ranked: eager (max of host and GPU time per call, the "
                             "default) or graph (GPU time), as `fibuild resolve --mode`")
    parser.add_argument("--variants", action="store_true",
                        help="a column per variant of a grid (default: the variant resolution picks, else "
                             "a grid's best variant per workload, in its solution's column)")


class _RichReporter:
    """Progress on stderr (a BenchReporter, built lazily to keep imports light): a bar on a
    terminal, one line per finished item otherwise (a log, a pipe)."""

    @staticmethod
    def create(console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


        class RichReporter(BenchReporter):
            def __init__(self):
                self.live = console.is_terminal
                self.total = self.done = 0
                self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                         MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)
                self.task = None

            def skipped(self, solution, reason):
                console.print(styled("skip", "yellow", f" {solution}: {reason}"))

            def starting(self, total, device):
                console.print(f"benchmarking {total} item{'s' if total != 1 else ''} on {device}")
                self.total = total
                if self.live:
                    self.progress.start()
                self.task = self.progress.add_task("building", total=total)

            def building(self, solution):
                self.progress.update(self.task, description=f"build {solution}")

            def built(self, solution, error):
                if error:
                    console.print(styled("build failed", "red", f" {solution}: {error.splitlines()[0]}"))

            def item_started(self, solution, workload_uuid, worker_device):
                self.progress.update(self.task, description=f"{solution} {workload_uuid}")

            def item_finished(self, evaluation):
                self.progress.advance(self.task)
                self.done += 1
                if not self.live:
                    took = format_us(evaluation.latency.median_us) if evaluation.latency else \
                        (evaluation.error.splitlines() or [""])[0][:100]
                    console.print(f"[{self.done}/{self.total}] {evaluation.status:<19} {evaluation.definition}/"
                                  f"{evaluation.solution} {evaluation.workload_uuid} {took}")

            def worker_replaced(self, worker_device, reason):
                console.print(styled(f"worker on {worker_device} replaced", "yellow", f": {reason}"))

            def finished(self, evaluations):
                self.progress.stop()

        return RichReporter()


def _say_where_records_go(err, workspace) -> None:
    """Check that the registry can be written before anything is measured, and say where it is."""
    folder = workspace.ensure_writable()
    note = " (the user workspace; the shipped library is read-only)" if workspace.base is not None else ""
    err.print(f"records go to {folder}{note}")


def run_bench(args: argparse.Namespace, settings) -> int:
    """Exit 1 when any evaluation is not PASSED, unless ``--allow-failures``."""
    workspace = Workspace.discover(settings)
    if (args.executor != "local" or args.address) and not args.dry_run:
        return run_bench_farm(args, settings, workspace)
    device = parse_device(args.device, workspace, local_only=True).kind if args.device else default_device(settings)
    if args.world_size:
        if len(args.definitions) != 1:
            raise BenchError(f"--world-size runs one distributed definition; got "
                             f"{len(args.definitions)} ({', '.join(args.definitions) or 'none'})")
        plan = plan_distributed(workspace, args.definitions[0], world_size=args.world_size,
                                solutions=args.solutions, device=device, workload_limit=args.workload_limit,
                                recorded_only=args.recorded)

        def run(reporter):
            return run_distributed(workspace, settings, args.definitions[0], world_size=args.world_size,
                                   warmup_ms=args.warmup, rep_ms=args.rep, timeout_s=args.timeout,
                                   reporter=reporter, plan=plan)
    else:
        plan = plan_benchmarks(workspace, args.definitions, solutions=args.solutions, device=device,
                               workload_limit=args.workload_limit, recorded_only=args.recorded,
                               variant_limit=args.variant_limit)
        if args.resume:
            slug = local_devices(device)[0].slug
            plan, dropped = drop_recorded(plan, Registry.of(workspace), slug)
            if dropped:
                console(stderr=True).print(f"resume: {dropped} item(s) already recorded on {slug}")
        if args.ambiguous:
            slug = local_devices(device)[0].slug
            plan, keys = keep_ambiguous(plan, workspace, settings, slug, GRAPH if args.graph else EAGER)
            console(stderr=True).print(f"ambiguous: {keys} key(s) to re-measure on {slug}, {plan.total} item(s)")

        def run(reporter):
            return run_benchmarks(workspace, settings, solutions=args.solutions, device=device,
                                  warmup_ms=args.warmup, rep_ms=args.rep, graph=args.graph,
                                  timeout_s=args.timeout, reporter=reporter, plan=plan)
    out = console()
    err = console(stderr=True)
    if not args.dry_run:
        _say_where_records_go(err, workspace)
    if args.dry_run:
        if args.json:
            print_json({"ok": True, "dry_run": True, "device": device, "world_size": args.world_size,
                        "items": plan.total, "registry": str(workspace.registry_dir),
                        "runs": [{"solution": g.solution.qualified_name, "language": g.solution.language,
                                  "workloads": [w.uuid for w in g.workloads]} for g in plan.groups],
                        "skipped": [{"name": name, "reason": reason} for name, reason in plan.skipped]})
            return 0
        for name, reason in plan.skipped:
            out.print(f"skip {name}: {reason}")
        for group in plan.groups:
            uuids = ", ".join(w.uuid for w in group.workloads)
            out.print(f"run  {group.solution.qualified_name} ({group.solution.language}) on "
                      f"{len(group.workloads)} workload(s): {uuids}")
        ranks = f" x {args.world_size} ranks" if args.world_size else ""
        out.print(f"{plan.total} item(s) on {device}{ranks}; registry: {workspace.registry_dir}")
        return 0
    reporter = _RichReporter.create(err)
    try:
        evaluations = run(reporter)
    finally:
        if reporter.task is not None:
            reporter.progress.stop()
    _note_unmeasured_baselines(err, workspace, settings, plan, device)
    return report_evaluations(args, out, err, evaluations, workspace.registry_dir)


def _note_unmeasured_baselines(err, workspace, settings, plan, device: str) -> None:
    """Say, for each benched definition whose baseline has no current record on this device,
    that what was just measured cannot replace it there until it is measured too (the
    resolver's rule, docs/resolution.md). A note only: never fails the run."""
    try:
        slug = local_devices(device)[0].slug
        for name in sorted({group.definition.name for group in plan.groups}):
            _, table, _ = load_table(workspace, settings, name, slug, here=True)
            if table.baseline_unmeasured() and not table.borrowed:
                err.print(styled("note", "yellow", f": {name}'s baseline {table.baseline} has no current "
                                 f"evaluation on {slug}, so nothing measured here replaces it; measure it "
                                 f"too: fibuild bench {name} --solution {table.baseline}"))
    except FibuildError as exc:  # the records are written; the note is a courtesy
        err.print(f"(could not check the baselines: {exc})")


def _table_device(registry, definition: str, settings, requested: str | None, workspace) -> str:
    devices = registry.devices(definition)
    if requested:
        slug = parse_device(requested, workspace).slug
        if slug not in devices:
            raise BenchError(f"no evaluations of {definition} on {slug!r} "
                             f"(devices with records: {', '.join(devices) or 'none'})")
        return slug
    if not devices:
        raise BenchError(f"no evaluations of {definition} yet: run `fibuild bench {definition}`")

    try:
        here = device_slug(default_device(settings))
    except FibuildError:
        here = None
    if here in devices:
        return here
    if len(devices) == 1:
        return devices[0]
    raise BenchError(f"{definition} has records for several devices ({', '.join(devices)}): pick one "
                     "with --device")


def keep_ambiguous(plan: BenchPlan, workspace, settings, slug: str, mode: str) -> tuple[BenchPlan, int]:
    """``plan`` cut to the workloads of the keys whose decision on ``slug`` in ``mode`` is
    AMBIGUOUS (:func:`fibuild.runtime.choose.decide`, the resolver's own rule), and how many
    such keys there are. A definition without usable evaluations here has none. Cost: one
    apply table per definition (cached)."""
    ambiguous: dict[str, set] = {}
    for group in plan.groups:
        defn = group.definition
        if defn.name not in ambiguous:
            _, table, _ = load_table(workspace, settings, defn.name, slug, here=True)
            found = {} if table.borrowed else decisions_by_key(table, mode, table.excluded)
            ambiguous[defn.name] = {k for k, d in found.items() if d.verdict == AMBIGUOUS}
    groups = []
    for group in plan.groups:
        keys, defn = ambiguous[group.definition.name], group.definition
        keep = tuple(w for w in group.workloads if defn.apply_key(w.axes) in keys)
        if keep:
            groups.append(PlannedSolution(defn, group.solution, keep))
    return BenchPlan(device=plan.device, groups=groups, skipped=list(plan.skipped)), \
        sum(len(keys) for keys in ambiguous.values())


def resolver_chooser(workspace, settings, defn, device: str, mode: str):
    """``(choose(axes) -> (solution, verdict), current digests)`` for ``fibuild table``: the
    resolver's own answer at each evaluated key, by the chain ``fibuild resolve`` runs from
    ``exact`` (so a baseline measured only in an older version keeps the star, as it keeps the
    key), and each solution's current digest (a record of another version is shown as stale).
    A table borrowed from another device stars nothing."""
    here = device in local_slugs()
    _, table, _ = load_table(workspace, settings, defn.name, device, here=here)
    resolver = Resolver(table)

    def choose(axes):
        try:
            res = resolver.resolve(defn.apply_key(axes), "exact", mode=mode)
        except (KeyError, ResolveError):
            return None, None
        return (None, None) if res.borrowed else (res.solution_name, res.verdict)

    return choose, {name: cand.digest for name, cand in table.candidates.items()}


def run_table(args: argparse.Namespace, settings) -> int:
    workspace = Workspace.discover(settings)
    defn = workspace.definition(args.definition)
    registry = Registry.of(workspace)
    device = _table_device(registry, defn.name, settings, args.device, workspace)
    choose, current = resolver_chooser(workspace, settings, defn, device, args.mode)
    board = leaderboard(defn, device, registry.read(defn.name, device), choose, mode=args.mode,
                        group_variants=not args.variants, current=current)
    plotted = plot_leaderboard(board, args.plot) if args.plot else None
    if args.json:
        data = {"ok": True, **board.to_json()}
        if plotted:
            data["plot"] = str(plotted)
        print_json(data)
        return 0
    out = console()
    out.print(rich_table(board))
    if plotted:
        out.print(f"plot written to {plotted}")
    return 0

"""The ApplyTable: what the registry says about one definition on one device.

Built from the definition's candidate solutions (each with its current digest and whether
it can run here) and its evaluation records. Only ``PASSED`` records whose digest equals
the solution's current digest count; a solution whose latest record for some workload of
a key is not ``PASSED`` is never chosen for that key. This module is pure: no I/O, no
torch; :mod:`fibuild.runtime.collect` gathers the inputs, :mod:`fibuild.runtime.table_cache`
stores the table as JSON.
"""
from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from fibuild.spec.model import NOT_THE_KERNELS_FAULT, ApplyKey, Evaluation, LatencyStats, Solution

from .decisions import REFERENCE
from .timings import Timing, aggregate, with_host_drift

#: How the reason of a solution whose records on the device are all of older versions begins.
STALE = "stale digest"
#: Why a solution with no record at all on the device takes no part (``ApplyTable.excluded``).
NOT_HERE = "no evaluation on this device"


@dataclass(frozen=True)
class Candidate:
    """A solution of the definition as it is now.

    ``digest`` is its current solution digest; ``unavailable`` says why it cannot run on
    the table's device ("" when it can); ``build_key`` names its build when known (its
    directory follows from the key: :func:`fibuild.compile.store.build_dir`).
    """

    solution: Solution
    digest: str
    unavailable: str = ""
    build_key: str = ""


@dataclass(frozen=True)
class ChainChoice:
    """A solution chosen for a key by a chain evaluation (timed in sequence with its
    neighbours): the chain's name and its time per layer with this choice."""

    solution: str
    chain: str
    chain_latency_us: float


@dataclass
class ApplyTable:
    """Per-key measurements and per-solution verdicts for one (definition, device).

    ``ranked[key]``: Timings of the solutions that PASSED every workload of ``key``, fastest
    GPU median first. ``failed[s]``: keys where ``s`` failed some workload. ``excluded[s]``:
    why ``s`` takes no part at all (stale digest, no evaluation on this device, cannot run
    here, not in the workspace). ``failures[s]``: a summary such as ``INCORRECT_NUMERICAL on
    3/12 workloads``. ``reference[key]``: the definition's reference at ``key`` (from the
    reference latencies the key's records carry), a challenger like any solution.
    ``baseline``: the first of the definition's baselines that is a candidate able to run on
    the device (None when none is); ``baseline_note`` says why an earlier one was skipped.
    ``borrowed``: the slug of the device whose records the table holds when this device has
    no usable evaluation of its own and one of the same compute capability has ("" when the
    records are this device's own). Which solution wins a key is decided by
    :mod:`fibuild.runtime.choose`, not stored here. ``chained[key]``: the newest current chain
    choice at ``key`` (:mod:`fibuild.bench.chain`), which the decision at the key prefers.
    ``host_slowdown``: the factor the host times' upper ends reach
    (:func:`fibuild.bench.compare.host_slowdown`; 1.0 without host times).
    """

    definition: str
    var_axes: tuple[str, ...]
    device: str
    candidates: dict[str, Candidate]
    ranked: dict[ApplyKey, tuple[Timing, ...]] = field(default_factory=dict)
    failed: dict[str, frozenset] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    here: bool = True
    reference: dict[ApplyKey, Timing] = field(default_factory=dict)
    baseline: str | None = None
    baseline_note: str = ""
    borrowed: str = ""
    unmeasured: frozenset = frozenset()
    chained: dict[ApplyKey, ChainChoice] = field(default_factory=dict)
    host_slowdown: float = 1.0

    def baseline_unmeasured(self) -> str | None:
        """How the baseline went unmeasured on this device while other solutions were measured:
        ``"never"`` (no record) or ``"only in an older version"`` (stale digests); None when it
        was measured, when there is no baseline, or when nothing was measured. Then nothing
        measured beside it can be shown to beat it (:mod:`fibuild.runtime.resolve`)."""
        if self.baseline is None or self.baseline not in self.unmeasured or not self.ranked:
            return None
        return "only in an older version" if self.excluded.get(self.baseline, "").startswith(STALE) else "never"

    # JSON form (the table cache): keys become lists, Solutions their manifest dicts.
    def to_json(self) -> dict[str, Any]:
        return {
            "definition": self.definition, "var_axes": list(self.var_axes), "device": self.device,
            "here": self.here,
            "candidates": {n: _candidate_to_json(c) for n, c in self.candidates.items()},
            "ranked": [[list(k), [_timing_to_json(t) for t in ts]] for k, ts in self.ranked.items()],
            "failed": {s: [list(k) for k in sorted(keys)] for s, keys in self.failed.items()},
            "failures": dict(self.failures), "excluded": dict(self.excluded),
            "reference": [[list(k), _timing_to_json(t)] for k, t in self.reference.items()],
            "baseline": self.baseline, "baseline_note": self.baseline_note, "borrowed": self.borrowed,
            "unmeasured": sorted(self.unmeasured),
            "chained": [[list(k), c.solution, c.chain, c.chain_latency_us] for k, c in self.chained.items()],
            "host_slowdown": self.host_slowdown,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], solution_from_dict) -> "ApplyTable":
        """Inverse of :meth:`to_json`; ``solution_from_dict(raw, path)`` rebuilds Solutions.

        Raises KeyError/TypeError/ValueError on a malformed payload (callers treat that
        as a cache miss).
        """
        return cls(
            definition=data["definition"], var_axes=tuple(data["var_axes"]), device=data["device"],
            here=bool(data["here"]),
            candidates={n: _candidate_from_json(c, solution_from_dict)
                        for n, c in data["candidates"].items()},
            ranked={tuple(k): tuple(_timing_from_json(t) for t in ts) for k, ts in data["ranked"]},
            failed={s: frozenset(tuple(k) for k in keys) for s, keys in data["failed"].items()},
            failures=dict(data["failures"]), excluded=dict(data["excluded"]),
            reference={tuple(k): _timing_from_json(t) for k, t in data["reference"]},
            baseline=data["baseline"], baseline_note=str(data["baseline_note"]),
            borrowed=str(data["borrowed"]), unmeasured=frozenset(data["unmeasured"]),
            chained={tuple(k): ChainChoice(s, c, float(us)) for k, s, c, us in data.get("chained", ())},
            host_slowdown=float(data["host_slowdown"]),
        )


_STATS_FIELDS = ("median_us", "p20_us", "p80_us", "mean_us", "n", "min_us", "q1_us", "q3_us")


def _stats_to_json(stats: LatencyStats | None) -> list | None:
    return None if stats is None else [getattr(stats, f) for f in _STATS_FIELDS]


def _stats_from_json(data: list | None) -> LatencyStats | None:
    if data is None:
        return None
    values = dict(zip(_STATS_FIELDS, data, strict=True))
    return LatencyStats(**{k: (int(v) if k == "n" else None if v is None else float(v))
                           for k, v in values.items()})


def _timing_to_json(t: Timing) -> list:
    return [t.solution, _stats_to_json(t.gpu), _stats_to_json(t.host)]


def _timing_from_json(data: list) -> Timing:
    name, gpu, host = data
    return Timing(str(name), _stats_from_json(gpu), _stats_from_json(host))


def solution_manifest(sol: Solution) -> dict[str, Any]:
    """The manifest dict of ``sol``: its ``raw`` when it has one, else rebuilt from fields."""
    if sol.raw:
        return dict(sol.raw)
    data: dict[str, Any] = {
        "name": sol.name, "definition": sol.definition, "language": sol.language,
        "entry_point": sol.entry_point, "sources": list(sol.sources),
        "destination_passing_style": sol.destination_passing_style,
    }
    if sol.author:
        data["author"] = sol.author
    if sol.description:
        data["description"] = sol.description
    if sol.target_hardware:
        data["target_hardware"] = list(sol.target_hardware)
    if sol.dependencies:
        data["dependencies"] = list(sol.dependencies)
    if sol.plan:
        data["plan"] = sol.plan
    flags = {k: list(v) for k, v in vars(sol.build).items() if v}
    if flags:
        data["build"] = flags
    return data


def _candidate_to_json(c: Candidate) -> dict[str, Any]:
    return {"manifest": solution_manifest(c.solution),
            "path": str(c.solution.path) if c.solution.path else None,
            "variant": c.solution.name if c.solution.name != c.solution.family else None,
            "constants": [[k, v] for k, v in c.solution.constants],
            "digest": c.digest, "unavailable": c.unavailable,
            "build_key": c.build_key}


def _candidate_from_json(data: Mapping[str, Any], solution_from_dict) -> Candidate:
    sol = solution_from_dict(data["manifest"], data["path"])
    if data.get("variant"):  # a variant of the manifest's grid
        sol = dataclasses.replace(sol, name=data["variant"], constants=tuple(tuple(c) for c in data["constants"]))
    return Candidate(sol, data["digest"], data["unavailable"], data["build_key"])


def build_table(definition: str, var_axes: Iterable[str], device: str,
                candidates: Mapping[str, Candidate], evaluations: Iterable[Evaluation],
                *, here: bool = True, baselines: Iterable[str] = (),
                chain_records: Iterable[Mapping[str, Any]] = ()) -> ApplyTable:
    """Build the ApplyTable of ``definition`` on ``device``.

    ``evaluations`` may hold records of any device and definition: only this definition's
    records on ``device`` are ranked; the others only name where else it was measured.
    For a (solution, workload) pair the newest record counts (by timestamp, then file
    order: the registry is append-only). ``here`` False: the device is not this machine, so
    ``Candidate.unavailable`` is ignored. ``baselines``: the definition's baseline names, in
    order of preference. ``chain_records``: chain choices
    (:meth:`fibuild.registry.Registry.read_chains`); the newest current one per key counts.
    Cost: linear in the records.
    """
    var_axes = tuple(var_axes)
    table = ApplyTable(definition, var_axes, device, dict(candidates), here=here)
    latest: dict[tuple[str, str], Evaluation] = {}  # (solution, workload) -> last current record
    seen_here: dict[str, set[str]] = defaultdict(set)  # solution -> digests seen on this device
    elsewhere: dict[str, set[str]] = defaultdict(set)  # solution -> other devices with records
    for ev in evaluations:
        if ev.definition != definition or ev.status in NOT_THE_KERNELS_FAULT:
            continue
        if ev.device != device:
            elsewhere[ev.solution].add(ev.device)
            continue
        seen_here[ev.solution].add(ev.solution_digest)
        cand = candidates.get(ev.solution)
        if cand is None or ev.solution_digest != cand.digest:
            continue
        try:
            tuple(int(ev.axes[a]) for a in var_axes)
        except (KeyError, TypeError, ValueError):
            continue  # a record without this definition's var axes cannot be keyed
        kept = latest.get((ev.solution, ev.workload_uuid))
        if kept is None or ev.timestamp >= kept.timestamp:
            latest[(ev.solution, ev.workload_uuid)] = ev

    unmeasured: set[str] = set()
    for name in sorted(set(seen_here) - set(candidates)):
        table.excluded[name] = "not in the workspace (evaluated on this device, no manifest)"
    for name, cand in sorted(candidates.items()):
        if here and cand.unavailable:
            table.excluded[name] = f"cannot run here: {cand.unavailable}"
        elif name not in seen_here:
            others = sorted(elsewhere.get(name, ()))
            table.excluded[name] = (NOT_HERE
                                    + (f" (evaluated on {', '.join(others)})" if others else ""))
            unmeasured.add(name)
        elif cand.digest not in seen_here[name]:
            table.excluded[name] = (f"{STALE}: every record on this device is of an older "
                                    "version of the solution")
            unmeasured.add(name)
    table.unmeasured = frozenset(unmeasured)

    per_key: dict[tuple[str, ApplyKey], list[Evaluation]] = defaultdict(list)
    statuses: dict[str, Counter] = defaultdict(Counter)
    for (name, _), ev in latest.items():
        if name in table.excluded:
            continue
        key = tuple(int(ev.axes[a]) for a in var_axes)
        per_key[(name, key)].append(ev)
        statuses[name][ev.status] += 1

    failed: dict[str, set] = defaultdict(set)
    ranked: dict[ApplyKey, list[Timing]] = defaultdict(list)
    reference: dict[ApplyKey, list[Evaluation]] = defaultdict(list)
    for (name, key), evs in per_key.items():
        reference[key] += [ev for ev in evs if ev.reference_latency is not None]
        if any(ev.status != "PASSED" or ev.latency is None for ev in evs):
            failed[name].add(key)
            continue
        ranked[key].append(Timing(name, aggregate(ev.latency for ev in evs),
                                  aggregate(ev.host_latency for ev in evs)))
    drifted, table.host_slowdown = with_host_drift(ranked)
    table.ranked = {k: tuple(sorted(ts, key=Timing.rank)) for k, ts in sorted(drifted.items())}
    reference_timings = {k: [Timing(REFERENCE, aggregate(ev.reference_latency for ev in evs),
                                    aggregate(ev.reference_host_latency for ev in evs))]
                         for k, evs in sorted(reference.items()) if evs}
    # the slowdown the solutions saw applies to the reference too (one host, one run's state)
    drifted, _ = with_host_drift(reference_timings, table.host_slowdown)
    table.reference = {k: t for k, (t,) in drifted.items()}
    table.failed = {s: frozenset(keys) for s, keys in sorted(failed.items())}
    for name, counts in sorted(statuses.items()):
        total = sum(counts.values())
        bad = sorted((s, n) for s, n in counts.items() if s != "PASSED")
        if bad:
            table.failures[name] = ", ".join(f"{s} on {n}/{total} workloads" for s, n in bad)
    table.baseline, table.baseline_note = pick_baseline(baselines, candidates, here)
    table.chained = _chained(table, chain_records)
    return table


def pick_baseline(baselines: Iterable[str], candidates: Mapping[str, Candidate],
                  here: bool) -> tuple[str | None, str]:
    """The first of ``baselines`` that is a candidate able to run on the device, and a note on
    those skipped before it (or on why none qualifies)."""
    skipped = []
    for name in baselines:
        cand = candidates.get(name)
        if cand is None:
            skipped.append(f"{name} is not a solution of the definition")
        elif here and cand.unavailable:
            skipped.append(f"{name} cannot run here ({cand.unavailable})")
        else:
            return name, "; ".join(skipped)
    if not skipped:
        return None, "the definition names no baseline"
    return None, "; ".join(skipped)


def usable_keys(table: ApplyTable) -> int:
    """Keys where some solution that takes part PASSED (what borrowing is decided on)."""
    return sum(1 for k, ts in table.ranked.items()
               if any(t.solution not in table.excluded and k not in table.failed.get(t.solution, ())
                      for t in ts))


def _chained(table: ApplyTable, records: Iterable[Mapping[str, Any]]) -> dict[ApplyKey, ChainChoice]:
    """The newest chain choice per key among ``records`` of this definition and device whose
    digest is the solution's current one and that is not excluded."""
    newest: dict[ApplyKey, Mapping[str, Any]] = {}
    for rec in records:
        cand = table.candidates.get(rec["solution"])
        if (rec["definition"] != table.definition or rec["device"] != table.device or cand is None
                or rec["solution_digest"] != cand.digest or rec["solution"] in table.excluded):
            continue
        try:
            key = tuple(int(rec["axes"][a]) for a in table.var_axes)
        except (KeyError, TypeError, ValueError):
            continue
        if key not in newest or rec["timestamp"] >= newest[key]["timestamp"]:
            newest[key] = rec
    return {k: ChainChoice(r["solution"], r["chain"], float(r["chain_latency_us"]))
            for k, r in sorted(newest.items())}

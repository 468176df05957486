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

from fibuild.spec.model import NOT_THE_KERNELS_FAULT, ApplyKey, Evaluation, Solution
from fibuild.units import format_us

from .decisions import REFERENCE

# Heavy or optional dependencies, imported inside the functions that use them: statistics.


@dataclass(frozen=True)
class Candidate:
    """A solution of the definition as it is now.

    ``digest`` is its current solution digest; ``unavailable`` says why it cannot run on
    the table's device ("" when it can); ``build_key``/``build_dir`` name its build when
    known (``build_dir`` only for a build committed when the table was made).
    """

    solution: Solution
    digest: str
    unavailable: str = ""
    build_key: str = ""
    build_dir: str = ""


@dataclass(frozen=True)
class Timing:
    """One solution's latency at one key: medians over the key's workloads, in µs."""

    solution: str
    median_us: float
    p80_us: float

    def rank(self) -> tuple[float, float, str]:
        """Sort order: faster median, then lower p80, then name (deterministic ties)."""
        return (self.median_us, self.p80_us, self.solution)


@dataclass(frozen=True)
class ChainChoice:
    """A solution chosen for a key by a chain evaluation (timed in sequence with its
    neighbours): the chain's name and its time per layer with this choice."""

    solution: str
    chain: str
    chain_latency_us: float


@dataclass
class ApplyTable:
    """Per-key rankings and per-solution verdicts for one (definition, device).

    ``ranked[key]``: Timings of the solutions that PASSED every workload of ``key``, fastest
    first. ``failed[s]``: keys where ``s`` failed some workload. ``excluded[s]``: why ``s``
    takes no part at all (stale digest, no evaluation on this device, cannot run here, not
    in the workspace). ``failures[s]``: a summary such as ``INCORRECT_NUMERICAL on 3/12
    workloads``. ``reference[key]``: the definition's reference at ``key`` (medians of the
    reference latencies the key's records carry), a competitor like any solution.
    ``wins[s]``: keys where ``s`` is fastest, the reference included (as ``reference``);
    ``def_best`` has the most. ``chained[key]``: the newest current chain choice at ``key``
    (:mod:`fibuild.bench.chain`), which the resolver prefers to the per-kernel ranking.
    """

    definition: str
    var_axes: tuple[str, ...]
    device: str
    candidates: dict[str, Candidate]
    ranked: dict[ApplyKey, tuple[Timing, ...]] = field(default_factory=dict)
    failed: dict[str, frozenset] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    wins: dict[str, int] = field(default_factory=dict)
    def_best: str | None = None
    here: bool = True
    reference: dict[ApplyKey, Timing] = field(default_factory=dict)
    chained: dict[ApplyKey, ChainChoice] = field(default_factory=dict)

    def best_at(self, key: ApplyKey) -> Timing | None:
        ranked = self.ranked.get(tuple(key))
        return ranked[0] if ranked else None

    def winner_at(self, key: ApplyKey, exclude=()) -> Timing | None:
        """The fastest of the usable solutions at ``key`` and the reference: the best
        Timing not in ``exclude``, or the reference's when it is faster (or nothing is
        usable). None when neither is known at ``key``."""
        best = next((t for t in self.ranked.get(tuple(key), ()) if t.solution not in exclude), None)
        ref = self.reference.get(tuple(key))
        if ref is not None and (best is None or ref.median_us < best.median_us):
            return ref
        return best

    # JSON form (the table cache): keys become lists, Solutions their manifest dicts.
    def to_json(self) -> dict[str, Any]:
        return {
            "definition": self.definition, "var_axes": list(self.var_axes), "device": self.device,
            "here": self.here,
            "candidates": {n: _candidate_to_json(c) for n, c in self.candidates.items()},
            "ranked": [[list(k), [[t.solution, t.median_us, t.p80_us] for t in ts]]
                       for k, ts in self.ranked.items()],
            "failed": {s: [list(k) for k in sorted(keys)] for s, keys in self.failed.items()},
            "failures": dict(self.failures), "excluded": dict(self.excluded),
            "wins": dict(self.wins), "def_best": self.def_best,
            "reference": [[list(k), t.median_us, t.p80_us] for k, t in self.reference.items()],
            "chained": [[list(k), c.solution, c.chain, c.chain_latency_us] for k, c in self.chained.items()],
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
            ranked={tuple(k): tuple(Timing(s, float(m), float(p)) for s, m, p in ts)
                    for k, ts in data["ranked"]},
            failed={s: frozenset(tuple(k) for k in keys) for s, keys in data["failed"].items()},
            failures=dict(data["failures"]), excluded=dict(data["excluded"]),
            wins={s: int(n) for s, n in data["wins"].items()}, def_best=data["def_best"],
            reference={tuple(k): Timing(REFERENCE, float(m), float(p)) for k, m, p in data["reference"]},
            chained={tuple(k): ChainChoice(s, c, float(us)) for k, s, c, us in data.get("chained", ())},
        )


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
            "build_key": c.build_key, "build_dir": c.build_dir}


def _candidate_from_json(data: Mapping[str, Any], solution_from_dict) -> Candidate:
    sol = solution_from_dict(data["manifest"], data["path"])
    if data.get("variant"):  # a variant of the manifest's grid
        sol = dataclasses.replace(sol, name=data["variant"], constants=tuple(tuple(c) for c in data["constants"]))
    return Candidate(sol, data["digest"], data["unavailable"], data["build_key"], data["build_dir"])


def build_table(definition: str, var_axes: Iterable[str], device: str,
                candidates: Mapping[str, Candidate], evaluations: Iterable[Evaluation],
                *, here: bool = True, chain_records: Iterable[Mapping[str, Any]] = ()) -> ApplyTable:
    """Build the ApplyTable of ``definition`` on ``device``.

    ``evaluations`` may hold records of any device and definition: only this definition's
    records on ``device`` are ranked; the others only name where else it was measured.
    For a (solution, workload) pair the newest record counts (by timestamp, then file
    order: the registry is append-only). ``here`` False: the device is not this machine, so
    ``Candidate.unavailable`` is ignored. ``chain_records``: chain choices
    (:meth:`fibuild.registry.Registry.read_chains`); the newest current one per key counts.
    Cost: linear in the records.
    """
    import statistics  # slow path only: statistics pulls in decimal and fractions

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

    for name in sorted(set(seen_here) - set(candidates)):
        table.excluded[name] = "not in the workspace (evaluated on this device, no manifest)"
    for name, cand in sorted(candidates.items()):
        if here and cand.unavailable:
            table.excluded[name] = f"cannot run here: {cand.unavailable}"
        elif name not in seen_here:
            others = sorted(elsewhere.get(name, ()))
            table.excluded[name] = ("no evaluation on this device"
                                    + (f" (evaluated on {', '.join(others)})" if others else ""))
        elif cand.digest not in seen_here[name]:
            table.excluded[name] = ("stale digest: every record on this device is of an older "
                                    "version of the solution")

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
        ranked[key].append(Timing(name, statistics.median(ev.latency.median_us for ev in evs),
                                  statistics.median(ev.latency.p80_us for ev in evs)))
    table.ranked = {k: tuple(sorted(ts, key=Timing.rank)) for k, ts in sorted(ranked.items())}
    table.reference = {
        k: Timing(REFERENCE, statistics.median(ev.reference_latency.median_us for ev in evs),
                  statistics.median(ev.reference_latency.p80_us for ev in evs))
        for k, evs in sorted(reference.items()) if evs}
    table.failed = {s: frozenset(keys) for s, keys in sorted(failed.items())}
    for name, counts in sorted(statuses.items()):
        total = sum(counts.values())
        bad = sorted((s, n) for s, n in counts.items() if s != "PASSED")
        if bad:
            table.failures[name] = ", ".join(f"{s} on {n}/{total} workloads" for s, n in bad)
    table.chained = _chained(table, chain_records)
    wins = Counter(table.winner_at(k).solution for k in table.ranked)
    table.wins = dict(sorted(wins.items()))
    if wins:
        table.def_best = min(wins, key=lambda s: (-wins[s], s))
    return table


def slower_reason(timing: Timing, best: Timing) -> str:
    """``slower: 41.2 µs vs 30.1 µs`` (or a tie note when medians are equal)."""
    if timing.median_us == best.median_us:
        return (f"tied at {format_us(timing.median_us)}; {best.solution} wins on "
                + ("p80" if timing.p80_us != best.p80_us else "name"))
    return f"slower: {format_us(timing.median_us)} vs {format_us(best.median_us)}"


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

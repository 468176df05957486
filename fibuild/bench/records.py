"""From planned groups to items, and from a child's reply to an Evaluation: the steps both
runners (single device, distributed) share.

:func:`build_items` builds the planned solutions in the parent, in one build batch, and
loads none of them (a failed build becomes a COMPILE_ERROR record per workload); it orders
the rest workload-major, so consecutive items share a workload and a worker computes each
reference once. :func:`evaluation` is the one place a record is assembled.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from ..compile.batch import BuildItem
from ..compile.batch import build_items as build_many_items
from ..compile.keys import digest_of, key_inputs
from ..errors import BuildError
from ..registry import latency_from_dict
from ..spec.model import Definition, Evaluation, Solution, Workload
from .plan import PlannedSolution
from .protocol import workload_to_json
from .reporter import BenchReporter

#: Characters of error text a record keeps (the tail: where tracebacks end).
ERROR_TAIL = 4000


@dataclass(frozen=True)
class BenchItem:
    """One (definition, solution, workload) to check and time, with its build identity."""

    index: int
    definition: Definition
    solution: Solution
    workload: Workload
    build_key: str
    solution_digest: str

    def message(self, op: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """The protocol request ``op`` (``prepare`` or ``run``) for this item."""
        return {"op": op, "id": self.index, "definition": self.definition.name,
                "solution": self.solution.qualified_name, "workload": workload_to_json(self.workload),
                **options}


def utc_timestamp() -> str:
    """Now, UTC, ISO 8601 with milliseconds and ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def evaluation(item: BenchItem, slug: str, status: str, environment: Mapping[str, Any], *,
               reply: Mapping[str, Any] | None = None, error: str = "",
               prepare_s: float | None = None) -> Evaluation:
    """The record of ``item`` on device ``slug``.

    ``reply`` is a child's (or the ranks' merged) result: ``latency``, ``reference_latency``
    and (CUDA) their ``host_latency`` / ``reference_host_latency`` as JSON dicts, max errors,
    ``timing`` (goes into the environment) and ``error`` (used when ``error`` is empty). The
    speedup is reference over solution median.
    """
    reply = reply or {}
    latency = latency_from_dict(reply.get("latency"))
    ref = latency_from_dict(reply.get("reference_latency"))
    speedup = None
    if latency and ref and latency.median_us > 0 and ref.median_us > 0:
        speedup = ref.median_us / latency.median_us
    env = dict(environment)
    if reply.get("timing"):
        env["timing"] = reply["timing"]
    return Evaluation(
        definition=item.definition.name, solution=item.solution.name,
        solution_digest=item.solution_digest, build_key=item.build_key,
        workload_uuid=item.workload.uuid, axes=dict(item.workload.axes), status=status, device=slug,
        latency=latency, reference_latency=ref, plan_latency=latency_from_dict(reply.get("plan_latency")),
        host_latency=latency_from_dict(reply.get("host_latency")),
        reference_host_latency=latency_from_dict(reply.get("reference_host_latency")),
        speedup=speedup, max_abs_error=reply.get("max_abs_error"), max_rel_error=reply.get("max_rel_error"),
        error=(error or reply.get("error") or "")[-ERROR_TAIL:], environment=env,
        timestamp=utc_timestamp(), prepare_s=prepare_s)


#: Build outcomes a solution is benchmarked after.
OK = ("cached", "built")


def build_items(groups: Sequence[PlannedSolution], settings, reporter: BenchReporter,
                compile_error: Callable[[BenchItem, str], None]) -> list[BenchItem]:
    """Build every group's solution in one build batch (:func:`fibuild.compile.batch.build_items`:
    one ninja run for every stale native build); return the items to run, workload-major.

    Nothing is loaded here: the workers load what they run. Each solution's sources are
    hashed once, for its key and its digest alike. For a solution that does not build,
    ``compile_error(item, error text)`` is called once per workload instead (the caller
    records it). Raises CacheError when the cache cannot be used. Cost: the builds (a
    verified commit costs one key computation and one check).
    """
    batch: list[BuildItem] = []
    digests: dict[str, str] = {}
    errors: dict[str, str] = {}
    for group in groups:
        defn, sol = group.definition, group.solution
        reporter.building(sol.qualified_name)
        try:
            inputs = key_inputs(defn, sol, settings)
        except BuildError as exc:  # an unknown language, an unreadable source: no key, no digest
            errors[sol.qualified_name] = str(exc)
            reporter.built(sol.qualified_name, str(exc))
            continue
        digests[sol.qualified_name] = digest_of(inputs)
        batch.append(BuildItem(defn, sol, inputs=inputs))
    report = build_many_items(settings, batch)
    built = {o.solution: o for o in report.outcomes}
    for outcome in report.outcomes:
        reporter.built(outcome.solution, None if outcome.status in OK else (outcome.error or outcome.status))
    keys = {item.sol.qualified_name: item.key for item in batch}
    items: list[BenchItem] = []
    order: dict[tuple[str, str], int] = {}
    index = 0
    for group in groups:
        defn, sol = group.definition, group.solution
        name = sol.qualified_name
        for wl in group.workloads:
            order.setdefault((defn.name, wl.uuid), len(order))
        outcome = built.get(name)
        error = errors.get(name)
        if error is None and (outcome is None or outcome.status not in OK):
            error = outcome.error if outcome is not None else f"{name}: not built"
        for wl in group.workloads:
            item = BenchItem(index, defn, sol, wl, keys.get(name, ""), digests.get(name, ""))
            index += 1
            if error is None:
                items.append(item)
            else:
                compile_error(item, error)
    items.sort(key=lambda it: (order[(it.definition.name, it.workload.uuid)], it.index))
    return items

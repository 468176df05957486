"""The JSON record of an Evaluation, both ways: what a registry line holds.

Writing gives ``"schema": RECORD_SCHEMA`` and nulls for non-finite floats; reading takes every
version in READABLE_SCHEMAS (fields a version lacks are None) and checks structure, not the
full schema.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from .model import Evaluation, LatencyStats

#: The schema version written. 2 added min/q1/q3 to latency stats and the host times per call;
#: lines of every version in READABLE_SCHEMAS load (missing fields are None).
RECORD_SCHEMA = 2
READABLE_SCHEMAS = (1, 2)
_SPREAD_FIELDS = ("min_us", "q1_us", "q3_us")


def _finite(value: float | None) -> float | None:
    # JSON has no NaN/inf; a non-finite error is recorded as null and explained in "error".
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def latency_to_dict(stats: LatencyStats | None) -> dict[str, Any] | None:
    """The JSON form of latency stats (None stays None): the one codec of records and replies."""
    if stats is None:
        return None
    out = {"median_us": float(stats.median_us), "p20_us": float(stats.p20_us),
           "p80_us": float(stats.p80_us), "mean_us": float(stats.mean_us), "n": int(stats.n)}
    for name in _SPREAD_FIELDS:
        value = getattr(stats, name)
        if value is not None:
            out[name] = float(value)
    return out


def latency_from_dict(data: Any) -> LatencyStats | None:
    """Inverse of :func:`latency_to_dict`; None or ``{}`` is None; ValueError/KeyError if malformed."""
    if data is None or data == {}:
        return None
    if not isinstance(data, Mapping):
        raise ValueError("latency is not an object")
    spread = {name: float(data[name]) for name in _SPREAD_FIELDS if data.get(name) is not None}
    return LatencyStats(median_us=float(data["median_us"]), p20_us=float(data["p20_us"]),
                        p80_us=float(data["p80_us"]), mean_us=float(data["mean_us"]), n=int(data["n"]),
                        **spread)


def evaluation_to_dict(ev: Evaluation) -> dict[str, Any]:
    """The JSON record of ``ev`` (with ``"schema": RECORD_SCHEMA``); non-finite floats become null."""
    return {
        "schema": RECORD_SCHEMA,
        "definition": ev.definition,
        "solution": ev.solution,
        "solution_digest": ev.solution_digest,
        "build_key": ev.build_key,
        "workload_uuid": ev.workload_uuid,
        "axes": {k: int(v) for k, v in ev.axes.items()},
        "status": ev.status,
        "device": ev.device,
        "latency": latency_to_dict(ev.latency),
        "reference_latency": latency_to_dict(ev.reference_latency),
        "speedup": _finite(ev.speedup),
        "max_abs_error": _finite(ev.max_abs_error),
        "max_rel_error": _finite(ev.max_rel_error),
        "error": ev.error,
        "environment": dict(ev.environment),
        "timestamp": ev.timestamp,
        **({"prepare_s": _finite(ev.prepare_s)} if ev.prepare_s is not None else {}),
        **({"plan_latency": latency_to_dict(ev.plan_latency)} if ev.plan_latency else {}),
        **({"host_latency": latency_to_dict(ev.host_latency)} if ev.host_latency else {}),
        **({"reference_host_latency": latency_to_dict(ev.reference_host_latency)}
           if ev.reference_host_latency else {}),
    }


def evaluation_from_dict(data: Mapping[str, Any]) -> Evaluation:
    """Rebuild an Evaluation from a record; ValueError/KeyError/TypeError if it is malformed.

    Checks structure, not the full schema (reads must stay cheap: the resolver reads whole
    registries); writes are schema-validated.
    """
    if not isinstance(data, Mapping):
        raise TypeError("record is not a JSON object")
    if data.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"unknown record schema {data.get('schema')!r}")
    axes = data["axes"]
    if not isinstance(axes, Mapping):
        raise TypeError("axes is not an object")
    strings = {k: data[k] for k in ("definition", "solution", "workload_uuid", "status", "device")}
    for key, value in strings.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} is not a non-empty string")

    def opt_float(key: str) -> float | None:
        value = data.get(key)
        return None if value is None else float(value)

    env = data.get("environment") or {}
    if not isinstance(env, Mapping):
        raise TypeError("environment is not an object")
    return Evaluation(
        definition=strings["definition"], solution=strings["solution"],
        solution_digest=str(data.get("solution_digest", "")), build_key=str(data.get("build_key", "")),
        workload_uuid=strings["workload_uuid"], axes={str(k): int(v) for k, v in axes.items()},
        status=strings["status"], device=strings["device"],
        latency=latency_from_dict(data.get("latency")),
        reference_latency=latency_from_dict(data.get("reference_latency")),
        speedup=opt_float("speedup"), max_abs_error=opt_float("max_abs_error"),
        max_rel_error=opt_float("max_rel_error"), error=str(data.get("error", "")),
        environment=dict(env), timestamp=str(data.get("timestamp", "")), prepare_s=opt_float("prepare_s"),
        plan_latency=latency_from_dict(data.get("plan_latency")),
        host_latency=latency_from_dict(data.get("host_latency")),
        reference_host_latency=latency_from_dict(data.get("reference_host_latency")),
    )

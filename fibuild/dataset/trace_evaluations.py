"""Evaluation records between flashinfer-trace trace lines and fibuild's registry records.

Pure functions, as in :mod:`trace_mapping` (whose field helpers they use): ``Unsupported``
for a record fibuild cannot express, ``ValueError`` for a malformed one.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping

from ..devices import slugify
from ..spec.model import STATUSES, Evaluation, LatencyStats
from .trace_mapping import Unsupported, as_mapping, string_field


def _timestamp(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"evaluation.timestamp {value!r} is not a string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"evaluation.timestamp {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:  # the dataset writes naive UTC times too
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


def _latency(ms: Any, what: str) -> LatencyStats | None:
    if ms is None:
        return None
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
        raise ValueError(f"evaluation.performance.{what} = {ms!r} is not a finite number >= 0")
    us = float(ms) * 1000.0
    # The dataset keeps one figure (the mean); fibuild's statistics all take it, over n=1.
    return LatencyStats(median_us=us, p20_us=us, p80_us=us, mean_us=us, n=1)


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, str):  # pydantic writes NaN/inf as strings
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    value = float(value)
    return value if math.isfinite(value) else None


def evaluation_from_dataset(definition: str, workload: Mapping, solution: str, evaluation: Mapping,
                            solution_digest: str) -> Evaluation:
    """A fibuild Evaluation of a trace line; ValueError if malformed.

    The device slug is the slugified ``environment.hardware``; the environment is kept
    whole under ``environment`` (plus the correctness ``extra``, when given).
    """
    status = evaluation.get("status")
    if status not in STATUSES:
        raise ValueError(f"evaluation.status {status!r} is not one of {', '.join(STATUSES)}")
    env = as_mapping(evaluation.get("environment"), "evaluation.environment")
    hardware = string_field(env, "hardware", "evaluation.environment")
    device = slugify(hardware)
    if not device:
        raise ValueError(f"evaluation.environment.hardware {hardware!r} names no device")
    correctness = as_mapping(evaluation.get("correctness") or {}, "evaluation.correctness")
    performance = as_mapping(evaluation.get("performance") or {}, "evaluation.performance")
    environment = {"hardware": hardware, "libs": dict(env.get("libs") or {})}
    if correctness.get("extra") is not None:
        environment["correctness_extra"] = correctness["extra"]
    speedup = _finite(performance.get("speedup_factor"))
    return Evaluation(
        definition=definition, solution=solution, solution_digest=solution_digest, build_key="",
        workload_uuid=workload["uuid"], axes={k: int(v) for k, v in workload["axes"].items()},
        status=status, device=device,
        latency=_latency(performance.get("latency_ms"), "latency_ms") if performance else None,
        reference_latency=(_latency(performance.get("reference_latency_ms"), "reference_latency_ms")
                           if performance else None),
        speedup=speedup if speedup else None,
        max_abs_error=_finite(correctness.get("max_absolute_error")) if correctness else None,
        max_rel_error=_finite(correctness.get("max_relative_error")) if correctness else None,
        error=str(evaluation.get("log") or ""), environment=environment,
        timestamp=_timestamp(evaluation.get("timestamp")),
    )


def evaluation_to_dataset(ev: Evaluation, workload_inputs: Mapping[str, Any],
                          solution_name: str | None = None) -> dict:
    """A trace line for ``ev``, in the key order flashinfer-bench's models write;
    ``solution_name`` is the solution's dataset name (default ``ev.solution``).

    Raises Unsupported when the status needs figures the record lacks (PASSED without a
    latency or errors, INCORRECT_NUMERICAL without errors).
    """
    env = ev.environment
    hardware = env.get("hardware") or env.get("device_name") or ev.device
    libs = env.get("libs")
    if not isinstance(libs, Mapping):
        libs = {k: str(env[k]) for k in ("torch", "cuda", "triton", "tvm_ffi", "flashinfer", "fibuild")
                if env.get(k) is not None}
    evaluation: dict[str, Any] = {"status": ev.status, "environment": {"hardware": hardware, "libs": dict(libs)},
                                  "timestamp": ev.timestamp, "log": ev.error, "correctness": None,
                                  "performance": None}
    if ev.status in ("PASSED", "INCORRECT_NUMERICAL"):
        if ev.max_abs_error is None or ev.max_rel_error is None:
            raise Unsupported(f"a {ev.status} record without error figures")
        evaluation["correctness"] = {"max_relative_error": ev.max_rel_error,
                                     "max_absolute_error": ev.max_abs_error,
                                     "extra": env.get("correctness_extra")}
    if ev.status == "PASSED":
        if ev.latency is None:
            raise Unsupported("a PASSED record without a latency")
        ref = ev.reference_latency.mean_us / 1000.0 if ev.reference_latency else 0.0
        evaluation["performance"] = {"latency_ms": ev.latency.mean_us / 1000.0, "reference_latency_ms": ref,
                                     "speedup_factor": ev.speedup or 0.0}
    return {"definition": ev.definition,
            "workload": {"axes": dict(ev.axes), "inputs": dict(workload_inputs), "uuid": ev.workload_uuid},
            "solution": solution_name or ev.solution, "evaluation": evaluation}

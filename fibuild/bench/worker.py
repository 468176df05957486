"""The benchmark worker process: checks and times solutions on one device.

Run as ``python -m fibuild.bench.worker``; spoken to by :mod:`fibuild.bench.pool` over
pipes in JSON lines (nothing is pickled). Protocol:

- parent -> ``{"op": "init", "settings": {...}, "device": "cpu" | "cuda:N"}``;
  worker -> ``{"op": "ready", "environment": {...}}`` (or ``{"op": "error", ...}``).
- parent -> ``{"op": "run", "id", "definition", "solution" ("def/sol"), "workload": {...},
  "warmup_ms", "rep_ms", "graph"}``; worker -> ``{"op": "result", "id", "status",
  "latency", "reference_latency", "max_abs_error", "max_rel_error", "error", "timing",
  "fatal"}``. ``fatal`` means the worker exits after replying (a CUDA error poisons the
  context), so the parent starts a new one.
- parent -> ``{"op": "exit"}``.

The protocol owns the real stdout; file descriptor 1 is pointed at stderr so whatever a
kernel prints cannot corrupt it. The reference output and latency of the last workload
are kept, so each workload's reference runs once per worker.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

#: How many cloned input sets the timers rotate through (fewer for big inputs).
MAX_INPUT_SETS = 8
#: Memory the rotated input sets may take together.
INPUT_SETS_BYTES = 1 << 30


def settings_to_json(settings) -> dict[str, Any]:
    """A Settings as JSON: paths as strings, tuples as lists."""
    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, Path):
            value = {"path": str(value)}
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def settings_from_json(data: Mapping[str, Any]):
    """Inverse of :func:`settings_to_json`."""
    from fibuild.config import Settings

    values = {}
    for f in fields(Settings):
        value = data.get(f.name)
        if isinstance(value, dict) and set(value) == {"path"}:
            value = Path(value["path"])
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return Settings(**values)


def workload_to_json(workload) -> dict[str, Any]:
    return {"uuid": workload.uuid, "axes": dict(workload.axes), "source": workload.source,
            "inputs": {name: {"kind": s.kind, "value": s.value, "path": s.path, "tensor_key": s.tensor_key}
                       for name, s in workload.inputs.items()}}


def workload_from_json(data: Mapping[str, Any]):
    from fibuild.spec.model import InputSpec, Workload

    return Workload(uuid=data["uuid"], axes={k: int(v) for k, v in data["axes"].items()},
                    inputs={k: InputSpec(**v) for k, v in data.get("inputs", {}).items()},
                    source=data.get("source", ""))


def _latency_json(stats) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {"median_us": stats.median_us, "p20_us": stats.p20_us, "p80_us": stats.p80_us,
            "mean_us": stats.mean_us, "n": stats.n}


class _ReferenceCache:
    """Inputs, outputs and latency of the reference for the last workload seen."""

    def __init__(self):
        self.key: tuple[str, str] | None = None
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.timing = None
        self.error = ""


class SolutionLoader:
    """The workspace (``settings.root``) and the solutions a worker or rank process has
    loaded, each built or found in the cache once per process."""

    def __init__(self, settings):
        self.settings = settings
        self._workspace = None
        self._kernels: dict[str, Any] = {}

    def workspace(self):
        if self._workspace is None:
            from fibuild.spec.manifest import Workspace

            self._workspace = Workspace(self.settings.root)
        return self._workspace

    def kernel(self, defn, qualified: str):
        """The LoadedKernel of ``qualified`` ("definition/solution"); BuildError if it fails."""
        if qualified not in self._kernels:
            from fibuild.compile.cache import BuildCache

            definition, _, name = qualified.partition("/")
            sol = self.workspace().solution(name, definition=definition)
            self._kernels[qualified] = BuildCache(self.settings).get_or_build(defn, sol)
        return self._kernels[qualified]


class Worker(SolutionLoader):
    """State of one worker process: settings, device, loaded kernels, reference cache."""

    def __init__(self, settings, device: str):
        super().__init__(settings)
        self.device = device
        self._references: dict[str, dict] = {}
        self._ref = _ReferenceCache()

    def reference_ns(self, defn) -> dict:
        if defn.name not in self._references:
            from fibuild.spec.calling import load_reference

            self._references[defn.name] = load_reference(defn)
        return self._references[defn.name]

    def sync(self) -> None:
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize(self.device)

    def input_sets(self, inputs) -> list[list[Any]]:
        """Cloned input sets for the timers: up to MAX_INPUT_SETS within INPUT_SETS_BYTES."""
        import torch

        from .inputs import clone_inputs

        nbytes = sum(a.numel() * a.element_size() for a in inputs if isinstance(a, torch.Tensor))
        count = max(2, min(MAX_INPUT_SETS, INPUT_SETS_BYTES // max(nbytes, 1)))
        return [clone_inputs(inputs) for _ in range(count)]

    # -- one request ---------------------------------------------------------------------
    def reference(self, defn, workload, warmup_ms: float, rep_ms: float, graph: bool) -> _ReferenceCache:
        """The reference's inputs/outputs (and its latency) for ``workload``, computed once."""
        from .checks import reference_outputs
        from .inputs import clone_inputs, make_inputs
        from .timing import time_calls

        key = (defn.name, workload.uuid)
        if self._ref.key == key:
            return self._ref
        ref = _ReferenceCache()
        ref.key = key
        ns = self.reference_ns(defn)
        run = ns.get("run")
        if not callable(run):
            raise ValueError(f"the reference of {defn.name} defines no run()")
        ref.inputs = make_inputs(defn, workload, device=self.device, reference_ns=ns)
        args = clone_inputs(ref.inputs)
        ref.outputs = reference_outputs(defn, run(*args), args)
        self.sync()
        try:
            ref.timing = time_calls(run, self.input_sets(ref.inputs), device=self.device,
                                    warmup_ms=warmup_ms, rep_ms=rep_ms, graph=graph)
        except Exception as exc:  # e.g. a reference that cannot be graph-captured: no speedup
            ref.error = f"reference not timed: {type(exc).__name__}: {exc}"
        self._ref = ref
        return ref

    def run(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Check and time one (definition, solution, workload); never raises."""
        from fibuild.errors import BuildError, FibuildError

        from .checks import PASSED, check_outputs
        from .inputs import clone_inputs
        from .timing import time_calls

        reply: dict[str, Any] = {"op": "result", "id": msg.get("id"), "status": "RUNTIME_ERROR",
                                 "latency": None, "reference_latency": None, "max_abs_error": None,
                                 "max_rel_error": None, "error": "", "timing": None, "fatal": False}
        warmup, rep, graph = float(msg["warmup_ms"]), float(msg["rep_ms"]), bool(msg.get("graph"))
        try:
            defn = self.workspace().definition(msg["definition"])
            workload = workload_from_json(msg["workload"])
        except FibuildError as exc:
            reply["error"] = f"cannot load the definition: {exc}"
            return reply
        stage = "reference"
        try:
            ref = self.reference(defn, workload, warmup, rep, graph)
            if ref.timing is not None:
                reply["reference_latency"] = _latency_json(ref.timing.stats)
            stage = "load"
            try:
                kernel = self.kernel(defn, msg["solution"])
            except BuildError as exc:
                reply.update(status="COMPILE_ERROR", error=str(exc))
                return reply
            stage = "call"
            args = clone_inputs(ref.inputs)
            result = kernel.call(*args)
            self.sync()
            check = check_outputs(defn, result, ref.outputs)
            reply.update(status=check.status, max_abs_error=check.max_abs_error,
                         max_rel_error=check.max_rel_error, error=check.message)
            if check.status != PASSED:
                return reply
            stage = "timing"
            timing = time_calls(kernel.call, self.input_sets(ref.inputs), device=self.device,
                                warmup_ms=warmup, rep_ms=rep, graph=graph)
            reply["latency"] = _latency_json(timing.stats)
            reply["timing"] = timing.method
            if ref.error:
                reply["error"] = ref.error
        except FibuildError as exc:  # a bad workload: the runner's fault report, not the kernel's
            reply.update(status="RUNTIME_ERROR", error=f"{stage}: {exc}")
        except Exception as exc:
            tail = "".join(traceback.format_exception(exc)[-6:])
            where = "the reference failed" if stage == "reference" else f"{stage} failed"
            reply.update(status="RUNTIME_ERROR", error=f"{where}: {type(exc).__name__}: {exc}\n{tail}")
            # A CUDA error leaves the context unusable: reply, then let the parent replace us.
            reply["fatal"] = self.device != "cpu"
        return reply


def _serve(proto_in, proto_out) -> int:
    def send(obj: dict) -> None:
        proto_out.write(json.dumps(obj, default=str) + "\n")
        proto_out.flush()

    first = proto_in.readline()
    if not first:
        return 0
    try:
        init = json.loads(first)
        settings = settings_from_json(init["settings"])
        device = init["device"]
        if device != "cpu":
            import torch

            torch.cuda.set_device(device)
        from fibuild.devices import device_environment

        worker = Worker(settings, device)
        send({"op": "ready", "environment": device_environment(device), "pid": os.getpid()})
    except Exception as exc:
        send({"op": "error", "error": f"worker start failed: {type(exc).__name__}: {exc}"})
        return 2
    for line in proto_in:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("op") == "exit":
            return 0
        if msg.get("op") == "run":
            reply = worker.run(msg)
            send(reply)
            if reply.get("fatal"):
                return 3
    return 0


def main() -> int:
    from .lifeline import die_with_parent

    die_with_parent()  # a hanging kernel must not outlive a killed runner
    # Keep the real stdout for the protocol; anything else written to fd 1 goes to stderr.
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return _serve(sys.stdin, proto_out)


if __name__ == "__main__":
    sys.exit(main())

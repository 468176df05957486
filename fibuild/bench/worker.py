"""The benchmark worker process: checks and times solutions on one device.

Run as ``python -m fibuild.bench.worker``; spoken to by :mod:`fibuild.bench.pool` in the
JSON lines of :mod:`fibuild.bench.protocol`:

- ``{"op": "init", "settings": {...}, "device": "cpu" | "cuda:N"}`` -> ``ready``.
- ``{"op": "prepare", "id", "definition", "solution" ("def/sol"), "workload", ...}`` ->
  ``{"op": "result", "id", "status", "prepare_s", "error", "fatal"}``: the solution's load
  and first call on the workload's inputs (where JIT builds, workspaces and autotuning
  happen), timed, under the parent's prepare limit. ``status`` is PASSED when the call
  returned, COMPILE_ERROR when loading or a build inside the call failed, RUNTIME_ERROR
  when the call raised anything else (a shape the kernel refuses is that shape's failure).
- ``{"op": "run", "id", "definition", "solution", "workload", "warmup_ms", "rep_ms",
  "graph"}`` -> ``{"op": "result", "id", "status", "latency", "reference_latency",
  "host_latency", "reference_host_latency" (CUDA: host time per call), "max_abs_error",
  "max_rel_error", "error", "timing", "fatal"}``. ``fatal`` means the worker exits after
  replying (a CUDA error poisons the context), so the parent starts a new one.
- ``{"op": "exit"}``.

The inputs, reference output and latency of the last workload are kept, so each
workload's inputs are made and its reference runs once per worker.
"""
from __future__ import annotations

import subprocess
import sys
import time
import traceback
from typing import Any, Mapping

from fibuild.compile.cache import BuildCache
from fibuild.errors import BuildError, FibuildError
from fibuild.spec.calling import load_reference
from fibuild.spec.workspace import Workspace

from ..registry import latency_to_dict
from .checks import PASSED, check_outputs, reference_outputs
from .inputs import clone_inputs, make_inputs
from .lifeline import die_with_parent
from .plans import prepare_plans
from .protocol import child_main, settings_from_json, workload_from_json
from .timing import time_calls

# Heavy or optional dependencies, imported inside the functions that use them: torch.

#: How many cloned input sets the timers rotate through (fewer for big inputs).
MAX_INPUT_SETS = 8
#: Memory the rotated input sets may take together.
INPUT_SETS_BYTES = 1 << 30


def looks_like_build_failure(exc: BaseException) -> bool:
    """Whether an exception from a solution's first call is a failed build: fibuild's
    BuildError, a compiler subprocess that failed, Triton's CompilationError, or the
    messages of torch's cpp_extension and FlashInfer's JIT (both run ninja)."""
    if isinstance(exc, BuildError):
        return True

    if isinstance(exc, subprocess.CalledProcessError):
        return True
    if any("Compilation" in cls.__name__ for cls in type(exc).__mro__):
        return True
    text = str(exc).lower()
    return "error building extension" in text or "ninja" in text


def leaves_context_usable(exc: BaseException) -> bool:
    """Whether an exception from a CUDA call certainly left the context usable: Triton's
    ``OutOfResources``, which its launcher raises before launching (a variant that needs more
    shared memory or registers than the device has). Anything else may be a sticky CUDA error."""
    return any(cls.__name__ == "OutOfResources" for cls in type(exc).__mro__)


def first_call_reply(msg: Mapping[str, Any], inputs, kernel, sync, *, fatal: bool,
                     collective: bool = False) -> dict[str, Any]:
    """The reply to ``prepare``: ``inputs()`` (not timed), then ``kernel()`` (the loaded
    solution) called once on a copy of them and ``sync()``, timed as ``prepare_s``. Never
    raises; an exception in the call is fatal when ``fatal`` (CUDA, or a collective), unless
    it certainly left the context usable and no collective is involved.
    Shared by the worker and the distributed ranks.
    """
    reply: dict[str, Any] = {"op": "result", "id": msg.get("id"), "status": "PASSED", "prepare_s": None,
                             "error": "", "fatal": False}
    stage = "inputs"
    try:
        args = inputs()
        stage = "first call"
        start = time.perf_counter()
        kernel().call(*clone_inputs(args))
        sync()
        reply["prepare_s"] = time.perf_counter() - start
    except BuildError as exc:
        reply.update(status="COMPILE_ERROR", error=str(exc))
    except FibuildError as exc:  # a bad workload: the runner's fault report, not the kernel's
        reply.update(status="RUNTIME_ERROR", error=f"{stage}: {exc}")
    except Exception as exc:
        tail = "".join(traceback.format_exception(exc)[-6:])
        build = stage == "first call" and looks_like_build_failure(exc)
        reply.update(status="COMPILE_ERROR" if build else "RUNTIME_ERROR",
                     fatal=fatal and (collective or not leaves_context_usable(exc)),
                     error=f"{stage} failed: {type(exc).__name__}: {exc}\n{tail}")
    return reply


class _ReferenceCache:
    """Outputs and latency of the reference for the last workload seen."""

    def __init__(self, key: tuple[str, str] | None = None):
        self.key = key
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
            self._workspace = Workspace.at(self.settings.root, self.settings)
        return self._workspace

    def kernel(self, defn, qualified: str):
        """The LoadedKernel of ``qualified`` ("definition/solution"); BuildError if it fails."""
        if qualified not in self._kernels:
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
        self._inputs: tuple[tuple[str, str] | None, list[Any]] = (None, [])

    def reference_ns(self, defn) -> dict:
        if defn.name not in self._references:
            self._references[defn.name] = load_reference(defn)
        return self._references[defn.name]

    def sync(self) -> None:
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize(self.device)

    def input_sets(self, inputs) -> list[list[Any]]:
        """Cloned input sets for the timers: up to MAX_INPUT_SETS within INPUT_SETS_BYTES."""
        import torch

        nbytes = sum(a.numel() * a.element_size() for a in inputs if isinstance(a, torch.Tensor))
        count = max(2, min(MAX_INPUT_SETS, INPUT_SETS_BYTES // max(nbytes, 1)))
        return [clone_inputs(inputs) for _ in range(count)]

    def inputs(self, defn, workload) -> list[Any]:
        """The inputs of ``workload`` (made once per workload; callers clone them)."""
        key = (defn.name, workload.uuid)
        if self._inputs[0] != key:
            self._inputs = (key, make_inputs(defn, workload, device=self.device,
                                             reference_ns=self.reference_ns(defn)))
        return self._inputs[1]

    # -- one request ---------------------------------------------------------------------
    def prepare(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Load the solution and call it once on the workload's inputs (see the protocol)."""
        def inputs():
            defn = self.workspace().definition(msg["definition"])
            return self.inputs(defn, workload_from_json(msg["workload"]))

        def kernel():
            return self.kernel(self.workspace().definition(msg["definition"]), msg["solution"])

        return first_call_reply(msg, inputs, kernel, self.sync, fatal=self.device != "cpu")

    def reference(self, defn, workload, warmup_ms: float, rep_ms: float, graph: bool) -> _ReferenceCache:
        """The reference's inputs/outputs (and its latency) for ``workload``, computed once."""
        key = (defn.name, workload.uuid)
        if self._ref.key == key:
            return self._ref
        ref = _ReferenceCache(key)
        run = self.reference_ns(defn).get("run")
        if not callable(run):
            raise ValueError(f"the reference of {defn.name} defines no run()")
        inputs = self.inputs(defn, workload)
        args = clone_inputs(inputs)
        ref.outputs = reference_outputs(defn, run(*args), args)
        self.sync()
        try:
            ref.timing = time_calls(run, self.input_sets(inputs), device=self.device,
                                    warmup_ms=warmup_ms, rep_ms=rep_ms, graph=graph)
        except Exception as exc:  # e.g. a reference that cannot be graph-captured: no speedup
            ref.error = f"reference not timed: {type(exc).__name__}: {exc}"
        self._ref = ref
        return ref

    def run(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Check and time one (definition, solution, workload); never raises."""
        reply: dict[str, Any] = {"op": "result", "id": msg.get("id"), "status": "RUNTIME_ERROR",
                                 "latency": None, "reference_latency": None, "plan_latency": None,
                                 "max_abs_error": None, "max_rel_error": None, "error": "", "timing": None,
                                 "fatal": False}
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
            inputs = self.inputs(defn, workload)
            if ref.timing is not None:
                reply["reference_latency"] = latency_to_dict(ref.timing.stats)
                reply["reference_host_latency"] = latency_to_dict(ref.timing.host)
            stage = "load"
            try:
                kernel = self.kernel(defn, msg["solution"])
            except BuildError as exc:
                reply.update(status="COMPILE_ERROR", error=str(exc))
                return reply
            stage = "call"
            result = kernel.call(*clone_inputs(inputs))
            self.sync()
            check = check_outputs(defn, result, ref.outputs)
            reply.update(status=check.status, max_abs_error=check.max_abs_error,
                         max_rel_error=check.max_rel_error, error=check.message)
            if check.status != PASSED:
                return reply
            stage = "timing"
            sets = self.input_sets(inputs)
            # Plan/run solutions: plans made (and timed) once per input set; only runs are timed.
            reply["plan_latency"] = latency_to_dict(prepare_plans(kernel.entry, sets, device=self.device,
                                                                  rep_ms=rep))
            timing = time_calls(kernel.call, sets, device=self.device, warmup_ms=warmup, rep_ms=rep,
                                graph=graph)
            reply["latency"] = latency_to_dict(timing.stats)
            reply["host_latency"] = latency_to_dict(timing.host)
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
            reply["fatal"] = self.device != "cpu" and not leaves_context_usable(exc)
        return reply


def _start(init: Mapping[str, Any]) -> Worker:
    device = init["device"]
    if device != "cpu":
        import torch

        torch.cuda.set_device(device)
    return Worker(settings_from_json(init["settings"]), device)


def main() -> int:
    die_with_parent()  # a hanging kernel must not outlive a killed runner
    return child_main(_start)


if __name__ == "__main__":
    sys.exit(main())

"""One rank of a distributed benchmark: checks and times solutions inside a process group.

Run as ``python -m fibuild.bench.distributed_rank``; spoken to by
:mod:`fibuild.bench.rank_group` in the JSON lines of :mod:`fibuild.bench.protocol`:

- parent -> ``{"op": "init", "settings", "device" ("cpu" | "cuda:N"), "rank", "world_size",
  "backend" ("gloo" | "nccl"), "store_path", "timeout_s"}``; the rank joins the group through
  a FileStore at ``store_path`` and answers ``{"op": "ready", "environment", "pid"}`` (or
  ``{"op": "error", "error"}``).
- parent -> ``{"op": "prepare", ...}`` (as the worker's: load and first call, timed, on
  every rank at once; collective setup such as IPC workspaces happens here).
- parent -> ``{"op": "run", "id", "definition", "solution" ("def/sol"), "workload",
  "warmup_ms", "rep_ms"}`` (the same message to every rank); rank -> ``{"op": "result",
  "id", "status", "latency", "reference_latency", "max_abs_error", "max_rel_error", "error",
  "timing", "fatal"}``. ``fatal``: the rank leaves after replying (an exception may have left
  a collective half done, so the group cannot be trusted); the parent tears the group down.
- parent -> ``{"op": "exit"}``.

Every rank runs the same requests in the same order, so their collectives pair up: the
reference, the solution, an all-reduce that agrees whether every rank passed (so all time,
or none), and timers whose repetition counts are agreed by an all-reduce too.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
import zlib
from datetime import timedelta
from typing import Any, Callable, Mapping, Sequence

from fibuild.errors import BuildError
from fibuild.spec.calling import load_reference

from ..registry import latency_to_dict
from .checks import PASSED, check_outputs, reference_outputs
from .inputs import clone_inputs, make_inputs, random_tensor
from .protocol import child_main, settings_from_json, workload_from_json
from .timing import Measurement, capture_cuda_graph, repetitions, summarize, time_graph_replays
from .worker import SolutionLoader, first_call_reply

# Heavy or optional dependencies, imported inside the functions that use them: torch.

#: Cloned input sets the timers rotate through.
INPUT_SETS = 2
#: Calls captured per CUDA graph (as in FlashInfer's all-reduce benchmarks).
GRAPH_CALLS = 10


def rank_seed(workload, input_name: str, rank: int) -> int:
    """The seed of a per-rank input on ``rank``: the workload's seed, salted with the rank."""
    return zlib.crc32(f"{workload.uuid}/{input_name}/rank{rank}".encode("utf-8"))


def rank_inputs(defn, workload, rank: int, *, device="cpu", reference_ns=None) -> list[Any]:
    """The inputs of ``workload`` on ``rank``, in calling order.

    As :func:`fibuild.bench.inputs.make_inputs` (the same seeds on every rank), except that
    random inputs named in ``defn.distributed.per_rank_inputs`` are drawn from
    :func:`rank_seed`, so they differ between ranks. Raises BenchError as make_inputs.
    """
    args = make_inputs(defn, workload, device=device, reference_ns=reference_ns)
    per_rank = set(defn.distributed.per_rank_inputs) if defn.distributed else set()
    for i, spec in enumerate(defn.inputs):
        how = workload.inputs.get(spec.name)
        if spec.name in per_rank and (how is None or how.kind == "random"):
            args[i] = random_tensor(spec, args[i].shape, seed=rank_seed(workload, spec.name, rank),
                                    device=args[i].device)
    return args


def _agree_max(value: float, device: str) -> float:
    """The largest ``value`` over the ranks (one all-reduce)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def time_collective_cpu(fn: Callable, arg_sets: Sequence[Sequence[Any]], *, warmup_ms: float,
                        rep_ms: float):
    """Time a collective ``fn`` on every rank with ``perf_counter_ns``, a barrier before each
    sample (outside the timed span), so each sample starts with all ranks together.

    The warm-up and sample counts come from the slowest rank's estimate, so every rank
    makes the same number of calls. Cost: about ``warmup_ms + rep_ms`` plus the barriers.
    """
    import torch.distributed as dist

    k = len(arg_sets)
    t0 = time.perf_counter_ns()
    for i in range(3):
        dist.barrier()
        fn(*arg_sets[i % k])
    est_ms = _agree_max((time.perf_counter_ns() - t0) / 3e6, "cpu")
    for i in range(repetitions(warmup_ms, est_ms, low=1)):
        fn(*arg_sets[i % k])
    reps = repetitions(rep_ms, est_ms)
    samples = []
    for i in range(reps):
        dist.barrier()
        start = time.perf_counter_ns()
        fn(*arg_sets[i % k])
        samples.append((time.perf_counter_ns() - start) / 1e3)
    return Measurement(summarize(samples), {"method": "perf_counter_ns+barrier", "input_sets": k,
                                            "warmup_ms": warmup_ms, "rep_ms": rep_ms})


def time_collective_cuda_graph(fn: Callable, arg_sets: Sequence[Sequence[Any]], *, device: str,
                               warmup_ms: float, rep_ms: float, calls_per_graph: int = GRAPH_CALLS):
    """Capture ``calls_per_graph`` calls of a collective ``fn`` in one CUDA graph and time its
    replays with CUDA events on every rank; a sample is one replay over the calls in it.

    Replay counts come from the slowest rank's estimate; a barrier lines the ranks up before
    the timed replays. Raises whatever capture raises (the rank then leaves the group).
    """
    import torch.distributed as dist

    graph = capture_cuda_graph(fn, arg_sets, device=device, calls_per_graph=calls_per_graph)
    dist.barrier()
    return time_graph_replays(graph, device=device, warmup_ms=warmup_ms, rep_ms=rep_ms,
                              calls_per_graph=calls_per_graph, input_sets=len(arg_sets),
                              estimate_ms=lambda ms: _agree_max(ms, device), before_timing=dist.barrier)


class Rank(SolutionLoader):
    """State of one rank: settings, device, group coordinates, kernels, reference of the last
    workload."""

    def __init__(self, settings, device: str, rank: int, world_size: int):
        super().__init__(settings)
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self._ref_key: tuple[str, str] | None = None
        self._ref: dict[str, Any] = {}
        self._inputs: tuple[tuple[str, str] | None, list[Any]] = (None, [])

    def sync(self) -> None:
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable, inputs: Sequence[Any], warmup_ms: float, rep_ms: float):
        arg_sets = [clone_inputs(inputs) for _ in range(INPUT_SETS)]
        if self.device == "cpu":
            return time_collective_cpu(fn, arg_sets, warmup_ms=warmup_ms, rep_ms=rep_ms)
        return time_collective_cuda_graph(fn, arg_sets, device=self.device, warmup_ms=warmup_ms,
                                          rep_ms=rep_ms)

    def inputs(self, defn, workload) -> list[Any]:
        """This rank's inputs of ``workload`` (made once per workload; callers clone them)."""
        key = (defn.name, workload.uuid)
        if self._inputs[0] != key:
            self._inputs = (key, rank_inputs(defn, workload, self.rank, device=self.device,
                                             reference_ns=load_reference(defn)))
        return self._inputs[1]

    def prepare(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Load the solution and call it once on this rank's inputs; a failure is fatal
        (the other ranks may be inside a collective of that call)."""
        def inputs():
            return self.inputs(self.workspace().definition(msg["definition"]), workload_from_json(msg["workload"]))

        def kernel():
            return self.kernel(self.workspace().definition(msg["definition"]), msg["solution"])

        reply = first_call_reply(msg, inputs, kernel, self.sync, fatal=True, collective=True)
        if reply["status"] != "PASSED":
            reply["fatal"] = True
            reply["error"] = f"rank {self.rank}: {reply['error']}"
        return reply

    def reference(self, defn, workload, warmup_ms: float, rep_ms: float) -> dict[str, Any]:
        """This rank's inputs, the reference's outputs and latency for ``workload`` (once)."""
        key = (defn.name, workload.uuid)
        if self._ref_key == key:
            return self._ref
        run = load_reference(defn).get("run")
        if not callable(run):
            raise ValueError(f"the reference of {defn.name} defines no run()")
        inputs = self.inputs(defn, workload)
        args = clone_inputs(inputs)
        outputs = reference_outputs(defn, run(*args), args)
        self.sync()
        timing = self.time(run, inputs, warmup_ms, rep_ms)
        self._ref_key, self._ref = key, {"inputs": inputs, "outputs": outputs, "timing": timing}
        return self._ref

    def run(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Check and time one (solution, workload) on this rank; never raises."""
        reply: dict[str, Any] = {"op": "result", "id": msg.get("id"), "status": "RUNTIME_ERROR",
                                 "latency": None, "reference_latency": None, "max_abs_error": None,
                                 "max_rel_error": None, "error": "", "timing": None, "fatal": True}
        warmup, rep = float(msg["warmup_ms"]), float(msg["rep_ms"])
        stage = "setup"
        try:
            defn = self.workspace().definition(msg["definition"])
            workload = workload_from_json(msg["workload"])
            stage = "reference"
            ref = self.reference(defn, workload, warmup, rep)
            reply["reference_latency"] = latency_to_dict(ref["timing"].stats)
            stage = "load"
            try:
                kernel = self.kernel(defn, msg["solution"])
            except BuildError as exc:
                kernel = None
                reply.update(status="COMPILE_ERROR", error=str(exc))
            if kernel is not None:
                stage = "call"
                result = kernel.call(*clone_inputs(ref["inputs"]))
                self.sync()
                check = check_outputs(defn, result, ref["outputs"])
                reply.update(status=check.status, max_abs_error=check.max_abs_error,
                             max_rel_error=check.max_rel_error, error=check.message)
            stage = "agreement"
            # Time only when every rank passed: the timers are collective.
            if _agree_max(0.0 if reply["status"] == PASSED else 1.0, self.device) == 0.0:
                stage = "timing"
                timing = self.time(kernel.call, ref["inputs"], warmup, rep)
                reply.update(latency=latency_to_dict(timing.stats), timing=timing.method)
            reply["fatal"] = False
        except Exception as exc:
            tail = "".join(traceback.format_exception(exc)[-6:])
            reply.update(status="RUNTIME_ERROR", fatal=True,
                         error=f"rank {self.rank}: {stage} failed: {type(exc).__name__}: {exc}\n{tail}")
        return reply


def _start(init: Mapping[str, Any]) -> Rank:
    import torch
    import torch.distributed as dist

    settings = settings_from_json(init["settings"])
    device, rank, world = init["device"], int(init["rank"]), int(init["world_size"])
    if device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # ranks share the cores
    else:
        torch.cuda.set_device(device)
    store = dist.FileStore(init["store_path"], world)
    dist.init_process_group(init["backend"], store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=float(init["timeout_s"])))
    return Rank(settings, device, rank, world)


def _leave_group() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()


def main() -> int:
    return child_main(_start, on_exit=_leave_group)


if __name__ == "__main__":
    sys.exit(main())

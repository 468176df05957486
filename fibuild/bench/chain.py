"""Evaluating a chain: its slots' candidate solutions timed in sequence, as a model runs them.

A programmatic-dependent-launch kernel gains only next to another kernel, and a kernel's
launch, ramp-up and drain cost shows only between kernels: a chain (:mod:`fibuild.spec.chain`)
is timed as a whole. For one chain workload:

- every slot gets ``layers`` distinct input sets (distinct weights: a layer's weights are
  cold when it runs, as in a model with more layers than L2 holds; activations are small and
  stay in L2, as they do in a model), from the slot's workload as the bench makes them; the
  structural inputs (a page table) are shared by the layers, as a step shares one;
- a CUDA graph captures ``layers`` x the slots in order, each slot calling its current
  solution; the time of one replay divided by ``layers`` is the chain's time per layer
  (median of ``iters`` replays). On a CPU the same sequence runs eagerly;
- the search starts from each slot's fastest per-kernel evaluation at its key (else its first
  candidate) and tries each slot's other candidates in turn, in slot order, keeping a swap
  only when it is faster by more than ``margin`` (one pass of coordinate descent).

Candidates: the slot definition's ``candidates`` (default 4) solutions fastest alone with a
current PASSED evaluation at the slot's workload on this device, or, when there is none, every
solution that builds and runs here.
The result is one :class:`ChainRecord` per slot, appended beside the definition's own
evaluations (:meth:`fibuild.registry.Registry.append_chain`); the resolver prefers a current
chain choice at its key.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from fibuild.compile.cache import BuildCache
from fibuild.compile.keys import solution_digest
from fibuild.config import Settings
from fibuild.devices import Device
from fibuild.errors import BenchError, BuildError
from fibuild.spec.chain import Chain, ChainSlot, slot_workload
from fibuild.spec.model import Definition, Solution, Workload

from .inputs import clone_inputs, make_inputs

# Heavy or optional dependencies, imported inside the functions that use them: torch, statistics.


@dataclass
class SlotState:
    slot: ChainSlot
    definition: Definition
    workload: Workload
    candidates: dict[str, Any]  # solution name -> LoadedKernel
    digests: dict[str, str]
    inputs: list[list[Any]]  # per layer
    chosen: str = ""
    alternatives: dict[str, float] = field(default_factory=dict)  # solution -> µs per layer when tried


@dataclass(frozen=True)
class ChainResult:
    chain: str
    chain_axes: Mapping[str, int]
    device: str
    layers: int
    latency_us: float  # per layer, the chosen assignment
    slots: tuple[SlotState, ...]
    pdl: bool

    def records(self) -> list[dict[str, Any]]:
        """One registry record per slot (the JSON :meth:`Registry.append_chain` takes)."""
        out = []
        for i, s in enumerate(self.slots):
            out.append({
                "chain": self.chain, "chain_axes": dict(self.chain_axes), "slot": i, "slot_name": s.slot.name,
                "definition": s.definition.name, "axes": {k: int(v) for k, v in s.workload.axes.items()},
                "workload_uuid": s.workload.uuid, "solution": s.chosen, "solution_digest": s.digests[s.chosen],
                "device": self.device, "chain_latency_us": self.latency_us, "layers": self.layers,
                "alternatives_us": dict(sorted(s.alternatives.items())), "pdl": self.pdl,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
        return out


def evaluate_chain(workspace, chain: Chain, chain_axes: Mapping[str, int], *, device: str, device_slug: str,
                   settings: Settings, registry, layers: int = 8, iters: int = 30, margin: float = 0.01,
                   candidates: int = 4, progress: Callable[[str], None] = lambda line: None) -> ChainResult:
    """Time ``chain`` at ``chain_axes`` on ``device`` (``cpu``, ``cuda``...) and pick each
    slot's solution. ``registry`` gives the per-kernel evaluations that seed the search; a slot
    tries its ``candidates`` fastest of them (variants of one solution count one each).
    Raises BenchError when a slot has no candidate that builds and runs, FibuildError when a
    slot has no workload at these axes. ``progress`` gets one line per timing."""
    import torch

    missing = sorted(set(chain.axes) - set(chain_axes))
    if missing:
        raise BenchError(f"chain {chain.name}: no value for its axes {missing}")
    torch_device = torch.device(device)
    cache = BuildCache(settings)
    slots = [_slot_state(workspace, slot, chain_axes, torch_device, device_slug, cache, registry, layers,
                         candidates) for slot in chain.slots]
    timer = _GraphTimer(slots, torch_device, layers, iters)
    best = timer.time()
    progress(f"start: {', '.join(s.chosen for s in slots)}: {best:.2f} µs per layer")
    for state in slots:
        state.alternatives[state.chosen] = best
        for name in sorted(state.candidates):
            if name == state.chosen:
                continue
            previous, state.chosen = state.chosen, name
            try:
                took = timer.time()
            except Exception as exc:  # a candidate that cannot be captured or run in sequence  # noqa: BLE001
                progress(f"{state.slot.name} = {name}: failed in the chain ({type(exc).__name__}: {exc})")
                state.chosen = previous
                continue
            state.alternatives[name] = took
            kept = took < best * (1 - margin)
            progress(f"{state.slot.name} = {name}: {took:.2f} µs per layer: "
                     + (f"kept (was {previous}, {best:.2f})" if kept else f"{previous} stays ({best:.2f})"))
            if kept:
                best = took
            else:
                state.chosen = previous
        state.alternatives[state.chosen] = best
    final = timer.time()  # the chosen assignment once more, as recorded
    progress(f"chosen: {', '.join(s.chosen for s in slots)}: {final:.2f} µs per layer")
    return ChainResult(chain.name, dict(chain_axes), device_slug, layers, final, tuple(slots), settings.pdl)


def _slot_state(workspace, slot: ChainSlot, chain_axes, torch_device, device_slug: str, cache: BuildCache,
                registry, layers: int, max_candidates: int) -> SlotState:
    defn = workspace.definition(slot.definition)
    workload = slot_workload(defn, slot, chain_axes, workspace.workloads(defn))
    solutions = {s.name: s for s in workspace.solutions(defn.name)}
    digests = {n: solution_digest(defn, s) for n, s in solutions.items()}
    passed = _passed_at(registry, defn, workload, device_slug, digests)
    names = [n for n, _ in sorted(passed.items(), key=lambda kv: kv[1])][:max_candidates] or sorted(solutions)
    candidates = {}
    for name in names:
        sol: Solution = solutions[name]
        if Device.from_slug(device_slug).mismatch(sol.target_hardware):
            continue
        try:
            candidates[name] = cache.get_or_build(defn, sol)
        except BuildError:
            continue
    if not candidates:
        raise BenchError(f"slot {slot.name}: no solution of {defn.name} builds and runs on {device_slug}")
    base = make_inputs(defn, workload, device=torch_device)
    # Per layer its own tensors, but one page table (the structural inputs), as in a model: a
    # plan/run solution plans once and every layer's run reuses the plan.
    structural = [spec.structural for spec in defn.inputs]
    inputs = [[b if shared else c for b, c, shared in zip(base, clone_inputs(base), structural)]
              for _ in range(layers)]
    chosen = next(n for n in names if n in candidates)
    return SlotState(slot, defn, workload, candidates, {n: digests[n] for n in candidates}, inputs, chosen)


def _passed_at(registry, defn: Definition, workload: Workload, device_slug: str,
               digests: Mapping[str, str]) -> dict[str, float]:
    """Median µs of each solution's newest current PASSED record at ``workload``'s axes."""
    newest: dict[str, Any] = {}
    for ev in registry.read(defn.name, device_slug):
        if digests.get(ev.solution) != ev.solution_digest:
            continue
        if {a: int(ev.axes.get(a, -1)) for a in defn.var_axes} != {a: int(workload.axes[a]) for a in defn.var_axes}:
            continue
        kept = newest.get(ev.solution)
        if kept is None or ev.timestamp >= kept.timestamp:
            newest[ev.solution] = ev
    return {n: ev.latency.median_us for n, ev in newest.items() if ev.status == "PASSED" and ev.latency}


class _GraphTimer:
    """Times the slots' current choices over all layers: a CUDA graph replayed, or eager on a CPU."""

    def __init__(self, slots: list[SlotState], device, layers: int, iters: int):
        self.slots, self.device, self.layers, self.iters = slots, device, layers, iters

    def _run_all(self) -> None:
        for layer in range(self.layers):
            for state in self.slots:
                state.candidates[state.chosen](*state.inputs[layer])

    def time(self) -> float:
        """Median µs per layer of the current assignment."""
        import statistics

        import torch

        self._run_all()  # eager first: builds, plans, Triton compiles, all before any capture
        if self.device.type != "cuda":
            times = []
            for _ in range(self.iters):
                t0 = time.perf_counter()
                self._run_all()
                times.append((time.perf_counter() - t0) * 1e6)
            return statistics.median(times) / self.layers
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._run_all()
        for _ in range(3):
            graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(self.iters):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        del graph
        return statistics.median(times) / self.layers

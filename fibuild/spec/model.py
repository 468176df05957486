"""Frozen dataclasses for manifests and records.

These hold validated data only: :mod:`fibuild.spec.manifest` builds them from YAML after
schema and semantic checks. Nothing here does I/O. ``ApplyKey`` is a plain tuple of the
var-axis values, in the definition's axis order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

ApplyKey = tuple  # tuple[int, ...]: var-axis values in axis declaration order

#: dtype names accepted in manifests (torch's names, as flashinfer-trace uses them).
DTYPES = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
          "int64", "int32", "int16", "int8", "uint8", "bool")

#: evaluation statuses, as the bench runner assigns them.
STATUSES = ("PASSED", "INCORRECT_SHAPE", "INCORRECT_NUMERICAL", "INCORRECT_DTYPE",
            "RUNTIME_ERROR", "COMPILE_ERROR", "TIMEOUT", "WORKER_KILLED")
#: statuses that say nothing about the kernel (its worker was killed from outside twice):
#: the resolver reads such a record as no record.
NOT_THE_KERNELS_FAULT = ("WORKER_KILLED",)

LANGUAGES = ("cuda", "cpp", "triton", "python")


@dataclass(frozen=True)
class Axis:
    """A named dimension: ``const`` with a fixed ``value``, or ``var`` (value per call)."""

    name: str
    kind: Literal["const", "var"]
    value: int | None = None
    description: str = ""


@dataclass(frozen=True)
class TensorSpec:
    """An input or output. ``shape`` is a tuple of axis names, or None for a scalar.

    ``inplace`` (outputs only) names the input this output is written into: the solution
    mutates that input instead of returning or receiving a separate tensor. ``structural``
    (inputs only): what a plan/run solution plans from (page tables, indptrs, scalars a
    plan bakes in); see :mod:`fibuild.compile.plans`.
    """

    name: str
    shape: tuple[str, ...] | None
    dtype: str
    description: str = ""
    inplace: str | None = None
    structural: bool = False

    @property
    def is_scalar(self) -> bool:
        return self.shape is None


@dataclass(frozen=True)
class Tolerance:
    """How far a solution's output may stray from the reference's: an element passes when
    ``|a - b| <= atol + rtol * |b|``. Both are finite and >= 0; ``atol <= 1000`` and
    ``rtol < 1`` (an rtol of 1 would pass an all-zero output), so the check can fail."""

    atol: float = 1e-2
    rtol: float = 1e-2


@dataclass(frozen=True)
class InputSpec:
    """How a workload makes one input.

    kind ``random``: seeded random tensor in the declared dtype; ``scalar``: ``value``;
    ``safetensors``: tensor ``tensor_key`` of file ``path`` (relative to the workspace
    root and confined to it, e.g. ``registry/<definition>/blobs/<name>.safetensors``);
    ``custom``: produced by the definition's ``custom_inputs_entrypoint``.
    """

    kind: Literal["random", "scalar", "safetensors", "custom"]
    value: Any = None
    path: str | None = None
    tensor_key: str | None = None


@dataclass(frozen=True)
class Workload:
    """One concrete shape to check and time: every var axis gets a value."""

    uuid: str
    axes: Mapping[str, int]
    inputs: Mapping[str, InputSpec] = field(default_factory=dict)
    source: str = ""  # "declared", or the path of the workloads.jsonl it came from


@dataclass(frozen=True)
class Distributed:
    """How a definition spans the ranks of a process group (the manifest's ``distributed``).

    ``world_size_axis`` names the axis whose value is the group's size: no tensor carries
    it, so the distributed bench runner fills it from its ``--world-size`` and
    ``fibuild.load`` reads it from ``torch.distributed.get_world_size()`` (1 outside a
    group). ``per_rank_inputs`` are the inputs that differ between ranks (e.g. the partial
    sums an all-reduce combines); every other input is the same on every rank.
    """

    world_size_axis: str
    per_rank_inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Definition:
    """An operator contract: axes, inputs/outputs (calling order), torch reference."""

    name: str
    op_type: str
    axes: Mapping[str, Axis]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    reference: str
    description: str = ""
    tags: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    tolerance: Tolerance = Tolerance()
    workloads: tuple[Workload, ...] = ()
    custom_inputs_entrypoint: str | None = None
    distributed: Distributed | None = None  # None: runs in one process
    baseline: tuple[str, ...] = ()  # solutions a user runs anyway, first usable one wins
    path: Path | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def structural_inputs(self) -> tuple[str, ...]:
        """Names of the inputs marked ``structural``, in calling order."""
        return tuple(s.name for s in self.inputs if s.structural)

    @property
    def var_axes(self) -> tuple[str, ...]:
        """Names of the var axes, in declaration order: the layout of an ApplyKey."""
        return tuple(a.name for a in self.axes.values() if a.kind == "var")

    @property
    def const_axes(self) -> dict[str, int]:
        return {a.name: a.value for a in self.axes.values() if a.kind == "const"}

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def apply_key(self, axes: Mapping[str, int]) -> ApplyKey:
        """The ApplyKey for a full mapping of var-axis values (KeyError if one is missing)."""
        return tuple(int(axes[name]) for name in self.var_axes)


@dataclass(frozen=True)
class BuildFlags:
    cflags: tuple[str, ...] = ()
    cuda_cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    include_dirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Solution:
    """An implementation of a definition.

    ``entry_point`` is ``"file::function"`` with ``file`` one of ``sources`` (relative to
    ``path``, the solution's directory). ``destination_passing_style``: the function takes
    the inputs, then preallocated non-in-place outputs, and returns nothing; otherwise it
    returns the non-in-place outputs (one tensor, or a tuple in declaration order).
    ``plan`` (``"file.py::function"`` or None): the solution is plan/run; the entry point
    is the run and takes the plan first (see :mod:`fibuild.compile.plans`).
    ``libraries`` names shared source folders; ``library_files`` holds their files as
    ``(relpath in the build, file)``, found when the manifest was loaded (see
    :mod:`fibuild.spec.libraries`). ``files`` is the effective source set a build copies.
    ``variants`` (a grid, ``(name, values)`` pairs) and ``constraints`` are the manifest's;
    ``constants`` (``(name, value)`` pairs) are what the build passes to the entry point:
    the manifest's own, and for a variant expanded from the grid (named ``base[K=v,...]``,
    :mod:`fibuild.spec.variants`) its grid values after them.
    ``pdl`` (manifest ``launch: {pdl: true}``): its kernels wait for their predecessor
    before reading its output, so fibuild may launch them with programmatic dependent launch
    (:mod:`fibuild.compile.launch`).
    """

    name: str
    definition: str
    language: Literal["cuda", "cpp", "triton", "python"]
    entry_point: str
    sources: tuple[str, ...]
    author: str = ""
    description: str = ""
    target_hardware: tuple[str, ...] = ()
    destination_passing_style: bool = False
    dependencies: tuple[str, ...] = ()
    build: BuildFlags = BuildFlags()
    plan: str | None = None
    libraries: tuple[str, ...] = ()
    library_files: tuple[tuple[str, Path], ...] = ()
    variants: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    constraints: tuple[str, ...] = ()
    constants: tuple[tuple[str, Any], ...] = ()
    pdl: bool = False  # launch.pdl: its kernels may be launched with programmatic dependent launch
    #: Work the first call declares (``jit``, ``autotune``, ``workspace``): in ``fibuild
    #: bench`` it gets the prepare allowance, not ``--timeout``. Not a build input.
    first_call: tuple[str, ...] = ()
    path: Path | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def files(self) -> tuple[tuple[str, Path], ...]:
        """``(relpath, file)`` of every source a build copies: the solution's own (in
        manifest order, under ``path``), then its libraries'. Relpaths are unique."""
        own = tuple((rel, (self.path or Path()) / rel) for rel in self.sources)
        return own + self.library_files

    @property
    def source_dirs(self) -> tuple[Path, ...]:
        """The folders the sources come from, the solution's first: each file's relpath is
        relative to one of them (a package ``__path__`` that finds them as a build does)."""
        dirs = [self.path or Path()]
        for rel, file in self.library_files:
            folder = file.parents[len(rel.split("/")) - 1]
            if folder not in dirs:
                dirs.append(folder)
        return tuple(dirs)

    @property
    def all_sources(self) -> tuple[str, ...]:
        """The relpaths of :attr:`files`: what the digest and the build see as sources."""
        return self.sources + tuple(rel for rel, _ in self.library_files)

    @property
    def qualified_name(self) -> str:
        """``definition/solution``: unique across the workspace."""
        return f"{self.definition}/{self.name}"

    @property
    def family(self) -> str:
        """The manifest's name: a variant's name without its ``[K=v,...]``."""
        return self.name.split("[", 1)[0]

    @property
    def entry_file(self) -> str:
        return self.entry_point.split("::", 1)[0]

    @property
    def entry_symbol(self) -> str:
        return self.entry_point.split("::", 1)[1]

    @property
    def plan_file(self) -> str | None:
        return self.plan.split("::", 1)[0] if self.plan else None

    @property
    def plan_symbol(self) -> str | None:
        return self.plan.split("::", 1)[1] if self.plan else None


@dataclass(frozen=True)
class LatencyStats:
    """Latency statistics in microseconds over ``n`` timed repetitions.

    ``min_us``, ``q1_us`` and ``q3_us`` (minimum, 25th and 75th percentiles) are None in
    records older than schema 2; :mod:`fibuild.bench.compare` then falls back on p20/p80.
    """

    median_us: float
    p20_us: float
    p80_us: float
    mean_us: float
    n: int
    min_us: float | None = None
    q1_us: float | None = None
    q3_us: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """One (definition, solution, workload) result on one device; a registry line."""

    definition: str
    solution: str
    solution_digest: str
    build_key: str
    workload_uuid: str
    axes: Mapping[str, int]
    status: str
    device: str  # the device slug, e.g. nvidia-h100-80gb-hbm3-sm90
    latency: LatencyStats | None = None
    reference_latency: LatencyStats | None = None
    # Host time per call (the Python caller's wall clock, GPU queue not full) on CUDA devices;
    # None on CPUs (latency is host time there) and in records older than schema 2.
    host_latency: LatencyStats | None = None
    reference_host_latency: LatencyStats | None = None
    plan_latency: LatencyStats | None = None  # plan/run solutions: one plan, host wall clock
    speedup: float | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    error: str = ""
    environment: Mapping[str, Any] = field(default_factory=dict)
    timestamp: str = ""
    prepare_s: float | None = None  # seconds the solution's load and first call took (JIT, workspaces)

"""Programmatic dependent launch on a GPU (sm_90+): ordering under races, and the PDL kernels
of the decode step giving bit-identical results with and without PDL, eager and in a graph.

The race: a producer lets its dependents launch at once, then spins ~50 µs and only then
writes. A consumer launched with PDL that waits (``gdc_wait``) must read the new values; the
same consumer without the wait must read stale ones at least once (the check that the test can
fail: the two kernels really overlap).
"""
from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import re
import sys

import pytest

from fibuild.spec.workspace import Workspace, shipped_root

pytestmark = pytest.mark.gpu

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
torch = pytest.importorskip("torch")

from fibuild.compile.launch import TritonLaunch, configure_package  # noqa: E402

N = 4096
DELAY_NS = 100_000


def _needs_pdl():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90+")


@triton.jit
def _now():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _late_writer(out_ptr, value, delay_ns, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()  # dependents may start now...
        tl.extra.cuda.gdc_wait()
    t = _now()
    end = t + delay_ns
    while t < end:  # ...while this kernel has not written yet
        t = _now()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.full([BLOCK], 0, tl.int32) + value)


@triton.jit
def _reader(src_ptr, dst_ptr, BLOCK: tl.constexpr, WAIT: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        if WAIT:
            tl.extra.cuda.gdc_wait()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, cache_modifier=".cg"))


def _launches(writer_pdl: bool, reader_pdl: bool):
    writer, reader = TritonLaunch(_late_writer), TritonLaunch(_reader)
    writer.pdl, reader.pdl = writer_pdl, reader_pdl
    return (writer.bind(BLOCK=1024, num_warps=4), reader.bind(BLOCK=1024, WAIT=True, num_warps=4),
            reader.bind(BLOCK=1024, WAIT=False, num_warps=4))


def _stale_reads(write, read, rounds: int, graph: bool) -> int:
    """Rounds (of ``rounds``) in which ``read`` saw anything but what ``write`` wrote just before."""
    src = torch.zeros(N, dtype=torch.int32, device="cuda")
    dst = torch.zeros_like(src)
    value = torch.zeros((), dtype=torch.int64)  # host counter: a fresh value each round

    def pair(v: int):
        write((N // 1024,), src, v, DELAY_NS)
        read((N // 1024,), src, dst)

    stale = 0
    if graph:
        pair(1)  # compile before capture
        torch.cuda.synchronize()
        graphs = []
        for v in (2, 3):  # two graphs writing different values, replayed alternately
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                pair(v)
            graphs.append((v, g))
        for i in range(rounds):
            v, g = graphs[i % 2]
            g.replay()
            torch.cuda.synchronize()
            stale += int((dst != v).any())
        return stale
    for i in range(rounds):
        value += 1
        pair(int(value) + 10)
        torch.cuda.synchronize()
        stale += int((dst != int(value) + 10).any())
    return stale


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_the_wait_orders_a_late_producer_and_the_test_can_fail(graph):
    _needs_pdl()
    write, read_waiting, read_unsafe = _launches(True, True)
    assert _stale_reads(write, read_waiting, 40, graph) == 0
    assert _stale_reads(write, read_unsafe, 40, graph) > 0, "the consumer never overlapped the producer"


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_neighbours_without_pdl_stay_ordered(graph):
    """A plain producer before a PDL consumer, and a PDL producer before a plain consumer (its
    reader launched without the attribute, so without a wait it still sees the write)."""
    _needs_pdl()
    write, read_waiting, _ = _launches(False, True)
    assert _stale_reads(write, read_waiting, 20, graph) == 0
    write, _, read_plain = _launches(True, False)
    assert _stale_reads(write, read_plain, 20, graph) == 0


# --- the decode step's PDL kernels ---------------------------------------------------------

WORKSPACE = Workspace(shipped_root())
PDL_SOLUTIONS = [s for s in WORKSPACE.solutions() if s.pdl and s.language == "triton"]


def _module(sol):
    """The solution's entry module, its folder and libraries imported as a package (as the builder does)."""
    name = re.sub(r"\W", "_", "gpu_pdl_" + sol.definition + "_" + sol.name)
    if name not in sys.modules:
        package = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = importlib.util.module_from_spec(package)
        sys.modules[name].__path__ = [str(d) for d in sol.source_dirs]  # its folder and its libraries
    return name, importlib.import_module(name + "." + sol.entry_file[:-3].replace("/", "."))


def _variant(definition: str, family: str, **constants):
    """The first solution of ``family`` whose constants include ``constants``."""
    return next(s for s in WORKSPACE.solutions(definition)
                if s.family == family and all(dict(s.constants).get(k) == v for k, v in constants.items()))


def _entry(definition: str, family: str, **constants):
    """``(package, callable)``: the variant's entry with its constants bound, as the builder binds them;
    a plan/run solution's plan and run joined (a PlannedEntry)."""
    from fibuild.compile.plans import PlannedEntry

    sol = _variant(definition, family, **constants)
    package, module = _module(sol)
    bound = dict(sol.constants)
    entry = getattr(module, sol.entry_symbol)
    if not sol.plan:
        return package, functools.partial(entry, **bound) if bound else entry
    defn = WORKSPACE.definition(definition)
    plan = functools.partial(getattr(module, sol.plan_symbol), **bound)
    return package, PlannedEntry(entry, plan, [i for i, s in enumerate(defn.inputs) if s.structural],
                                 name=sol.qualified_name)


def test_the_decode_kernels_declare_pdl():
    families = {f"{s.definition}/{s.family}" for s in PDL_SOLUTIONS}
    assert {"rmsnorm_h4096/triton_row", "fused_add_rmsnorm_h4096/triton_row", "silu_and_mul_i14336/triton_vec",
            "gemm_n6144_k4096_bf16/triton_stream", "gemm_n4096_k4096_bf16/triton_stream",
            "gemm_n28672_k4096_bf16/triton_stream", "gemm_n4096_k14336_bf16/triton_stream",
            "gqa_paged_decode_h32_kv8_d128_ps1/triton_split_kv"} <= families, families


def _mlp_chain(layers: int, batch: int):
    """Weights of ``layers`` distinct MLP blocks and a step running fused add+norm -> gate-up
    -> SiLU x mul -> down on each, all through fibuild's PDL solutions; returns (step, packages)."""
    g = torch.Generator(device="cuda").manual_seed(batch)
    bf16 = torch.bfloat16
    blocks = [((1 + 0.1 * torch.randn(4096, generator=g, device="cuda")).to(bf16),
               (torch.randn(28672, 4096, generator=g, device="cuda") / 64).to(bf16),
               (torch.randn(4096, 14336, generator=g, device="cuda") / 120).to(bf16)) for _ in range(layers)]
    entries = {
        "norm": _entry("rmsnorm_h4096", "triton_row"),
        "add_norm": _entry("fused_add_rmsnorm_h4096", "triton_row"),
        "act": _entry("silu_and_mul_i14336", "triton_vec"),
    }
    # the fma variant: the CUDA-core GEMV at M = 1, its several-rows tensor-core tile above
    for definition in ("gemm_n28672_k4096_bf16", "gemm_n4096_k14336_bf16"):
        entries[definition] = _entry(definition, "triton_stream", KERNEL="fma")
    gate_up, down = entries["gemm_n28672_k4096_bf16"][1], entries["gemm_n4096_k14336_bf16"][1]

    def step(x):
        residual = x.clone()
        h = entries["norm"][1](x, blocks[0][0])
        for ln, w_gu, w_d in blocks:
            entries["add_norm"][1](h, residual, ln)
            h = down(entries["act"][1](gate_up(h, w_gu)), w_d)
        return h, residual

    return step, [p for p, _ in entries.values() if p]


@pytest.mark.parametrize("batch", [1, 16])
def test_pdl_kernels_give_the_same_bits_with_and_without_pdl(batch):
    _needs_pdl()
    step, packages = _mlp_chain(layers=4, batch=batch)
    x = torch.randn(batch, 4096, device="cuda").to(torch.bfloat16)
    outputs = {}
    for pdl in (False, True):
        for p in packages:
            assert configure_package(p, pdl=pdl) >= 1
        eager = step(x.clone())
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step(x.clone())
        replays = []
        for _ in range(20):
            graph.replay()
            torch.cuda.synchronize()
            replays.append(captured[0].clone())
        outputs[pdl] = (eager, replays)
    base = outputs[False][0][0]
    assert torch.isfinite(base.float()).all()
    for pdl in (False, True):
        eager, replays = outputs[pdl]
        assert torch.equal(eager[0], base), f"eager, pdl={pdl}"
        assert all(torch.equal(r, base) for r in replays), f"graph replays, pdl={pdl}"


def test_the_cuda_pdl_example_waits_for_a_late_producer(tmp_path):
    """examples/native_solution's cuda_pdl (cudaLaunchKernelEx + griddepcontrol) after a producer
    that lets it launch at once and writes 100 µs later: it reads the new values."""
    _needs_pdl()
    from pathlib import Path

    from fibuild.compile.cache import BuildCache
    from fibuild.config import Settings

    root = Path(__file__).resolve().parents[2] / "examples" / "native_solution"
    ws = Workspace(root)
    settings = Settings.from_env({"FIBUILD_CACHE_DIR": str(tmp_path / "cache"), "FIBUILD_CUDA_ARCH_LIST": "9.0a"})
    kernel = BuildCache(settings).get_or_build(ws.definition("add_scaled_f32"), ws.solution("add_scaled_f32/cuda_pdl"))
    assert "-DFIBUILD_LAUNCH_PDL=1" in (kernel.build_dir / "build.ninja").read_text()
    write, _, _ = _launches(True, True)
    x, y = torch.zeros(N, device="cuda"), torch.ones(N, device="cuda")
    out = torch.empty_like(x)
    for v in range(3, 13):
        write((N // 1024,), x, v, DELAY_NS)
        kernel.entry(x, y, out)
        torch.cuda.synchronize()
        assert torch.equal(out, torch.full_like(out, v + 2.0)), v


@pytest.mark.parametrize("merge", ["fused", "separate"])
def test_the_pdl_decode_after_a_pdl_projection_gives_the_same_bits(merge):
    """QKV projection (PDL) straight into the paged decode (PDL): q is read from the projection's
    output with no copy between, so a decode that did not wait would read a stale q."""
    _needs_pdl()
    qkv_package, qkv = _entry("gemm_n6144_k4096_bf16", "triton_stream", KERNEL="fma")
    package, entry = _entry("gqa_paged_decode_h32_kv8_d128_ps1", "triton_split_kv", MERGE=merge)
    g = torch.Generator(device="cuda").manual_seed(5)
    batch, kv_len, layers = 4, 700, 3
    bf16 = torch.bfloat16
    pool = batch * kv_len
    weights = [(torch.randn(6144, 4096, generator=g, device="cuda") / 64).to(bf16) for _ in range(layers)]
    caches = [(torch.randn(pool, 1, 8, 128, generator=g, device="cuda").to(bf16),
               torch.randn(pool, 1, 8, 128, generator=g, device="cuda").to(bf16)) for _ in range(layers)]
    indptr = torch.arange(0, pool + 1, kv_len, dtype=torch.int32, device="cuda")
    indices = torch.randperm(pool, generator=g, device="cuda").to(torch.int32)
    x = torch.randn(batch, 4096, generator=g, device="cuda").to(bf16)

    def step():
        outs = []
        h = x
        for w, (k, v) in zip(weights, caches):
            q = qkv(h, w)[:, :4096].view(batch, 32, 128)  # a view: the decode reads the GEMM's output
            o, _ = entry(q, k, v, indptr, indices, 128 ** -0.5)
            outs.append(o)
            h = o.reshape(batch, 4096)
        return outs

    results = {}
    for pdl in (False, True):
        for p in (qkv_package, package):
            assert configure_package(p, pdl=pdl) >= 1
        eager = [o.clone() for o in step()]
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        replays = []
        for _ in range(10):
            graph.replay()
            torch.cuda.synchronize()
            replays.append([o.clone() for o in captured])
        results[pdl] = (eager, replays)
    base = results[False][0]
    assert all(torch.isfinite(o.float()).all() for o in base)
    for pdl, (eager, replays) in results.items():
        assert all(torch.equal(a, b) for a, b in zip(eager, base)), f"eager, pdl={pdl}"
        for r in replays:
            assert all(torch.equal(a, b) for a, b in zip(r, base)), f"graph, pdl={pdl}"

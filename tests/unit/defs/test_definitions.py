"""The shipped definitions: valid manifests, sensible workloads, references that run on CPU."""
from __future__ import annotations

import pytest
import torch

from fibuild.spec.calling import load_reference, make_caller

import defs_support as ds

SHIPPED = ["rmsnorm_h4096", "fused_add_rmsnorm_h4096", "silu_and_mul_i14336", "gemm_n6144_k4096",
           "gqa_paged_decode_h32_kv8_d128_ps1", "gqa_paged_decode_h32_kv8_d128_ps16"]

#: The smallest declared workload must stay cheap on a CPU (gemm's fp16 weight alone is 48 MiB);
#: the largest must be a shape real serving sees on a GPU.
CPU_FRIENDLY_BYTES = 64 << 20
SERVING_SCALE_BYTES = 64 << 20


@pytest.fixture(scope="module")
def ws():
    return ds.workspace()


def test_every_shipped_definition_is_found(ws):
    assert set(SHIPPED) <= set(ws.definitions)


def test_shipped_definition_files_validate(ws):
    files = sorted((ds.ROOT / "defs").glob("*/*.yaml"))
    assert len(files) >= len(SHIPPED)
    assert [str(e) for e in ws.validate(files)] == []


@pytest.mark.parametrize("name", SHIPPED)
def test_definition_lives_under_its_op_type(ws, name):
    defn = ws.definition(name)
    assert defn.path.resolve() == (ds.ROOT / "defs" / defn.op_type / f"{name}.yaml").resolve()


@pytest.mark.parametrize("name", SHIPPED)
def test_workloads_run_from_cpu_sizes_to_serving_sizes(ws, name):
    defn = ws.definition(name)
    sizes = [ds.input_bytes(defn, w) for w in defn.workloads]
    assert len(sizes) >= 5
    assert sizes == sorted(sizes), "declared workloads go from small to large"
    assert len({tuple(sorted(w.axes.items())) for w in defn.workloads}) == len(sizes), "no duplicates"
    assert sizes[0] <= CPU_FRIENDLY_BYTES
    assert sizes[-1] >= SERVING_SCALE_BYTES
    assert sizes[-1] >= 2 * sizes[0]
    for w in defn.workloads:
        assert set(w.axes) == set(defn.var_axes)


@pytest.mark.parametrize("name", SHIPPED)
def test_reference_runs_on_smallest_workloads_with_declared_outputs(ws, name):
    defn = ws.definition(name)
    for workload in ds.smallest_workloads(defn):
        args = ds.make_inputs(defn, workload)
        outputs = ds.reference_outputs(defn, args)
        assert len(outputs) == len(defn.outputs)
        for spec, out in zip(defn.outputs, outputs):
            assert isinstance(out, torch.Tensor), spec.name
            assert tuple(out.shape) == ds.declared_shape(defn, workload, spec), spec.name
            assert out.dtype == getattr(torch, spec.dtype), spec.name
            assert bool(torch.isfinite(out.float()).all()), spec.name
            assert out.device.type == "cpu"


@pytest.mark.parametrize("name", SHIPPED)
def test_constraints_hold_on_generated_inputs(ws, name):
    """Constraint strings are Python over the axes and inputs; they hold for every small workload."""
    defn = ws.definition(name)
    for workload in ds.smallest_workloads(defn, count=3):
        args = ds.make_inputs(defn, workload)
        scope = {**ds.workload_axes(defn, workload), **{s.name: a for s, a in zip(defn.inputs, args)}}
        for constraint in defn.constraints:
            assert eval(constraint, {}, scope), f"{constraint} fails for {workload.axes}"  # noqa: S307


def test_silu_and_mul_axes_tie_the_halves():
    defn = ds.workspace().definition("silu_and_mul_i14336")
    axes = defn.const_axes
    assert axes["two_intermediate_size"] == 2 * axes["intermediate_size"]
    assert defn.constraints == ("two_intermediate_size == 2 * intermediate_size",)


def test_gqa_decode_mirrors_flashinfer_trace_interface():
    defn = ds.workspace().definition("gqa_paged_decode_h32_kv8_d128_ps1")
    assert [s.name for s in defn.inputs] == ["q", "k_cache", "v_cache", "kv_indptr", "kv_indices", "sm_scale"]
    assert [s.name for s in defn.outputs] == ["output", "lse"]
    assert defn.var_axes == ("batch_size", "num_pages", "len_indptr", "num_kv_indices")
    assert defn.const_axes == {"num_qo_heads": 32, "num_kv_heads": 8, "head_dim": 128, "page_size": 1}
    assert defn.input("sm_scale").is_scalar
    for w in defn.workloads:
        assert w.inputs["kv_indptr"].kind == "custom" and w.inputs["kv_indices"].kind == "custom"
        assert w.inputs["sm_scale"].kind == "scalar"
        assert w.inputs["sm_scale"].value == pytest.approx(128 ** -0.5)


def test_gemm_reference_is_a_times_b_transposed():
    defn = ds.workspace().definition("gemm_n6144_k4096")
    run = load_reference(defn)["run"]
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(-3, 4, (3, 4096), generator=gen).half()
    b = torch.randint(-3, 4, (6144, 4096), generator=gen).half()
    # Small integers: every product and sum is exact in fp32, and |C| < 2048 is exact in fp16.
    expected = (a.double() @ b.double().T)
    assert expected.abs().max() < 2048
    assert torch.equal(run(a, b).double(), expected)


@pytest.mark.parametrize("name", ["rmsnorm_h4096", "silu_and_mul_i14336", "gemm_n6144_k4096"])
def test_value_returning_references_leave_inputs_untouched(ws, name):
    defn = ws.definition(name)
    args = ds.make_inputs(defn, ds.smallest_workloads(defn, 1)[0])
    before = ds.clone(args)
    make_caller(defn, load_reference(defn)["run"], destination_passing_style=False)(*args)
    assert all(torch.equal(a, b) for a, b in zip(args, before))

"""Kernel.op: the kernel as a torch.library custom op, traced by torch.compile on CPU."""
from __future__ import annotations

import pytest
import torch

from fibuild.errors import ResolveError
from fibuild.runtime.api import load
from fibuild.runtime.custom_op import op_schema
from fibuild.spec.model import Axis, Definition, TensorSpec

from runtime_helpers import DEF, inputs, reference_rmsnorm


def _defn(inputs, outputs, axes=None):
    axes = axes or {"n": Axis("n", "var"), "d": Axis("d", "const", 8)}
    return Definition(name="demo", op_type="demo", axes=axes, inputs=tuple(inputs),
                      outputs=tuple(outputs), reference="def run(*a):\n    pass\n")


def test_schema_of_rmsnorm(workspace):
    k = load(DEF, settings=workspace.settings)
    assert op_schema(k.definition) == "(Tensor hidden_states, Tensor weight) -> Tensor"


def test_schema_with_scalars_and_inplace_outputs():
    defn = _defn([TensorSpec("x", ("n", "d"), "bfloat16"), TensorSpec("residual", ("n", "d"), "bfloat16"),
                  TensorSpec("eps", None, "float32")],
                 [TensorSpec("out", ("n", "d"), "bfloat16"),
                  TensorSpec("residual_out", ("n", "d"), "bfloat16", inplace="residual")])
    assert op_schema(defn) == "(Tensor x, Tensor(a!) residual, float eps) -> Tensor"


def test_schema_refuses_an_output_axis_no_input_carries():
    axes = {"n": Axis("n", "var"), "m": Axis("m", "var")}
    defn = _defn([TensorSpec("x", ("n",), "float32")], [TensorSpec("y", ("m",), "float32")], axes)
    with pytest.raises(ResolveError, match="output y has axis m"):
        op_schema(defn)


def test_op_under_torch_compile_matches_the_reference(workspace):
    workspace.record("torch_fp32", 8, 40.0)  # the baseline, measured beside it
    workspace.record("torch_alt", 8, 10.0)
    k = load(DEF, settings=workspace.settings)
    op = k.op
    assert op is k.op  # registered once per Kernel

    def model(x, w):
        return op(x, w).float().sum(dim=-1)

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for batch in (8, 3):
        x, w = inputs(batch)
        got = compiled(x, w)
        torch.testing.assert_close(got, reference_rmsnorm(x, w).float().sum(dim=-1), atol=0.5, rtol=1e-2)
    # The compiled graph called the op, so the kernel resolved both keys.
    assert sorted(k.keys) == [(3,), (8,)]
    assert k.explain(batch_size=8).solution.name == "torch_alt"


def test_fake_impl_gives_output_shapes_without_running(workspace):
    from torch._subclasses.fake_tensor import FakeTensorMode

    k = load(DEF, settings=workspace.settings)
    op = k.op
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.empty(5, 4096, dtype=torch.bfloat16))
        w = mode.from_tensor(torch.empty(4096, dtype=torch.bfloat16))
        y = op(x, w)
    assert tuple(y.shape) == (5, 4096) and y.dtype == torch.bfloat16
    assert k.keys == []  # nothing was resolved or run


def test_inplace_op_under_torch_compile(tmp_path):
    """fused_add_rmsnorm writes both outputs in place: the op declares them mutated and
    returns nothing; compiled code sees the mutations."""
    import shutil

    from fibuild.config import Settings
    from fibuild.spec.workspace import shipped_root

    name = "fused_add_rmsnorm_h4096"
    root = tmp_path / "ws"
    (root / "defs" / "fused_add_rmsnorm").mkdir(parents=True)
    shutil.copy(shipped_root() / "defs" / "fused_add_rmsnorm" / f"{name}.yaml",
                root / "defs" / "fused_add_rmsnorm")
    settings = Settings.from_env({"FIBUILD_ROOT": str(root), "FIBUILD_CACHE_DIR": str(tmp_path / "c"),
                                  "FIBUILD_DEVICE": "cpu"})
    k = load(name, settings=settings)
    assert op_schema(k.definition) == \
        "(Tensor(a!) hidden_states, Tensor(b!) residual, Tensor weight) -> ()"
    op = k.op

    def model(h, r, w):
        op(h, r, w)
        return h.float().sum(dim=-1) + r.float().sum(dim=-1)

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    h, w = inputs(4)
    r = inputs(4, seed=1)[0]
    h_ref, r_ref = h.clone(), r.clone()
    k(h_ref, r_ref, w)  # eager, through the reference
    got = compiled(h, r, w)
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
    torch.testing.assert_close(r, r_ref, atol=0, rtol=0)
    torch.testing.assert_close(got, h_ref.float().sum(-1) + r_ref.float().sum(-1))

"""Op templates: valid definitions whose references agree with the shipped hand-written ones."""
from __future__ import annotations

import pytest
import torch

from fibuild.bench.inputs import make_inputs
from fibuild.errors import FibuildError
from fibuild.spec.calling import load_reference
from fibuild.spec.manifest import _workload
from fibuild.spec.templates import definition_document, definition_name, write_definition
from fibuild.spec.workspace import Workspace, shipped_root

LLAMA = {
    "rmsnorm_h4096": ("rmsnorm", {"hidden_size": 4096, "dtype": "bfloat16", "eps": 1e-5}, {"batch_size": 3}),
    "fused_add_rmsnorm_h4096": ("fused_add_rmsnorm", {"hidden_size": 4096, "dtype": "bfloat16", "eps": 1e-5},
                                {"batch_size": 3}),
    "silu_and_mul_i14336": ("silu_and_mul", {"intermediate_size": 14336, "dtype": "bfloat16"}, {"num_tokens": 2}),
    "gemm_n6144_k4096": ("gemm", {"n": 6144, "k": 4096, "dtype": "float16"}, {"M": 2}),
    "gqa_paged_decode_h32_kv8_d128_ps1": ("gqa_paged_decode", {"num_qo_heads": 32, "num_kv_heads": 8, "head_dim": 128,
                                                               "page_size": 1, "dtype": "bfloat16"},
                                          {"batch_size": 3, "num_pages": 64, "len_indptr": 4, "num_kv_indices": 37}),
}


@pytest.mark.parametrize("name", list(LLAMA))
def test_template_matches_the_shipped_definition(name, tmp_path):
    op, params, axes = LLAMA[name]
    assert definition_name(op, params) == name
    made = Workspace(tmp_path).definition(name) if write_definition(
        tmp_path / "defs", definition_document(op, params)) else None
    shipped = Workspace(shipped_root()).definition(name)
    assert [(s.name, s.shape, s.dtype) for s in made.inputs] == [(s.name, s.shape, s.dtype) for s in shipped.inputs]
    assert made.const_axes == shipped.const_axes
    inputs = {s.name: {"type": "custom"} for s in shipped.inputs if s.dtype == "int32"}
    inputs.update({s.name: {"type": "scalar", "value": 0.088} for s in shipped.inputs if s.is_scalar})
    workload = _workload({"axes": axes, "inputs": inputs}, "w", list(shipped.var_axes), shipped.inputs, "declared")
    args = make_inputs(shipped, workload, reference_ns=load_reference(shipped))
    ours = load_reference(made)["run"](*[a.clone() if hasattr(a, "clone") else a for a in args])
    theirs = load_reference(shipped)["run"](*[a.clone() if hasattr(a, "clone") else a for a in args])
    for a, b in zip(ours if isinstance(ours, tuple) else (ours,), theirs if isinstance(theirs, tuple) else (theirs,)):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-2)


def test_other_dtypes_get_a_suffix_and_bad_params_are_named():
    assert definition_name("gemm", {"n": 8, "k": 4, "dtype": "bfloat16"}) == "gemm_n8_k4_bf16"
    assert definition_name("rmsnorm", {"hidden_size": 8, "dtype": "float16", "eps": 1e-6}) == "rmsnorm_h8_fp16"
    with pytest.raises(FibuildError, match="needs parameter 'k'"):
        definition_name("gemm", {"n": 8})
    with pytest.raises(FibuildError, match="no op template 'conv'"):
        definition_document("conv", {})
    with pytest.raises(FibuildError, match="dtype 'int8'"):
        definition_name("rmsnorm", {"hidden_size": 8, "dtype": "int8", "eps": 1e-6})


def test_write_definition_never_overwrites(tmp_path):
    doc = definition_document("rmsnorm", {"hidden_size": 8, "dtype": "bfloat16", "eps": 1e-6})
    path = write_definition(tmp_path, doc)
    path.write_text(path.read_text() + "# edited\n")
    assert write_definition(tmp_path, doc) == path and path.read_text().endswith("# edited\n")
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(".")) == ["rmsnorm_h8.yaml"]

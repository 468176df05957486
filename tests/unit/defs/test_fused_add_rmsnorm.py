"""fused_add_rmsnorm_h4096: both outputs are written in place, and checking sees both."""
from __future__ import annotations

import torch

from fibuild.spec.calling import load_reference, make_caller, solution_caller

import defs_support as ds

WS = ds.workspace()
DEFN = WS.definition("fused_add_rmsnorm_h4096")


def _inputs(batch_size=5, seed=11):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch_size, 4096, generator=gen).bfloat16()
    r = torch.randn(batch_size, 4096, generator=gen).bfloat16()
    w = torch.randn(4096, generator=gen).bfloat16()
    return h, r, w


def _expected(h, r, w):
    """Independent float64 computation of the definition's contract."""
    residual = (h.double() + r.double()).bfloat16()  # one rounding of the exact sum
    x = residual.double()
    normed = x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-5) * w.double()
    return normed, residual


def test_outputs_are_declared_in_place():
    assert [(o.name, o.inplace) for o in DEFN.outputs] == [("hidden_states", "hidden_states"),
                                                           ("residual", "residual")]


def test_reference_mutates_both_inputs_and_returns_them():
    h, r, w = _inputs()
    w_before = w.clone()
    normed, residual = _expected(h, r, w)
    call = make_caller(DEFN, load_reference(DEFN)["run"], destination_passing_style=False)
    out_h, out_r = call(h, r, w)
    assert out_h is h and out_r is r
    assert torch.equal(r, residual)
    # within one bf16 rounding of the float64 result
    assert torch.allclose(h.double(), normed, atol=1e-2, rtol=2 ** -8)
    assert torch.equal(w, w_before)


def test_torch_solution_mutates_both_inputs_like_the_reference():
    sol = WS.solution("fused_add_rmsnorm_h4096/torch_fp32")
    h, r, w = _inputs(batch_size=9, seed=4)
    ref_h, ref_r = h.clone(), r.clone()
    make_caller(DEFN, load_reference(DEFN)["run"], destination_passing_style=False)(ref_h, ref_r, w)
    out = solution_caller(DEFN, sol, ds.load_entry(sol))(h, r, w)
    assert out[0] is h and out[1] is r
    assert ds.mismatches(DEFN, [h, r], [ref_h, ref_r]) == []
    assert torch.equal(r, ref_r)


def test_a_solution_that_skips_the_residual_update_fails():
    h, r, w = _inputs()
    expected = ds.reference_outputs(DEFN, [h, r, w])

    def forgets_residual(hidden_states, residual, weight):
        x = hidden_states.float() + residual.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        hidden_states.copy_(x * weight.float())

    got = ds.as_list(make_caller(DEFN, forgets_residual, destination_passing_style=False)(*ds.clone([h, r, w])))
    problems = ds.mismatches(DEFN, got, expected)
    assert len(problems) == 1 and problems[0].startswith("residual:")


def test_flashinfer_formulation_is_within_tolerance():
    """FlashInfer normalizes the unrounded fp32 sum; the definition's tolerance admits that."""
    for seed in range(3):
        h, r, w = _inputs(batch_size=64, seed=seed)
        expected = ds.reference_outputs(DEFN, [h, r, w])
        x = h.float() + r.float()
        fi_h = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()).bfloat16()
        assert ds.mismatches(DEFN, [fi_h, x.bfloat16()], expected) == []

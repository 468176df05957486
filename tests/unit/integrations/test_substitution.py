"""Substitution: resolved solutions run through fibuild.load in place of the stand-in's calls."""
from __future__ import annotations

import textwrap

import pytest
import torch
from integration_helpers import solution_calls

import fibuild
import fibuild.integrations
from fibuild.integrations.wrapper_sites import context_of

BF16 = torch.bfloat16


def _close(a, b):
    torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


def test_resolved_solution_runs_and_agrees_with_the_original(flashinfer_stub, small_ws):
    small_ws.add_counted_solution("rmsnorm_h64")
    small_ws.record("rmsnorm_h64", "counted", {"batch_size": 4})
    import flashinfer

    x, w = torch.randn(4, 64, dtype=BF16), torch.rand(64, dtype=BF16)
    expected = flashinfer.rmsnorm(x, w, 1e-5)
    fibuild.enable(apply=True, settings=small_ws.settings)
    before = flashinfer.CALLS["rmsnorm"]
    for _ in range(3):
        _close(flashinfer.norm.rmsnorm(x, w, 1e-5), expected)
    assert flashinfer.CALLS["rmsnorm"] == before          # the original did not run
    assert len(solution_calls("rmsnorm_h64", (4,))) == 3  # the solution did, every time
    # nearest key: another batch size uses the same solution
    _close(flashinfer.rmsnorm(x[:2].contiguous(), w, 1e-5), expected[:2])
    assert len(solution_calls("rmsnorm_h64", (2,))) == 4


def test_non_contiguous_and_other_eps_fall_back_per_call(flashinfer_stub, small_ws):
    small_ws.add_counted_solution("rmsnorm_h64")
    small_ws.record("rmsnorm_h64", "counted", {"batch_size": 4})
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    wide = torch.randn(4, 128, dtype=BF16)
    w = torch.rand(64, dtype=BF16)
    flashinfer.rmsnorm(wide[:, :64], w, 1e-5)   # strided rows: the original
    flashinfer.rmsnorm(wide[:, :64].contiguous(), w, 1e-6)   # eps differs from the definition's EPS
    assert flashinfer.CALLS["rmsnorm"] == 2


def test_fused_add_rmsnorm_in_place_effects_match_the_original(flashinfer_stub, small_ws):
    small_ws.add_counted_solution("fused_add_rmsnorm_h64")
    small_ws.record("fused_add_rmsnorm_h64", "counted", {"batch_size": 3})
    import flashinfer

    x, r, w = torch.randn(3, 64, dtype=BF16), torch.randn(3, 64, dtype=BF16), torch.rand(64, dtype=BF16)
    xo, ro = x.clone(), r.clone()
    flashinfer.fused_add_rmsnorm(xo, ro, w, 1e-5)
    fibuild.enable(apply=True, settings=small_ws.settings)
    assert flashinfer.fused_add_rmsnorm(x, r, w, 1e-5) is None
    assert len(solution_calls("fused_add_rmsnorm_h64", (3,))) == 1
    _close(x, xo)
    _close(r, ro)


def test_linear_and_silu_keep_leading_dimensions(flashinfer_stub, small_ws):
    for name, axes in (("gemm_n48_k64_bf16", {"M": 6}), ("silu_and_mul_i32", {"num_tokens": 6})):
        small_ws.add_counted_solution(name)
        small_ws.record(name, "counted", axes)
    import flashinfer

    a, b = torch.randn(2, 3, 64, dtype=BF16), torch.randn(48, 64, dtype=BF16)
    g = torch.randn(2, 3, 64, dtype=BF16)
    want_lin, want_silu = torch.nn.functional.linear(a, b), flashinfer.silu_and_mul(g)
    fibuild.enable(apply=True, settings=small_ws.settings)
    got_lin, got_silu = torch.nn.functional.linear(a, b), flashinfer.silu_and_mul(g)
    assert got_lin.shape == (2, 3, 48) and got_silu.shape == (2, 3, 32)
    _close(got_lin, want_lin)
    _close(got_silu, want_silu)
    assert len(solution_calls("gemm_n48_k64_bf16", (6,))) == 1
    assert len(solution_calls("silu_and_mul_i32", (6,))) == 1


def test_flashinfer_own_solution_means_the_original_itself(flashinfer_stub, small_ws):
    small_ws.add_counted_solution("rmsnorm_h64", "flashinfer", flashinfer=True)
    small_ws.record("rmsnorm_h64", "flashinfer", {"batch_size": 4})
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    flashinfer.rmsnorm(torch.randn(4, 64, dtype=BF16), torch.rand(64, dtype=BF16), 1e-5)
    assert [h.__wrapped__ for h in flashinfer.rmsnorm.fibuild_memo.values()] == [flashinfer.rmsnorm.__wrapped__]
    assert flashinfer.CALLS["rmsnorm"] == 1


def test_a_solution_calling_the_patched_api_gets_the_original(flashinfer_stub, small_ws):
    folder = small_ws.root / "solutions" / "rmsnorm_h64" / "calls_flashinfer"
    folder.mkdir(parents=True)
    (folder / "solution.yaml").write_text(textwrap.dedent("""\
        name: calls_flashinfer
        definition: rmsnorm_h64
        language: python
        entry_point: kernel.py::run
        sources: [kernel.py]
        """))
    (folder / "kernel.py").write_text(
        "import flashinfer\n\ndef run(x, w):\n    return flashinfer.norm.rmsnorm(x, w, 1e-5)\n")
    small_ws.record("rmsnorm_h64", "calls_flashinfer", {"batch_size": 4})
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    x, w = torch.randn(4, 64, dtype=BF16), torch.rand(64, dtype=BF16)
    out = flashinfer.rmsnorm(x, w, 1e-5)   # would recurse without the guard
    assert flashinfer.CALLS["rmsnorm"] == 1
    fibuild.disable()
    _close(out, flashinfer.rmsnorm(x, w, 1e-5))


def _paged(B=3, H=8, KV=2, D=16, P=40, lens=(5, 4, 7), ps=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    pages = [-(-n // ps) for n in lens]
    indptr = torch.tensor([0] + list(torch.cumsum(torch.tensor(pages), 0)), dtype=torch.int32)
    indices = torch.randperm(P, generator=g)[:int(indptr[-1])].to(torch.int32)
    last = torch.tensor([n - (p - 1) * ps for n, p in zip(lens, pages)], dtype=torch.int32)
    shape = (P, KV, D) if ps == 1 else (P, ps, KV, D)
    kc = torch.randn(*shape, generator=g).to(BF16)
    vc = torch.randn(*shape, generator=g).to(BF16)
    q = torch.randn(B, H, D, generator=g).to(BF16)
    return q, kc, vc, indptr, indices, last


@pytest.mark.parametrize("ps, name", [(1, "gqa_paged_decode_h8_kv2_d16_ps1"), (4, "gqa_paged_decode_h8_kv2_d16_ps4")])
def test_decode_wrapper_plan_records_structure_and_run_dispatches(flashinfer_stub, small_ws, ps, name):
    q, kc, vc, indptr, indices, last = _paged(ps=ps)
    small_ws.add_counted_solution(name)
    small_ws.record(name, "counted", {"batch_size": 3, "num_pages": 40, "len_indptr": 4,
                                      "num_kv_indices": int(indptr[-1])})
    import flashinfer

    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8), "NHD")
    wrapper.plan(indptr, indices, last, 8, 2, 16, ps, q_data_type=BF16, sm_scale=0.25)
    want_o, want_lse = wrapper.run(q, (kc, vc), return_lse=True)
    fibuild.enable(apply=True, settings=small_ws.settings)
    runs = flashinfer.CALLS["decode.run"]
    wrapper.plan(indptr, indices, last, 8, 2, 16, ps, q_data_type=BF16, sm_scale=0.25)
    ctx = context_of(wrapper)
    assert ctx.reason is None and ctx.counts["num_kv_indices"] == int(indptr[-1])
    for layer in range(3):   # planned once, run per layer
        o, lse = wrapper.run(q, (kc, vc), return_lse=True)
        _close(o, want_o)
        torch.testing.assert_close(lse, want_lse, atol=1e-2, rtol=1e-2)
    assert torch.equal(wrapper.run(q, (kc, vc)), o)   # return_lse=False: the output only
    assert flashinfer.CALLS["decode.run"] == runs
    key = (3, 40, 4, int(indptr[-1]))
    assert len(solution_calls(name, key)) == 4


def test_decode_wrapper_takes_a_query_that_is_a_view_of_fused_qkv(flashinfer_stub, small_ws):
    q, kc, vc, indptr, indices, last = _paged()
    name = "gqa_paged_decode_h8_kv2_d16_ps1"
    small_ws.add_counted_solution(name)
    small_ws.record(name, "counted", {"batch_size": 3, "num_pages": 40, "len_indptr": 4,
                                      "num_kv_indices": int(indptr[-1])})
    import flashinfer

    qkv = torch.cat([q.reshape(3, -1), torch.randn(3, 2 * 2 * 16).to(BF16)], dim=1)
    view = qkv[:, :8 * 16].view(3, 8, 16)  # rows 192 apart: not contiguous
    assert not view.is_contiguous()
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8), "NHD")
    wrapper.plan(indptr, indices, last, 8, 2, 16, 1, q_data_type=BF16)
    want = wrapper.run(view, (kc, vc))
    fibuild.enable(apply=True, settings=small_ws.settings)
    wrapper.plan(indptr, indices, last, 8, 2, 16, 1, q_data_type=BF16)
    runs = flashinfer.CALLS["decode.run"]
    _close(wrapper.run(view, (kc, vc)), want)
    assert flashinfer.CALLS["decode.run"] == runs
    assert len(solution_calls(name, (3, 40, 4, int(indptr[-1])))) == 1


@pytest.mark.parametrize("tensor_cores", [False, True])
def test_flashinfer_decode_of_the_other_kernel_is_substituted(flashinfer_stub, small_ws, tensor_cores):
    """FlashInfer's tensor-core decode resolved as fastest is the original for a wrapper made
    with tensor cores, and a substitute (a different kernel) for one made without."""
    q, kc, vc, indptr, indices, last = _paged()
    name = "gqa_paged_decode_h8_kv2_d16_ps1"
    small_ws.add_counted_solution(name, "flashinfer_tc", flashinfer=True)
    small_ws.record(name, "flashinfer_tc", {"batch_size": 3, "num_pages": 40, "len_indptr": 4,
                                            "num_kv_indices": int(indptr[-1])})
    import flashinfer

    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8), "NHD", use_tensor_cores=tensor_cores)
    fibuild.enable(apply=True, settings=small_ws.settings)
    wrapper.plan(indptr, indices, last, 8, 2, 16, 1, q_data_type=BF16)
    runs = flashinfer.CALLS["decode.run"]
    wrapper.run(q, (kc, vc))
    from fibuild.integrations.activation import active

    assert flashinfer.CALLS["decode.run"] == runs + (1 if tensor_cores else 0)
    assert active().session.substituted.get(name, 0) == (0 if tensor_cores else 1)


def test_decode_wrapper_doubts_go_to_the_original(flashinfer_stub, small_ws):
    q, kc, vc, indptr, indices, last = _paged()
    name = "gqa_paged_decode_h8_kv2_d16_ps1"
    small_ws.add_counted_solution(name)
    small_ws.record(name, "counted", {"batch_size": 3, "num_pages": 40, "len_indptr": 4, "num_kv_indices": 16})
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8), "NHD")
    wrapper.plan(indptr, indices, last, 8, 2, 16, 1, q_data_type=BF16, logits_soft_cap=30.0)
    assert "logits_soft_cap" in context_of(wrapper).reason
    wrapper.run(q, (kc, vc))
    wrapper.plan(indptr, indices, last, 8, 2, 16, 1, q_data_type=BF16, pos_encoding_mode="ROPE_LLAMA")
    wrapper.run(q, (kc, vc))
    wrapper.plan(indptr.long(), indices, last, 8, 2, 16, 1, q_data_type=BF16)
    assert "int32" in context_of(wrapper).reason
    wrapper.run(q, (kc, vc))
    wrapper.plan(indptr, indices, last, 8, 2, 16, 1, q_data_type=BF16)
    combined = torch.stack([kc, vc], 1).unsqueeze(2)             # [pages, 2, page_size, kv, d]
    wrapper.run(q, combined.transpose(0, 1).contiguous().transpose(0, 1))  # not contiguous: never copied
    hnd = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8), "HND")
    hnd.plan(indptr, indices, last, 8, 2, 16, 1, q_data_type=BF16)
    assert "kv_layout" in context_of(hnd).reason
    assert flashinfer.CALLS["decode.run"] == 4
    from fibuild.integrations.activation import active

    assert active().session.substituted == {}   # no call was sent to the solution
    row = fibuild.integrations.stats()["flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper"]
    assert row["calls"] == 4 and row["substituted"] == 0 and row["plans"] == {"plan": 5}
    reasons = "\n".join(row["fallbacks"])
    for words in ("logits_soft_cap", "pos_encoding_mode", "int32", "never copies the cache"):
        assert words in reasons


def test_prefill_wrappers_dispatch(flashinfer_stub, small_ws):
    q, kc, vc, indptr, indices, last = _paged()
    qo = torch.tensor([0, 2, 5, 6], dtype=torch.int32)
    prefill, ragged = "gqa_paged_prefill_causal_h8_kv2_d16_ps1", "gqa_ragged_prefill_causal_h8_kv2_d16"
    small_ws.add_counted_solution(prefill)
    small_ws.record(prefill, "counted", {"total_q": 6, "num_pages": 40, "len_indptr": 4, "num_kv_indices": 16})
    small_ws.add_counted_solution(ragged)
    small_ws.record(ragged, "counted", {"total_q": 6, "total_kv": 12, "len_indptr": 4})
    import flashinfer

    qp = torch.randn(6, 8, 16, dtype=BF16)
    k, v = torch.randn(12, 2, 16, dtype=BF16), torch.randn(12, 2, 16, dtype=BF16)
    kv_indptr = torch.tensor([0, 3, 7, 12], dtype=torch.int32)
    pw = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(8))
    rw = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(8))
    pw.plan(qo, indptr, indices, last, 8, 2, 16, 1, causal=True, q_data_type=BF16)
    rw.plan(qo, kv_indptr, 8, 2, 16, causal=True, q_data_type=BF16)
    want_p, want_r = pw.run(qp, (kc, vc)), rw.run(qp, k, v)
    fibuild.enable(apply=True, settings=small_ws.settings)
    pw.plan(qo, indptr, indices, last, 8, 2, 16, 1, causal=True, q_data_type=BF16)
    rw.plan(qo, kv_indptr, 8, 2, 16, causal=True, q_data_type=BF16)
    _close(pw.run(qp, (kc, vc)), want_p)
    _close(rw.run(qp, k, v), want_r)
    assert len(solution_calls(prefill, (6, 40, 4, 16))) == 1
    assert len(solution_calls(ragged, (6, 12, 4))) == 1
    rw.plan(qo, kv_indptr, 8, 2, 16, causal=False, q_data_type=BF16)
    rw.run(qp, k, v)
    assert flashinfer.CALLS["ragged.run"] == 2   # the reference run above and the non-causal one


def test_a_weight_of_another_dtype_is_not_served_by_the_memo(flashinfer_stub, small_ws):
    small_ws.add_counted_solution("rmsnorm_h64")
    small_ws.record("rmsnorm_h64", "counted", {"batch_size": 4})
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    x = torch.randn(4, 64, dtype=BF16)
    flashinfer.rmsnorm(x, torch.rand(64, dtype=BF16), 1e-5)
    flashinfer.rmsnorm(x, torch.rand(64, dtype=torch.float16), 1e-5)
    assert len(solution_calls("rmsnorm_h64", (4,))) == 1
    assert flashinfer.CALLS["rmsnorm"] == 1

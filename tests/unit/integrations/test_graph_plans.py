"""Plan/run solutions substituted inside a CUDA graph capture of FlashInfer's decode wrapper,
with the capture simulated (``_capturing`` patched) on the stand-in flashinfer: the run
during capture uses the plan made before it, pinned; each later ``plan`` refills that plan in
place, so a replay (the run with the captured arguments) gives the new table's answer; a plan
the captured one cannot follow raises GraphReplanError."""
from __future__ import annotations

import pytest
import torch
from integration_helpers import solution_calls

import fibuild
from fibuild.errors import FibuildError, GraphReplanError
from fibuild.integrations import wrapper_sites

BF16 = torch.bfloat16
NAME = "gqa_paged_decode_h8_kv2_d16_ps1"
POOL = 64


class Engine:
    """Index buffers of fixed size, rewritten in place each step, as SGLang keeps them."""

    def __init__(self, batch=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.g = g
        self.indptr = torch.zeros(batch + 1, dtype=torch.int32)
        self.indices = torch.zeros(POOL, dtype=torch.int32)
        self.last = torch.ones(batch, dtype=torch.int32)
        self.kc = torch.randn(POOL, 2, 16, generator=g).to(BF16)
        self.vc = torch.randn(POOL, 2, 16, generator=g).to(BF16)
        self.q = torch.randn(batch, 8, 16, generator=g).to(BF16)

    def step(self, wrapper, lens, sm_scale=0.25, plan=None):
        """Write a page table for ``lens`` into the buffers, plan ``wrapper`` over them."""
        self.indptr.copy_(torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32))
        n = sum(lens)
        self.indices[:n].copy_(torch.randperm(POOL, generator=self.g)[:n].to(torch.int32))
        self.q.copy_(torch.randn(self.q.shape, generator=self.g).to(BF16))
        (plan or type(wrapper).plan)(wrapper, self.indptr, self.indices[:n], self.last, 8, 2, 16, 1,
                                     q_data_type=BF16, sm_scale=sm_scale)

    def expected(self, lens, sm_scale=0.25):
        """The stand-in FlashInfer's own answer for the table in the buffers now."""
        import flashinfer

        cls = flashinfer.BatchDecodeWithPagedKVCacheWrapper
        ref = cls(torch.empty(8), "NHD")
        cls.plan.__wrapped__(ref, self.indptr, self.indices[:sum(lens)], self.last, 8, 2, 16, 1,
                             q_data_type=BF16, sm_scale=sm_scale)
        return cls.run.__wrapped__(ref, self.q, (self.kc, self.vc), return_lse=True)


def _close(got, want):
    torch.testing.assert_close(got[0].float(), want[0].float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got[1], want[1], atol=2e-2, rtol=2e-2)


def _replay(wrapper):
    """Each captured plan's run with the captured arguments: what a graph replay launches."""
    out = []
    for plan, inputs in type(wrapper).run.fibuild_graphs.captured(wrapper):
        entry = _entry()
        out.append(entry.run(plan, *inputs))
    return out


def _entry():
    from fibuild.integrations.activation import active

    kernel = active().session.kernel(NAME)
    return next(kernel.entry(k) for k in kernel.keys if hasattr(kernel.entry(k), "pin"))


@pytest.fixture
def setup(flashinfer_stub, small_ws, monkeypatch):
    """An enabled integration whose decode runs resolve to the plan/run solution; returns
    (flashinfer, engine, wrapper, capture) where ``capture(on)`` switches the simulation."""
    def make(refill=True):
        small_ws.add_planned_solution(NAME, refill=refill)
        small_ws.record(NAME, "planned", {"batch_size": 3, "num_pages": POOL, "len_indptr": 4, "num_kv_indices": 12})
        import flashinfer

        fibuild.enable(apply=True, settings=small_ws.settings)
        state = {"on": False}
        monkeypatch.setattr(wrapper_sites, "_capturing", lambda: state["on"])
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8), "NHD")
        return flashinfer, Engine(), wrapper, lambda on: state.update(on=on)

    return make


def test_capture_runs_the_pinned_plan_and_each_replan_refills_it(setup):
    flashinfer, eng, wrapper, capture = setup()
    eng.step(wrapper, [5, 4, 3])
    want = eng.expected([5, 4, 3])
    _close(wrapper.run(eng.q, (eng.kc, eng.vc), return_lse=True), want)  # warm-up, eager
    calls = solution_calls(NAME, (3, POOL, 4, 12))
    assert calls == ["plan", "run"]
    originals = flashinfer.CALLS["decode.run"]
    capture(True)
    for _layer in range(2):  # one plan per step, a run per layer
        got = wrapper.run(eng.q, (eng.kc, eng.vc), return_lse=True)
    capture(False)
    assert flashinfer.CALLS["decode.run"] == originals, "the original ran under capture"
    _close(got, want)
    (plan, _), = type(wrapper).run.fibuild_graphs.captured(wrapper)
    assert wrapper_sites.captured_solution(wrapper) == "planned"
    entry = _entry()
    assert entry.pins(plan) >= 1 and calls == ["plan", "run", "run", "run"]
    for lens in ([9, 1, 0], [0, 0, 0], [20, 13, 7], [2, 2, 2]):  # longer, shorter, empty sequences
        eng.step(wrapper, lens)
        assert calls[-1] == "refill" and entry.plans_made == 1
        assert plan.bounds.tolist() == eng.indptr.tolist()
        replayed, = _replay(wrapper)
        _close(replayed, eng.expected(lens))
    # An eager run after the re-plan finds the refilled plan under the new table's key.
    originals = flashinfer.CALLS["decode.run"]
    got = wrapper.run(eng.q, (eng.kc, eng.vc), return_lse=True)
    assert entry.plans_made == 1 and flashinfer.CALLS["decode.run"] == originals
    _close(got, eng.expected([2, 2, 2]))


def test_a_replan_the_captured_plan_cannot_follow_raises(setup):
    flashinfer, eng, wrapper, capture = setup()
    eng.step(wrapper, [5, 4, 3])
    wrapper.run(eng.q, (eng.kc, eng.vc))
    capture(True)
    wrapper.run(eng.q, (eng.kc, eng.vc))
    capture(False)
    api = "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper"
    with pytest.raises(GraphReplanError, match=f"{api}.*cannot be refilled.*batch size") as err:
        wrapper.plan(eng.indptr[:3], eng.indices[:9], eng.last[:2], 8, 2, 16, 1, q_data_type=BF16, sm_scale=0.25)
    assert isinstance(err.value, FibuildError)
    moved = eng.indices.clone()
    with pytest.raises(GraphReplanError, match="kv_indices moved to another buffer"):
        wrapper.plan(eng.indptr, moved[:12], eng.last, 8, 2, 16, 1, q_data_type=BF16, sm_scale=0.25)
    with pytest.raises(GraphReplanError, match="sm_scale changed from 0.25 to 0.5"):
        eng.step(wrapper, [5, 4, 3], sm_scale=0.5)
    with pytest.raises(GraphReplanError, match="fibuild cannot take the new plan.*logits_soft_cap"):
        wrapper.plan(eng.indptr, eng.indices[:12], eng.last, 8, 2, 16, 1, q_data_type=BF16, logits_soft_cap=5.0)
    # After a refused plan the eager runs take the original (FlashInfer's plan did run).
    want = eng.expected([5, 4, 3])
    before = flashinfer.CALLS["decode.run"]
    _close(wrapper.run(eng.q, (eng.kc, eng.vc), return_lse=True), want)
    assert flashinfer.CALLS["decode.run"] == before + 1
    # Once the engine dropped its graphs, plans are free again.
    (plan, _), = type(wrapper).run.fibuild_graphs.captured(wrapper)
    wrapper_sites.release_graphs(wrapper)
    assert _entry().pins(plan) == 0
    wrapper.plan(eng.indptr[:3], eng.indices[:9], eng.last[:2], 8, 2, 16, 1, q_data_type=BF16, sm_scale=0.25)


def test_plan_prepares_the_next_plan_so_a_capture_needs_no_warm_up(setup):
    flashinfer, eng, wrapper, capture = setup()
    eng.step(wrapper, [5, 4, 3])
    wrapper.run(eng.q, (eng.kc, eng.vc))  # one eager step: the wrapper's runs are plan/run ones
    entry = _entry()
    eng.step(wrapper, [7, 6, 2])          # planned now, outside any capture
    assert entry.plans_made == 2
    originals = flashinfer.CALLS["decode.run"]
    capture(True)
    got = wrapper.run(eng.q, (eng.kc, eng.vc), return_lse=True)  # the first run of this plan
    capture(False)
    assert entry.plans_made == 2 and flashinfer.CALLS["decode.run"] == originals
    _close(got, eng.expected([7, 6, 2]))
    assert len(type(wrapper).run.fibuild_graphs.captured(wrapper)) == 1


def test_without_a_plan_made_before_capture_the_original_is_captured(setup):
    flashinfer, eng, wrapper, capture = setup()
    eng.step(wrapper, [5, 4, 3])
    want = eng.expected([5, 4, 3])
    before = flashinfer.CALLS["decode.run"]
    capture(True)
    got = wrapper.run(eng.q, (eng.kc, eng.vc), return_lse=True)  # fresh wrapper, no warm-up
    capture(False)
    assert flashinfer.CALLS["decode.run"] == before + 1
    _close(got, want)
    assert type(wrapper).run.fibuild_graphs.captured(wrapper) == []
    eng.step(wrapper, [1, 2, 3])  # nothing captured: nothing to refill, no error


def test_a_plan_without_refill_leaves_the_capture_to_the_original(setup):
    flashinfer, eng, wrapper, capture = setup(refill=False)
    eng.step(wrapper, [5, 4, 3])
    wrapper.run(eng.q, (eng.kc, eng.vc))  # eager: the plan/run solution
    assert solution_calls(NAME, (3, POOL, 4, 12)) == ["plan", "run"]
    want = eng.expected([5, 4, 3])
    before = flashinfer.CALLS["decode.run"]
    capture(True)
    got = wrapper.run(eng.q, (eng.kc, eng.vc), return_lse=True)
    capture(False)
    assert flashinfer.CALLS["decode.run"] == before + 1
    _close(got, want)
    assert type(wrapper).run.fibuild_graphs.captured(wrapper) == []
    assert wrapper_sites.captured_solution(wrapper) is None
    eng.step(wrapper, [9, 1, 1])  # a later plan is fine: the graph holds FlashInfer's run

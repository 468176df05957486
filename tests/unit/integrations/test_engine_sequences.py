"""The engines' own FlashInfer call sequences, replayed against the stand-in flashinfer.

Each test follows one engine's source, cited where it is lifted from:

- SGLang 0.5.23 ``python/sglang/srt/layers/attention/flashinfer_backend.py``:
  ``_create_decode_wrappers`` (l. 1142-1155: CUDA-graph wrappers over fixed buffers),
  ``init_forward_metadata_out_graph`` (l. 840-846: after the first ``begin_forward`` of a
  capture, ``w.begin_forward = partial(fast_decode_plan, w)``), the decode
  ``call_begin_forward`` (l. 1766-1873: indptr and indices written in place, the indices
  buffer passed max-sized, ``global_override_indptr_cpu`` to the fast plan),
  ``forward_decode`` (l. 1566-1574: ``forward(q, kv, sm_scale=, logits_soft_cap=, k_scale=,
  v_scale=)``), ``forward_extend`` (l. 1416-1500: ragged ``forward`` / ``forward_return_lse``
  causal, paged ``forward_return_lse`` causal=False for the prefix) and the prefill
  ``call_begin_forward`` (l. 2297-2304: ragged ``begin_forward(qo_indptr, qo_indptr, ...)``).
- vLLM 0.34.0 ``vllm/v1/attention/backends/flashinfer.py``: ``_get_decode_wrapper``
  (l. 1486-1535: one CUDA-graph wrapper per batch size over slices of shared buffers, the
  indices buffer max-sized, tensor cores), the decode metadata build (l. 1980-2033: CPU
  indptr and last-page lengths, ``seq_lens``), ``fast_plan_decode`` (l. 2890-2987: the
  first call ``self.plan(...)``, later ones FlashInfer's ``fast_decode_plan`` bound by
  ``from flashinfer.decode import fast_decode_plan``), and the decode run (l. 2666-2675:
  ``run(q, kv, q_scale=, k_scale=, v_scale=, out=, kv_cache_sf=, sinks=)``).
- FlashInfer 0.7.2 ``flashinfer/decode.py``: ``begin_forward = plan`` (l. 2639),
  ``forward`` (l. 2641-2665), ``run_return_lse = partialmethod(run, return_lse=True)``
  (l. 3352), ``fast_decode_plan`` (l. 4797-5040), which the stand-in mirrors.

CUDA-graph capture is simulated as in test_graph_plans.py; a replay is the captured plan's
run with the captured arguments. The same sequences run with the real flashinfer on a GPU
in tests/gpu/test_engine_sequences_gpu.py.
"""
from __future__ import annotations

import functools
import sys
import types

import pytest
import torch
from integration_helpers import solution_calls

import fibuild
import fibuild.integrations
from fibuild.errors import GraphReplanError
from fibuild.integrations import wrapper_sites

BF16 = torch.bfloat16
DECODE = "gqa_paged_decode_h8_kv2_d16_ps1"
API = "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper"
POOL = 64
SCALING = 0.25   # layer.scaling: passed to forward(), never to begin_forward()


class Pool:
    """A token pool (page size 1), as SGLang's token_to_kv_pool: per layer K and V [tokens, kv, d]."""

    def __init__(self, layers=2, seed=0):
        self.g = torch.Generator().manual_seed(seed)
        self.k = [torch.randn(POOL, 2, 16, generator=self.g).to(BF16) for _ in range(layers)]
        self.v = [torch.randn(POOL, 2, 16, generator=self.g).to(BF16) for _ in range(layers)]

    def table(self, lens):
        indptr = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        return indptr, torch.randperm(POOL, generator=self.g)[:sum(lens)].to(torch.int32)

    def query(self, batch):
        return torch.randn(batch, 8 * 16, generator=self.g).to(BF16)


def expected(wrapper_cls, indptr, indices, q, k, v, sm_scale=SCALING):
    """The stand-in FlashInfer's own (unpatched) answer."""
    ref = wrapper_cls(torch.empty(8), "NHD")
    wrapper_cls.plan.__wrapped__(ref, indptr, indices, torch.ones(len(indptr) - 1, dtype=torch.int32), 8, 2, 16, 1,
                                 sm_scale=sm_scale)
    return wrapper_cls.run.__wrapped__(ref, q.view(-1, 8, 16), (k, v))


def _close(a, b):
    torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


class SGLangDecode:
    """SGLang's decode attention backend in CUDA-graph mode, reduced to its FlashInfer calls."""

    def __init__(self, flashinfer, batch, max_tokens=POOL):
        self.fi = flashinfer
        self.kv_indptr = torch.zeros(batch + 1, dtype=torch.int32)
        self.kv_indices = torch.zeros(max_tokens, dtype=torch.int32)
        self.kv_last_page_len = torch.ones(batch, dtype=torch.int32)
        self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            torch.empty(8), "NHD", use_cuda_graph=True, use_tensor_cores=False,
            paged_kv_indptr_buffer=self.kv_indptr, paged_kv_indices_buffer=self.kv_indices,
            paged_kv_last_page_len_buffer=self.kv_last_page_len)

    def call_begin_forward(self, indptr, indices, lens):
        w = self.wrapper
        self.kv_indptr[1:].copy_(indptr[1:])           # kv_indptr[1:bs+1] = cumsum(...)
        w._paged_kv_indices_buf[:len(indices)].copy_(indices)  # written straight into the graph buffer
        fast = getattr(w.begin_forward, "func", None) is self.fi.fast_decode_plan
        extra = {"global_override_indptr_cpu": indptr.clone()} if fast else {}
        w.begin_forward(self.kv_indptr, w._paged_kv_indices_buf, self.kv_last_page_len, 8, 2, 16, 1,
                        data_type=BF16, q_data_type=BF16, non_blocking=True, fixed_split_size=None,
                        disable_split_kv=False, **extra)

    def install_fast_plan(self):
        self.wrapper.begin_forward = functools.partial(self.fi.fast_decode_plan, self.wrapper)

    def forward_decode(self, q, k, v):
        return self.wrapper.forward(q.contiguous().view(-1, 8, 16), (k, v), sm_scale=SCALING,
                                    logits_soft_cap=0.0, k_scale=None, v_scale=None)


def _replays(wrapper):
    """What each captured fibuild plan computes when its graph is replayed now."""
    out = []
    for plan, inputs in type(wrapper).run.fibuild_graphs.captured(wrapper):
        out.append(_planned_entry().run(plan, *inputs)[0])
    return out


def _planned_entry():
    from fibuild.integrations.activation import active

    kernel = active().session.kernel(DECODE)
    return next(kernel.entry(k) for k in kernel.keys if hasattr(kernel.entry(k), "pin"))


@pytest.fixture
def capture(monkeypatch):
    state = {"on": False}
    monkeypatch.setattr(wrapper_sites, "_capturing", lambda: state["on"])
    return lambda on: state.update(on=on)


def _planned_ws(small_ws, batch=3):
    small_ws.add_planned_solution(DECODE)
    small_ws.record(DECODE, "planned", {"batch_size": batch, "num_pages": POOL, "len_indptr": batch + 1,
                                        "num_kv_indices": 12})


def test_sglang_decode_graph_replays_follow_fast_decode_plan(flashinfer_stub, small_ws, capture):
    _planned_ws(small_ws)
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    pool, eng = Pool(), SGLangDecode(flashinfer, 3)
    cls = flashinfer.BatchDecodeWithPagedKVCacheWrapper
    indptr, indices = pool.table([5, 4, 3])
    eng.call_begin_forward(indptr, indices, [5, 4, 3])   # the capture's first plan: begin_forward = plan
    eng.install_fast_plan()                              # then SGLang swaps in the fast plan
    q = pool.query(3)
    for layer in range(2):                               # warm-up runs, eager
        _close(eng.forward_decode(q, pool.k[layer], pool.v[layer]),
               expected(cls, indptr, indices, q, pool.k[layer], pool.v[layer]))
    runs = flashinfer.CALLS["decode.run"]
    capture(True)
    for layer in range(2):
        eng.forward_decode(q, pool.k[layer], pool.v[layer])
    capture(False)
    assert flashinfer.CALLS["decode.run"] == runs, "FlashInfer's run was captured, not fibuild's"
    assert wrapper_sites.captured_solution(eng.wrapper) == "planned"
    for lens in ([9, 1, 7], [1, 1, 1], [20, 13, 7], [3, 0, 2]):   # lengths change every step
        indptr, indices = pool.table(lens)
        eng.call_begin_forward(indptr, indices, lens)             # partial(fast_decode_plan, w): refills
        assert solution_calls(DECODE, (3, POOL, 4, 12))[-1] == "refill"
        for layer, got in enumerate(_replays(eng.wrapper)):
            _close(got, expected(cls, indptr, indices, q, pool.k[layer], pool.v[layer]))
    row = fibuild.integrations.stats()[API]
    assert row["plans"] == {"begin_forward": 1, "fast_decode_plan": 4}
    assert row["substituted"] == 4 and row["fallbacks"] == {}


def test_a_planted_stale_plan_raises_or_leaves_the_capture_to_flashinfer(flashinfer_stub, small_ws, capture):
    """An engine's planner that fibuild does not see (a partial of the unpatched
    fast_decode_plan, made before enable): planted before the capture, the original run is
    captured (FlashInfer refreshes its own plan); planted after it, the next run or plan
    raises GraphReplanError instead of replaying a stale plan."""
    _planned_ws(small_ws)
    import flashinfer

    unpatched = flashinfer.fast_decode_plan   # bound before fibuild was enabled
    fibuild.enable(apply=True, settings=small_ws.settings)
    assert flashinfer.fast_decode_plan is not unpatched and flashinfer.decode.fast_decode_plan is not unpatched
    pool = Pool()
    indptr, indices = pool.table([5, 4, 3])
    q = pool.query(3)

    # Planted before the capture: the capture takes FlashInfer's run, every replay is right.
    eng = SGLangDecode(flashinfer, 3)
    eng.call_begin_forward(indptr, indices, [5, 4, 3])
    eng.forward_decode(q, pool.k[0], pool.v[0])              # eager: fibuild's plan/run solution
    eng.wrapper.begin_forward = functools.partial(unpatched, eng.wrapper)
    eng.call_begin_forward(indptr, indices, [5, 4, 3])       # unseen: this run is the original's
    runs = flashinfer.CALLS["decode.run"]
    eng.forward_decode(q, pool.k[0], pool.v[0])
    assert flashinfer.CALLS["decode.run"] == runs + 1
    capture(True)
    eng.forward_decode(q, pool.k[0], pool.v[0])
    capture(False)
    assert flashinfer.CALLS["decode.run"] == runs + 2 and wrapper_sites.captured_solution(eng.wrapper) is None
    row = fibuild.integrations.stats()[API]
    assert row["plans"]["unseen"] == 1
    assert any("does not see" in reason for reason in row["fallbacks"])

    # Planted after the capture: the stale graph is reported, never replayed silently.
    eng2 = SGLangDecode(flashinfer, 3)
    eng2.call_begin_forward(indptr, indices, [5, 4, 3])
    eng2.install_fast_plan()
    eng2.forward_decode(q, pool.k[0], pool.v[0])
    capture(True)
    eng2.forward_decode(q, pool.k[0], pool.v[0])
    capture(False)
    assert wrapper_sites.captured_solution(eng2.wrapper) == "planned"
    unpatched(eng2.wrapper, eng2.kv_indptr, eng2.kv_indices, eng2.kv_last_page_len, 8, 2, 16, 1)
    with pytest.raises(GraphReplanError, match="planned again by a path fibuild does not see"):
        eng2.forward_decode(q, pool.k[0], pool.v[0])
    unpatched(eng2.wrapper, eng2.kv_indptr, eng2.kv_indices, eng2.kv_last_page_len, 8, 2, 16, 1)
    with pytest.raises(GraphReplanError, match="a plan fibuild did not see ran since the capture"):
        eng2.call_begin_forward(indptr, indices, [5, 4, 3])


def test_sglang_decode_eager_begin_forward_and_forward(flashinfer_stub, small_ws):
    small_ws.add_counted_solution(DECODE)
    small_ws.record(DECODE, "counted", {"batch_size": 3, "num_pages": POOL, "len_indptr": 4, "num_kv_indices": 12})
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    pool, cls = Pool(), flashinfer.BatchDecodeWithPagedKVCacheWrapper
    wrapper = cls(torch.empty(8), "NHD", use_tensor_cores=False)
    for lens in ([5, 4, 3], [6, 5, 4]):
        indptr, indices = pool.table(lens)
        wrapper.begin_forward(indptr, indices, torch.ones(3, dtype=torch.int32), 8, 2, 16, 1,
                              data_type=BF16, q_data_type=BF16, non_blocking=True)
        q = pool.query(3)
        for layer in range(2):
            got = wrapper.forward(q.view(-1, 8, 16), (pool.k[layer], pool.v[layer]), sm_scale=SCALING,
                                  logits_soft_cap=0.0, k_scale=None, v_scale=None)
            _close(got, expected(cls, indptr, indices, q, pool.k[layer], pool.v[layer]))
        o, lse = wrapper.forward_return_lse(q.view(-1, 8, 16), (pool.k[0], pool.v[0]), sm_scale=SCALING)
        o2, lse2 = wrapper.run_return_lse(q.view(-1, 8, 16), (pool.k[0], pool.v[0]))
        assert torch.equal(o, o2) and torch.equal(lse, lse2)
    assert flashinfer.CALLS["decode.run"] == 2 * 2  # only the reference runs in expected()
    row = fibuild.integrations.stats()[API]
    assert row == {"calls": 8, "substituted": 8, "original": 0, "fallbacks": {}, "plans": {"begin_forward": 2}}


class VLLMDecode:
    """vLLM v1's FlashInfer decode metadata builder and run, reduced to its FlashInfer calls;
    ``backend`` is a module that bound ``fast_decode_plan`` at import, as vLLM's does."""

    def __init__(self, flashinfer, backend, max_batch=4):
        self.fi, self.backend = flashinfer, backend
        self.indptr_gpu = torch.zeros(max_batch + 1, dtype=torch.int32)
        self.indices = torch.zeros(POOL, dtype=torch.int32)       # max-sized, shared by every wrapper
        self.last_gpu = torch.ones(max_batch, dtype=torch.int32)
        self.wrappers = {}

    def wrapper(self, batch):
        if batch not in self.wrappers:
            self.wrappers[batch] = self.fi.BatchDecodeWithPagedKVCacheWrapper(
                torch.empty(8), "NHD", use_cuda_graph=True, use_tensor_cores=True,
                paged_kv_indptr_buffer=self.indptr_gpu[:batch + 1], paged_kv_indices_buffer=self.indices,
                paged_kv_last_page_len_buffer=self.last_gpu[:batch])
        return self.wrappers[batch]

    def fast_plan_decode(self, w, indptr_cpu, last_cpu):
        kwargs = dict(indices=self.indices, num_qo_heads=8, num_kv_heads=2, head_dim=16, page_size=1,
                      pos_encoding_mode="NONE", sm_scale=SCALING, window_left=-1, logits_soft_cap=None,
                      q_data_type=BF16, kv_data_type=BF16, fixed_split_size=-1, disable_split_kv=False,
                      q_len_per_req=1)
        if getattr(w, "vllm_first_call", True):
            w.plan(indptr=indptr_cpu, last_page_len=last_cpu, o_data_type=BF16, block_tables=None,
                   seq_lens=indptr_cpu[1:] - indptr_cpu[:-1], **kwargs)
            w.vllm_first_call = False
            return
        self.backend.fast_decode_plan(w, indptr=indptr_cpu, last_page_len=last_cpu, **kwargs)

    def step(self, indptr, indices):
        batch = len(indptr) - 1
        self.indptr_gpu[:batch + 1].copy_(indptr)              # CpuGpuBuffer.copy_to_gpu
        self.indices[:len(indices)].copy_(indices)
        w = self.wrapper(batch)
        self.fast_plan_decode(w, indptr.clone(), torch.ones(batch, dtype=torch.int32))
        return w

    def run(self, w, q, kv, out):
        w.run(q.view(-1, 8, 16), kv, q_scale=None, k_scale=None, v_scale=None, out=out, kv_cache_sf=None, sinks=None)
        return out


def test_vllm_decode_cpu_indptr_max_sized_buffers_out_and_combined_cache(flashinfer_stub, small_ws):
    """vLLM's decode: CPU indptr, indices in a max-sized buffer shared by the wrappers, out=,
    and the KV cache as one combined tensor per layer, whose halves are taken as dense views of
    it (2 * pages - 1 rows each) with the page indices doubled at each plan."""
    small_ws.add_counted_solution(DECODE)
    small_ws.record(DECODE, "counted", {"batch_size": 3, "num_pages": POOL, "len_indptr": 4, "num_kv_indices": 12})
    import flashinfer

    backend = types.ModuleType("engine_attention_backend")
    exec("from flashinfer.decode import fast_decode_plan", backend.__dict__)  # bound before enable
    sys.modules[backend.__name__] = backend
    try:
        fibuild.enable(apply=True, settings=small_ws.settings)
        assert backend.fast_decode_plan is flashinfer.decode.fast_decode_plan   # replaced there too
        pool, cls, eng = Pool(), flashinfer.BatchDecodeWithPagedKVCacheWrapper, VLLMDecode(flashinfer, backend)
        for lens in ([5, 4, 3], [6, 5, 4], [1, 9, 2]):
            indptr, indices = pool.table(lens)
            w = eng.step(indptr, indices)
            q = pool.query(3)
            for layer in range(2):
                combined = torch.stack([pool.k[layer], pool.v[layer]], 1).unsqueeze(2)  # [pages, 2, ps, kv, d]
                out = torch.empty(3, 8, 16, dtype=BF16)
                assert eng.run(w, q, combined, out) is out
                _close(out, expected(cls, indptr, indices, q, pool.k[layer], pool.v[layer]))
        row = fibuild.integrations.stats()[API]
        assert row["plans"] == {"plan": 1, "fast_decode_plan": 2}
        assert row["substituted"] == row["calls"] == 6 and not row["fallbacks"]
        assert flashinfer.CALLS["decode.run"] == 6   # only the references in expected()
    finally:
        del sys.modules[backend.__name__]


def test_sglang_extend_ragged_and_paged_prefix(flashinfer_stub, small_ws):
    ragged, paged = "gqa_ragged_prefill_causal_h8_kv2_d16", "gqa_paged_prefill_causal_h8_kv2_d16_ps1"
    small_ws.add_counted_solution(ragged)
    small_ws.record(ragged, "counted", {"total_q": 6, "total_kv": 6, "len_indptr": 4})
    small_ws.add_counted_solution(paged)
    small_ws.record(paged, "counted", {"total_q": 6, "num_pages": POOL, "len_indptr": 4, "num_kv_indices": 10})
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    pool = Pool()
    qo = torch.tensor([0, 2, 5, 6], dtype=torch.int32)
    rw = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(8), "NHD")
    pw = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(8), "NHD")
    rw.begin_forward(qo, qo, 8, 2, 16, q_data_type=BF16)
    kv_indptr, kv_indices = pool.table([4, 3, 3])  # each sequence holds at least its new tokens
    pw.begin_forward(qo, kv_indptr, kv_indices, torch.ones(3, dtype=torch.int32), 8, 2, 16, 1,
                     q_data_type=BF16, kv_data_type=BF16, custom_mask=None, non_blocking=True,
                     fixed_split_size=None, prefix_len_ptr=None, token_pos_in_items_ptr=None,
                     token_pos_in_items_len=0, max_item_len_ptr=None)
    q = torch.randn(6, 8, 16).to(BF16)
    k, v = torch.randn(6, 2, 16).to(BF16), torch.randn(6, 2, 16).to(BF16)
    o = rw.forward(q, k, v, causal=True, sm_scale=SCALING, logits_soft_cap=0.0)            # extend_no_prefix
    o1, s1 = rw.forward_return_lse(q, k, v, causal=True, sm_scale=SCALING, window_left=-1, logits_soft_cap=0.0)
    o2, s2 = pw.forward_return_lse(q, (pool.k[0], pool.v[0]), causal=False, sm_scale=SCALING, window_left=-1,
                                   logits_soft_cap=0.0, k_scale=None, v_scale=None)
    o3 = pw.forward(q, (pool.k[0], pool.v[0]), causal=True, sm_scale=SCALING, window_left=-1, logits_soft_cap=0.0)
    assert torch.equal(o, o1)
    assert len(solution_calls(ragged, (6, 6, 4))) == 2 and len(solution_calls(paged, (6, POOL, 4, 10))) == 1
    fibuild.disable()
    rw.plan(qo, qo, 8, 2, 16, causal=True, sm_scale=SCALING)
    pw.plan(qo, kv_indptr, kv_indices, torch.ones(3, dtype=torch.int32), 8, 2, 16, 1, sm_scale=SCALING, causal=True)
    _close(o1, rw.run(q, k, v))
    _close(o3, pw.run(q, (pool.k[0], pool.v[0])))
    stats = fibuild.integrations.stats()
    assert stats["flashinfer.prefill.BatchPrefillWithRaggedKVCacheWrapper"]["substituted"] == 2
    paged_row = stats["flashinfer.prefill.BatchPrefillWithPagedKVCacheWrapper"]
    assert paged_row["substituted"] == 1 and paged_row["fallbacks"] == {"causal=False (the definitions are causal)": 1}


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_trace_records_the_shapes_each_engine_called(flashinfer_stub, tmp_path, engine):
    import flashinfer

    root = tmp_path / "ws"
    (root / "defs").mkdir(parents=True)
    backend = types.SimpleNamespace()
    fibuild.enable(trace=True, root=root)
    backend.fast_decode_plan = flashinfer.decode.fast_decode_plan
    pool = Pool()
    q = pool.query(3)
    combined = torch.stack([pool.k[0], pool.v[0]], 1).unsqueeze(2)
    if engine == "sglang":
        eng = SGLangDecode(flashinfer, 3)
        for step, lens in enumerate(([5, 4, 3], [9, 9, 9])):
            indptr, indices = pool.table(lens)
            eng.call_begin_forward(indptr, indices, lens)
            if not step:
                eng.install_fast_plan()
            eng.forward_decode(q, pool.k[0], pool.v[0])
    else:
        eng = VLLMDecode(flashinfer, backend)
        for lens in ([5, 4, 3], [9, 9, 9]):
            w = eng.step(*pool.table(lens))
            eng.run(w, q, combined, torch.empty(3, 8, 16, dtype=BF16))
    fibuild.disable()
    from fibuild.spec.workspace import Workspace

    assert Workspace(root).definition(DECODE).name == DECODE   # made from the template by the traced call
    lines = (root / "registry" / DECODE / "workloads.jsonl").read_text().splitlines()
    assert {(ln.count('"num_kv_indices":12'), ln.count('"num_kv_indices":27')) for ln in lines} == {(1, 0), (0, 1)}
    row = fibuild.integrations.stats()[API]
    assert row["calls"] == row["original"] == 2 and sum(row["plans"].values()) == 2


def test_vllm_combined_cache_in_a_graph_follows_every_plan(flashinfer_stub, small_ws, capture):
    """A captured run over the combined KV tensor reads the doubled page indices from a buffer
    each later fast_decode_plan rewrites (and the plan/run solution's plan is refilled), so
    every replay answers for that step's page table."""
    _planned_ws(small_ws)
    import flashinfer

    backend = types.SimpleNamespace(fast_decode_plan=None)
    fibuild.enable(apply=True, settings=small_ws.settings)
    backend.fast_decode_plan = flashinfer.decode.fast_decode_plan
    pool, cls, eng = Pool(), flashinfer.BatchDecodeWithPagedKVCacheWrapper, VLLMDecode(flashinfer, backend)
    combined = torch.stack([pool.k[0], pool.v[0]], 1).unsqueeze(2)
    indptr, indices = pool.table([5, 4, 3])
    w = eng.step(indptr, indices)
    q = pool.query(3)
    out = torch.empty(3, 8, 16, dtype=BF16)
    _close(eng.run(w, q, combined, out), expected(cls, indptr, indices, q, pool.k[0], pool.v[0]))  # warm-up
    eng.step(indptr, indices)     # the next plan (fast_decode_plan) prepares the plan the capture takes
    capture(True)
    eng.run(w, q, combined, out)
    capture(False)
    assert wrapper_sites.captured_solution(w) == "planned"
    for lens in ([9, 1, 7], [20, 13, 7], [3, 0, 2]):
        indptr, indices = pool.table(lens)
        eng.step(indptr, indices)
        (got,) = _replays(w)
        _close(got, expected(cls, indptr, indices, q, pool.k[0], pool.v[0]))
    row = fibuild.integrations.stats()[API]
    assert row["plans"] == {"plan": 1, "fast_decode_plan": 4} and not row["fallbacks"], row

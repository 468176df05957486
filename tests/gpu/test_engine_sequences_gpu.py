"""The engines' decode call sequences with the real flashinfer-python inside CUDA graphs.

SGLang 0.5.23 (``srt/layers/attention/flashinfer_backend.py`` l. 840-846, 1142-1155,
1766-1873, 1566-1574): CUDA-graph wrappers over fixed buffers, the capture's first plan
through ``begin_forward``, then ``w.begin_forward = partial(fast_decode_plan, w)`` for every
replay, runs through the deprecated ``forward(q, kv, sm_scale=...)``. vLLM 0.34.0
(``v1/attention/backends/flashinfer.py`` l. 1486-1535, 1980-2033, 2890-2987, 2666-2675): one
wrapper per batch size, CPU indptr and last-page lengths, the first plan through ``plan``
and the next ones through FlashInfer's ``fast_decode_plan``, one combined KV tensor
``[pages, 2, page_size, kv_heads, head_dim]`` (fibuild's kernel reads it through dense views
with doubled page indices, rewritten at each plan), ``run(..., out=)``.
The sequence lengths change at every step; every replay is checked against attention
computed in torch (fp32) from the page table of that step.
"""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
try:
    import flashinfer
except ImportError:
    flashinfer = None

import fibuild  # noqa: E402
import fibuild.integrations  # noqa: E402
from fibuild.integrations.wrapper_sites import captured_solution  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(flashinfer is None, reason="needs flashinfer-python")]

from test_integrations_gpu import _record_cuda, ws  # noqa: E402,F401  (ws: the fixture)

BF16 = torch.bfloat16
NAME = "gqa_paged_decode_h32_kv8_d128_ps1"
VARIANT = "triton_split_kv[MERGE=fused,WAVES=4,CHUNK=128,BLOCK_N=64,STAGES=3]"
API = "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper"
BATCH, POOL, SCALE = 4, 8192, 0.0883883  # sm_scale as a model passes it (1 / sqrt(128), rounded)
STEPS = ([300, 50, 1000, 7], [1000, 1, 600, 2000], [5, 5, 5, 5], [2000, 2000, 10, 300], [64, 0, 129, 1],
         [1500, 700, 3, 900])


def torch_decode(q, k, v, indptr, indices, sm_scale):
    """Attention of each sequence in fp32 from the page table (host copies)."""
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    bounds = indptr.tolist()
    for b in range(q.shape[0]):
        s, e = bounds[b], bounds[b + 1]
        if s == e:
            continue
        rows = indices[s:e].long()
        keys, values = k[rows].float(), v[rows].float()                  # [n, 8, 128]
        scores = torch.einsum("hgd,nhd->hgn", q[b].float().view(8, 4, 128), keys) * sm_scale
        out[b] = torch.einsum("hgn,nhd->hgd", scores.softmax(-1), values).reshape(32, 128)
    return out


class Engine:
    """Fixed buffers and a page table rewritten in place each step, as both engines keep them."""

    def __init__(self):
        self.g = torch.Generator(device="cuda").manual_seed(0)
        self.k = torch.randn(POOL, 8, 128, dtype=BF16, device="cuda", generator=self.g)
        self.v = torch.randn(POOL, 8, 128, dtype=BF16, device="cuda", generator=self.g)
        self.q = torch.empty(BATCH, 32, 128, dtype=BF16, device="cuda")
        self.indptr = torch.zeros(BATCH + 1, dtype=torch.int32, device="cuda")
        self.indices = torch.zeros(POOL, dtype=torch.int32, device="cuda")
        self.last = torch.ones(BATCH, dtype=torch.int32, device="cuda")
        self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            torch.empty(128 << 20, dtype=torch.uint8, device="cuda"), "NHD", use_cuda_graph=True,
            use_tensor_cores=True, paged_kv_indptr_buffer=self.indptr, paged_kv_indices_buffer=self.indices,
            paged_kv_last_page_len_buffer=self.last)
        self.host = None

    def write(self, lens):
        self.host = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        self.indptr.copy_(self.host)
        n = sum(lens)
        self.indices[:n].copy_(torch.randperm(POOL, device="cuda", generator=self.g)[:n].to(torch.int32))
        self.q.copy_(torch.randn(self.q.shape, dtype=BF16, device="cuda", generator=self.g))

    def want(self):
        return torch_decode(self.q, self.k, self.v, self.host, self.indices, SCALE)


class SGLang(Engine):
    def plan(self, lens, fast):
        self.write(lens)
        w = self.wrapper
        extra = {"global_override_indptr_cpu": self.host.clone()} if fast else {}
        w.begin_forward(self.indptr, w._paged_kv_indices_buf, self.last, 32, 8, 128, 1, data_type=BF16,
                        q_data_type=BF16, non_blocking=True, fixed_split_size=None, disable_split_kv=False, **extra)

    def after_first_plan(self, planner):
        self.wrapper.begin_forward = functools.partial(planner, self.wrapper)

    def run(self):
        return self.wrapper.forward(self.q, (self.k, self.v), sm_scale=SCALE, logits_soft_cap=0.0,
                                    k_scale=None, v_scale=None)


class VLLM(Engine):
    def __init__(self):
        super().__init__()
        self.out = torch.empty(BATCH, 32, 128, dtype=BF16, device="cuda")
        self.first = True
        # one [pages, 2, page_size, kv_heads, head_dim] tensor, as vLLM keeps a layer's cache
        self.kv = torch.stack([self.k, self.v], 1).unsqueeze(2)
        self.k, self.v = self.kv[:, 0, 0], self.kv[:, 1, 0]

    def plan(self, lens, fast):
        self.write(lens)
        kwargs = dict(indices=self.indices, num_qo_heads=32, num_kv_heads=8, head_dim=128, page_size=1,
                      pos_encoding_mode="NONE", sm_scale=SCALE, window_left=-1, logits_soft_cap=None,
                      q_data_type=BF16, kv_data_type=BF16, fixed_split_size=-1, disable_split_kv=False,
                      q_len_per_req=1)
        last = torch.ones(BATCH, dtype=torch.int32)
        if self.first:
            self.wrapper.plan(indptr=self.host.clone(), last_page_len=last, o_data_type=BF16, block_tables=None,
                              seq_lens=self.host[1:] - self.host[:-1], **kwargs)
            self.first = False
        else:
            self.planner(self.wrapper, indptr=self.host.clone(), last_page_len=last, **kwargs)

    def after_first_plan(self, planner):
        self.planner = planner

    def run(self):
        self.wrapper.run(self.q, self.kv, q_scale=None, k_scale=None, v_scale=None, out=self.out,
                         kv_cache_sf=None, sinks=None)
        return self.out


@pytest.mark.parametrize("engine, seen", [(SGLang, True), (VLLM, True), (SGLang, False)],
                         ids=["sglang", "vllm", "sglang-planted-unseen-planner"])
def test_graph_replays_follow_fast_decode_plan(ws, engine, seen):  # noqa: F811 - ws: the imported fixture
    """Seen planner: fibuild's Triton split-KV plan is captured and refilled at every
    fast_decode_plan. A planner fibuild does not see planted on the instance (a partial of the
    unpatched function, as made before enable): FlashInfer's own run is captured. Either way
    every replay is right."""
    shipped = Path(__file__).resolve().parents[2] / "solutions" / NAME / "triton_split_kv"
    shutil.copytree(shipped, ws.root / "solutions" / NAME / "triton_split_kv")
    shutil.copytree(shipped.parents[1] / "_lib", ws.root / "solutions" / "_lib")  # the libraries it names
    _record_cuda(ws, NAME, {"batch_size": BATCH, "num_pages": POOL, "len_indptr": BATCH + 1,
                            "num_kv_indices": 2048}, solution=VARIANT)
    unpatched = flashinfer.decode.fast_decode_plan
    fibuild.enable(apply=True, settings=ws.settings)
    eng = engine()
    eng.plan(STEPS[0], fast=False)
    eng.after_first_plan(flashinfer.decode.fast_decode_plan if seen else unpatched)
    got = eng.run()                                   # eager warm-up: decides, plans, compiles
    torch.testing.assert_close(got.float(), eng.want(), atol=2e-2, rtol=2e-2)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = eng.run()
    assert captured_solution(eng.wrapper) == (VARIANT if seen else None)
    for lens in STEPS[1:] + STEPS[:1]:
        eng.plan(lens, fast=True)
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out.float(), eng.want(), atol=2e-2, rtol=2e-2, msg=f"lengths {lens}")
    row = fibuild.integrations.stats()[API]
    planned = row["plans"].get("fast_decode_plan", 0)
    assert planned == (len(STEPS) if seen else 0), row
    if seen:
        assert row["substituted"] >= 2 and not row["fallbacks"], row
    else:
        assert row["fallbacks"].get("CUDA graph capture: the original was captured") == 1, row
    del graph

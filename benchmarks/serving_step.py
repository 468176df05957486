"""A Llama-3.1-8B-shaped decode step, called the way an engine calls its kernels, run plain,
traced (FIBUILD_TRACE=1, then ``fibuild bench`` on what was traced) and applied
(FIBUILD_APPLY=1), in a CUDA graph, at several batch sizes.

The step: 32 layers with distinct weights; fused add + RMSNorm (RMSNorm at layer 0), QKV / O /
gate-up / down through ``F.linear``, rotary embedding of q and k in place (NeoX style, from a
float32 cos/sin cache, at each sequence's position), K/V written into per-layer page-size-1
caches, paged decode attention through one ``BatchDecodeWithPagedKVCacheWrapper`` planned
once per step and run per layer, SiLU×mul. ``--engine`` picks how those are called:

- ``docs``: as FlashInfer's documentation shows: ``plan()`` / ``run()``, ``flashinfer.norm.*``,
  ``flashinfer.activation.silu_and_mul``, ``flashinfer.rope.apply_rope_with_cos_sin_cache_inplace``;
  caches ``[tokens, kv_heads, head_dim]`` pairs written by index assignment.
- ``sglang``: as SGLang 0.5.23 (``srt/layers/attention/flashinfer_backend.py``,
  ``layers/layernorm.py``, ``layers/activation.py``): a CUDA-graph wrapper over fixed
  buffers, the first plan through ``begin_forward``, then ``begin_forward = partial(
  fast_decode_plan, wrapper)``, runs through ``forward(q.contiguous(), kv, sm_scale=...)``;
  norms through ``sgl_kernel`` as ``RMSNorm.forward_cuda`` calls them (no ``enable_pdl``:
  sgl_kernel turns it on by itself on Hopper), SiLU×mul through ``sgl_kernel.silu_and_mul``
  (0.5.23 runs its own JIT kernel of the same ``(input, out)`` call for this width; fibuild
  adapts both); the rotary embedding as ``RotaryEmbedding.forward_cuda`` calls sglang's JIT
  ``apply_rope_with_cos_sin_cache_inplace(positions=, q=, k=, cos_sin_cache=, is_neox=,
  fused_args=None)`` on 3-D views of the QKV output; K and V stored by one kernel, as
  ``set_kv_buffer`` calls sglang's JIT ``store_cache`` on ``[tokens, heads * head_dim]`` rows
  (both from ``engine_standins/_sglang_jit.py``).
- ``vllm``: as vLLM 0.34 (``v1/attention/backends/flashinfer.py``, ``_custom_ops.py``): a
  tensor-core CUDA-graph wrapper, CPU indptr and last-page lengths, the first plan through
  ``plan(seq_lens=...)`` and the next ones through ``fast_decode_plan``, one combined KV
  tensor ``[pages, 2, page_size, kv_heads, head_dim]`` per layer written by
  ``torch.ops._C_cache_ops.reshape_and_cache_flash``, ``run(..., out=)``; norms, SiLU×mul and
  the rotary embedding (``rotary_embedding``) through ``torch.ops._C``.

``sgl_kernel`` and vLLM's ``_C`` operators come from ``benchmarks/engine_standins`` (the real
packages cannot be installed on the GPU machines); their kernels are FlashInfer's, which
sgl_kernel ships too, and a one-kernel Triton stand-in for the engines' K/V stores. The
applied run reports ``fibuild.integrations.stats()``: the calls each patched API took per batch
size (the eager warm-up step and the capture; replays run no Python), and how many were
substituted.
Each mode runs in its own process (activation is by environment, as in a served engine):
weights and inputs are seeded, so every mode computes the same step; outputs are compared
(traced must equal plain exactly). Applied is checked against the truth, not against plain:
the plain process also computes the step in fp32 with torch alone, and the applied output's
relative L2 error against it must stay within ``--error-ratio`` times the plain output's
(bf16 kernels that round or accumulate in another order drift apart by a few percent over
32 layers while being equally accurate; a wrong kernel lands at tens of percent). The
weight-streaming floor is (weight bytes + KV bytes read) / the device copy bandwidth measured
in the same run.

    python3 benchmarks/serving_step.py --out benchmarks/results/serving-step-h200      # on a GPU
    python3 benchmarks/serving_step.py --device cpu --layers 2 --model tiny \\
        --flashinfer-path tests/fixtures/flashinfer_stub --out /tmp/step                  # CPU smoke

The workspace traced into and benched is a copy of the shipped one under ``--out`` (the
repository's registry is not touched). Results: a table on stdout and ``serving_step.md`` /
``serving_step.json`` / ``serving_step.png`` (step times and speedups per batch size) under
``--out``; ``--plot JSON PNG`` draws the plot of an earlier run (where the GPU machine has no
matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STANDINS = Path(__file__).resolve().parent / "engine_standins"
MODELS = {  # hidden, heads, kv heads, head dim, intermediate
    "llama3-8b": (4096, 32, 8, 128, 14336),
    "tiny": (256, 8, 2, 32, 512),
}
EPS = 1e-5
ROPE_THETA = 500000.0  # Llama-3.1's base (its llama3 frequency scaling changes values, not cost)
ROPE_POSITIONS = 8192  # rows of the cos/sin cache (an engine's holds max_position_embeddings)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# the model (child processes)
# --------------------------------------------------------------------------------------------

class Model:
    """Seeded weights of ``layers`` decoder layers and their KV caches, and the step as
    ``args.engine`` calls it."""

    def __init__(self, args, batch: int, device):
        import torch

        hidden, heads, kv_heads, head_dim, inter = MODELS[args.model]
        self.dims = (hidden, heads, kv_heads, head_dim, inter)
        self.batch, self.kv_len, self.device = batch, args.kv_len, device
        g = torch.Generator(device=device).manual_seed(1234)
        bf16 = torch.bfloat16

        def weight(n, k):
            return (torch.randn(n, k, generator=g, device=device, dtype=torch.float32) / k ** 0.5).to(bf16)

        qkv = (heads + 2 * kv_heads) * head_dim
        self.layers = []
        tokens = batch * args.kv_len + batch  # every sequence's pages, plus the new token
        for _ in range(args.layers):
            self.layers.append({
                "ln1": (1 + 0.1 * torch.randn(hidden, generator=g, device=device)).to(bf16),
                "ln2": (1 + 0.1 * torch.randn(hidden, generator=g, device=device)).to(bf16),
                "qkv": weight(qkv, hidden), "o": weight(hidden, heads * head_dim),
                "gate_up": weight(2 * inter, hidden), "down": weight(hidden, inter),
                "k": torch.randn(tokens, kv_heads, head_dim, generator=g, device=device).to(bf16),
                "v": torch.randn(tokens, kv_heads, head_dim, generator=g, device=device).to(bf16),
            })
        self.final_norm = torch.ones(hidden, device=device, dtype=bf16)
        # The page table: each sequence kv_len + 1 tokens (its new one last), pages in random order.
        perm = torch.randperm(tokens, generator=torch.Generator().manual_seed(7)).to(torch.int32)
        lens = [args.kv_len + 1] * batch
        self.kv_indptr_host = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(batch)], dtype=torch.int32)
        self.kv_indptr = self.kv_indptr_host.to(device)
        self.kv_indices = perm.to(device)
        self.kv_last_page_len = torch.ones(batch, dtype=torch.int32, device=device)
        self.out_cache_loc = self.kv_indices[self.kv_indptr[1:].long() - 1].long()  # each new token's slot
        self.unit_scale = torch.ones((), dtype=torch.float32, device=device)  # vLLM's layer._k_scale, _v_scale
        self.hidden = torch.randn(batch, hidden, generator=g, device=device).to(bf16)
        # Rotary embedding: each sequence's new token sits at position kv_len; the engines keep a
        # float32 [positions, head_dim] cache, cos in its first half and sin in its second.
        self.positions = torch.full((batch,), args.kv_len, dtype=torch.int64, device=device)
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max(ROPE_POSITIONS, args.kv_len + 1), dtype=torch.float32), inv_freq)
        self.cos_sin_cache = torch.cat((angles.cos(), angles.sin()), dim=-1).to(device)
        import flashinfer

        self.flashinfer = flashinfer
        self.engine = args.engine
        self.planned = False
        if self.engine == "vllm":  # one [pages, 2, page_size, kv_heads, head_dim] tensor per layer
            for L in self.layers:
                L["kv"] = torch.stack([L.pop("k"), L.pop("v")], 1).unsqueeze(2)
        if self.engine == "sglang":
            from _sglang_jit import apply_rope_with_cos_sin_cache_inplace, store_cache
            from sgl_kernel import fused_add_rmsnorm, rmsnorm, silu_and_mul  # as SGLang's layers bind them

            self.sgl = (rmsnorm, fused_add_rmsnorm, silu_and_mul, apply_rope_with_cos_sin_cache_inplace, store_cache)
        workspace = torch.empty(128 * 1024 * 1024 if device.type == "cuda" else 1024, dtype=torch.uint8, device=device)
        # The engines' CUDA-graph wrappers: fixed index buffers that each plan refreshes before a
        # replay; tensor cores as SGLang's should_use_tensor_core picks them for a bf16 cache (GQA
        # group >= 4), always for vLLM's.
        self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            workspace, "NHD", use_cuda_graph=device.type == "cuda",
            use_tensor_cores=self.engine == "vllm" or heads // kv_heads >= 4,
            paged_kv_indptr_buffer=self.kv_indptr,
            paged_kv_indices_buffer=self.kv_indices, paged_kv_last_page_len_buffer=self.kv_last_page_len)
        weight_bytes = sum(t.numel() * t.element_size() for L in self.layers
                           for n, t in L.items() if n not in ("k", "v", "kv"))
        kv_bytes = args.layers * 2 * sum(lens) * kv_heads * head_dim * 2
        self.bytes = weight_bytes + kv_bytes

    def plan(self):
        """Plan the decode wrapper for this step, outside the graph, as the engine does."""
        import torch

        _, heads, kv_heads, head_dim, _ = self.dims
        w, bf16 = self.wrapper, torch.bfloat16
        if self.engine == "docs":
            w.plan(self.kv_indptr, self.kv_indices, self.kv_last_page_len, heads, kv_heads, head_dim, 1,
                   pos_encoding_mode="NONE", q_data_type=bf16, kv_data_type=bf16)
        elif self.engine == "sglang":  # call_begin_forward: the fast plan gets the host indptr
            extra = {"global_override_indptr_cpu": self.kv_indptr_host} if self.planned else {}
            w.begin_forward(self.kv_indptr, self.kv_indices, self.kv_last_page_len, heads, kv_heads, head_dim, 1,
                            data_type=bf16, q_data_type=bf16, non_blocking=True, fixed_split_size=None,
                            disable_split_kv=False, **extra)
            if not self.planned:  # after the capture's first plan: the fast plan for every replay
                import functools

                w.begin_forward = functools.partial(self.flashinfer.fast_decode_plan, w)
        else:  # vLLM's fast_plan_decode: plan() the first time, FlashInfer's fast_decode_plan after
            indptr_cpu = self.kv_indptr_host.clone()
            last_cpu = torch.ones(self.batch, dtype=torch.int32)
            self.kv_indptr.copy_(indptr_cpu, non_blocking=True)  # vLLM's CpuGpuBuffer.copy_to_gpu
            kwargs = dict(indices=self.kv_indices, num_qo_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                          page_size=1, pos_encoding_mode="NONE", sm_scale=head_dim ** -0.5, window_left=-1,
                          logits_soft_cap=None, q_data_type=bf16, kv_data_type=bf16, fixed_split_size=-1,
                          disable_split_kv=False, q_len_per_req=1)
            if not self.planned:
                w.plan(indptr=indptr_cpu, last_page_len=last_cpu, o_data_type=bf16, block_tables=None,
                       seq_lens=indptr_cpu[1:] - indptr_cpu[:-1], **kwargs)
            else:
                from flashinfer.decode import fast_decode_plan  # bound as vLLM's module binds it

                fast_decode_plan(w, indptr=indptr_cpu, last_page_len=last_cpu, **kwargs)
        self.planned = True

    def _norm(self, x, w):
        if self.engine == "sglang":
            return self.sgl[0](x, w, EPS)  # layernorm.py 0.5.23: no enable_pdl (sgl_kernel: on for sm90+)
        if self.engine == "vllm":
            import torch

            out = torch.empty_like(x)
            torch.ops._C.rms_norm(out, x, w, EPS)
            return out
        return self.flashinfer.norm.rmsnorm(x, w, EPS)

    def _add_norm(self, x, residual, w):
        if self.engine == "sglang":
            self.sgl[1](x, residual, w, EPS)
        elif self.engine == "vllm":
            import torch

            torch.ops._C.fused_add_rms_norm(x, residual, w, EPS)
        else:
            self.flashinfer.norm.fused_add_rmsnorm(x, residual, w, EPS)

    def _silu_mul(self, x):
        if self.engine == "docs":
            return self.flashinfer.activation.silu_and_mul(x)
        import torch

        out = torch.empty(*x.shape[:-1], x.shape[-1] // 2, dtype=x.dtype, device=x.device)
        if self.engine == "sglang":
            self.sgl[2](x, out)
        else:
            torch.ops._C.silu_and_mul(out, x)
        return out

    def _rope(self, q, k):
        """Rotate q and k (views of the QKV output) in place, as the engine's rotary embedding does."""
        head_dim = self.dims[3]
        if self.engine == "sglang":  # rotary_embedding/base.py 0.5.23, forward_cuda
            b = self.batch
            self.sgl[3](positions=self.positions, q=q.view(b, -1, head_dim), k=k.view(b, -1, head_dim),
                        cos_sin_cache=self.cos_sin_cache, is_neox=True, fused_args=None)
        elif self.engine == "vllm":
            import torch

            torch.ops._C.rotary_embedding(self.positions, q, k, head_dim, self.cos_sin_cache, True)
        else:
            self.flashinfer.rope.apply_rope_with_cos_sin_cache_inplace(self.positions, q, k, head_dim,
                                                                       self.cos_sin_cache, True)

    def _store(self, k, v, L):
        """Write each sequence's new K and V rows (``[batch, kv_heads * head_dim]`` views of the
        QKV output) into the layer's cache, as the engine does."""
        _, _, kv_heads, head_dim, _ = self.dims
        if self.engine == "sglang":  # mem_cache/memory_pool.py 0.5.23, _set_kv_buffer_impl
            row = k.shape[-1]
            self.sgl[4](k, v, L["k"].view(-1, row), L["v"].view(-1, row), self.out_cache_loc,
                        row_bytes=row * k.element_size(), v_row_bytes=row * v.element_size(),
                        size_limit=L["k"].shape[0])
            return
        k, v = k.view(-1, kv_heads, head_dim), v.view(-1, kv_heads, head_dim)
        if self.engine == "vllm":
            import torch

            scale = self.unit_scale
            torch.ops._C_cache_ops.reshape_and_cache_flash(k, v, L["kv"][:, 0], L["kv"][:, 1], self.out_cache_loc,
                                                           "auto", scale, scale)
        else:
            L["k"][self.out_cache_loc] = k
            L["v"][self.out_cache_loc] = v

    def _attend(self, q, L):
        import torch

        if self.engine == "docs":
            return self.wrapper.run(q, (L["k"], L["v"]))
        if self.engine == "sglang":  # forward_decode
            return self.wrapper.forward(q, (L["k"], L["v"]), sm_scale=q.shape[-1] ** -0.5, logits_soft_cap=0.0,
                                        k_scale=None, v_scale=None)
        out = torch.empty_like(q)
        self.wrapper.run(q, L["kv"], q_scale=None, k_scale=None, v_scale=None, out=out, kv_cache_sf=None, sinks=None)
        return out

    def step(self, hidden_in):
        import torch.nn.functional as F

        hidden, heads, kv_heads, head_dim, _ = self.dims
        b = self.batch
        residual = hidden_in.clone()
        h = self._norm(hidden_in, self.layers[0]["ln1"])
        for i, L in enumerate(self.layers):
            if i:
                self._add_norm(h, residual, L["ln1"])
            qkv = F.linear(h, L["qkv"])
            q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
            self._rope(q, k)
            self._store(k, v, L)
            o = self._attend(q.contiguous().view(b, heads, head_dim), L)
            h = F.linear(o.reshape(b, heads * head_dim), L["o"])
            self._add_norm(h, residual, L["ln2"])
            h = F.linear(self._silu_mul(F.linear(h, L["gate_up"])), L["down"])
        self._add_norm(h, residual, self.final_norm)
        return h

    def cache(self, L):
        """(K, V) of a layer as [tokens, kv_heads, head_dim]."""
        if "kv" in L:
            return L["kv"][:, 0, 0], L["kv"][:, 1, 0]
        return L["k"], L["v"]

    def reference_step(self, hidden_in):
        """The same step in fp32 with torch alone (weights and caches upcast layer by layer, no
        TF32): what the bf16 runs are measured against. Call it after :meth:`step` ran once
        (the caches' new-token rows are taken from this step's own fp32 K and V)."""
        import torch
        import torch.nn.functional as F

        _, heads, kv_heads, head_dim, _ = self.dims
        b, n = self.batch, self.kv_len + 1
        group = heads // kv_heads
        rows = self.kv_indices.long()
        new = self.kv_indptr[1:].long() - 1  # each sequence's new token, in page-table order

        def norm(x, w):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w.float()

        def linear(x, w):
            return x @ w.float().T

        half = head_dim // 2
        cos, sin = self.cos_sin_cache[self.positions].chunk(2, dim=-1)  # [b, half] each

        def rope(x, n_heads):  # NeoX style: the two halves of each head rotate as pairs
            x = x.view(b, n_heads, head_dim)
            x1, x2 = x[..., :half], x[..., half:]
            c, s = cos.unsqueeze(1), sin.unsqueeze(1)
            return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).reshape(b, n_heads * head_dim)

        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            residual = hidden_in.float()
            h = norm(residual, self.layers[0]["ln1"])
            for i, L in enumerate(self.layers):
                if i:
                    residual = h + residual
                    h = norm(residual, L["ln1"])
                q, k, v = linear(h, L["qkv"]).split([heads * head_dim, kv_heads * head_dim,
                                                     kv_heads * head_dim], dim=-1)
                q, k = rope(q, heads), rope(k, kv_heads)
                kc, vc = self.cache(L)
                keys, values = kc[rows].float(), vc[rows].float()
                keys[new], values[new] = k.reshape(b, kv_heads, head_dim), v.reshape(b, kv_heads, head_dim)
                keys, values = keys.view(b, n, kv_heads, head_dim), values.view(b, n, kv_heads, head_dim)
                scores = torch.einsum("bhgd,bnhd->bhgn", q.view(b, kv_heads, group, head_dim), keys)
                probs = (scores / head_dim ** 0.5).softmax(-1)
                o = torch.einsum("bhgn,bnhd->bhgd", probs, values).reshape(b, heads * head_dim)
                residual = linear(o, L["o"]) + residual
                h = norm(residual, L["ln2"])
                gate, up = linear(h, L["gate_up"]).chunk(2, dim=-1)
                h = linear(F.silu(gate) * up, L["down"])
            return norm(h + residual, self.final_norm)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32


def copy_bandwidth(device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted), 1 GiB buffers."""
    import torch

    n = (1 << 30) if device.type == "cuda" else (1 << 26)
    src, dst = torch.empty(n, dtype=torch.uint8, device=device), torch.empty(n, dtype=torch.uint8, device=device)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        t = _timer(device)
        dst.copy_(src)
        times.append(t())
    return 2 * n / sorted(times)[len(times) // 2]


def _timer(device):
    """Start a timer; calling the result returns the seconds elapsed (CUDA events on a GPU)."""
    import torch

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()

        def stop():
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return stop
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def _decode_in_graph(model, device) -> str:
    """What the captured graph runs for the paged decode: a fibuild solution's plan, or
    FlashInfer's own run."""
    if device.type != "cuda":
        return "-"
    from fibuild.integrations.wrapper_sites import captured_solution

    return captured_solution(model.wrapper) or "FlashInfer"


def child(args) -> int:
    """Run the step at each batch size in this process's mode; print one JSON line."""
    import torch

    if args.flashinfer_path:
        sys.path.insert(0, str(Path(args.flashinfer_path).resolve()))
    if args.engine != "docs":  # the engine's kernel package, imported at its start as the engine does
        sys.path.insert(0, str(STANDINS))
        import importlib

        importlib.import_module("sgl_kernel" if args.engine == "sglang" else "vllm._C_stable_libtorch")
    if os.environ.get("FIBUILD_TRACE", "0") != "0" or os.environ.get("FIBUILD_APPLY", "0") != "0":
        from fibuild.integrations.activation import active, start_from_env

        if active() is None:  # no .pth hook installed (a checkout): do what it would do
            start_from_env()
    device = torch.device(args.device)
    out_dir = Path(args.out)
    results = {"mode": args.child, "batches": {}}
    if args.child == "plain":
        results["copy_bandwidth"] = copy_bandwidth(device)
    torch.set_grad_enabled(False)
    import fibuild.integrations

    for batch in args.batch:
        before = fibuild.integrations.stats()
        model = Model(args, batch, device)
        model.plan()
        x = model.hidden
        out = model.step(x.clone())  # eager warm-up: every call shape seen before capture
        run = lambda m=model: m.step(x.clone())  # noqa: E731
        if device.type == "cuda":
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = model.step(x.clone())
            run = graph.replay
        times = []
        for i in range(args.warmup + args.iters):
            model.plan()  # once per step, outside the graph, as the engine does
            t = _timer(device)
            run()
            if i >= args.warmup:
                times.append(t())
        # the KV caches received the same new tokens every step: the output is the same each time
        model.plan()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        else:
            out = result
        from safetensors.torch import save_file

        save_file({"out": out.float().cpu().contiguous()}, str(out_dir / f"out-{args.child}-b{batch}.safetensors"))
        if args.child == "plain":
            ref = model.reference_step(x)
            save_file({"out": ref.cpu().contiguous()}, str(out_dir / f"out-fp32-b{batch}.safetensors"))
        median = sorted(times)[len(times) // 2]
        results["batches"][str(batch)] = {"step_s": median, "bytes": model.bytes,
                                          "decode_in_graph": _decode_in_graph(model, device),
                                          "stats": _stats_delta(before, fibuild.integrations.stats())}
        if args.profile and device.type == "cuda":
            from step_profile import markdown, profile_replays

            summary = profile_replays(run, model.plan, args.profile)
            results["batches"][str(batch)]["profile"] = {k: v for k, v in summary.items() if k != "by_name"}
            (out_dir / f"profile-{args.child}-b{batch}.md").write_text(markdown(
                f"{args.child}, batch {batch}", summary, median * 1e6, args.layers))
        log(f"[{args.child}] batch {batch}: {median * 1e3:.3f} ms per step")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.child != "plain":
        from fibuild.integrations.activation import active

        integration = active()
        results["substituted"] = dict(integration.session.substituted) if integration else {}
        results["picks"] = dict(integration.session.picks) if integration else {}
        from fibuild.integrations.activation import disable

        disable()
    print(json.dumps(results), flush=True)
    return 0


def _stats_delta(before: dict, after: dict) -> dict:
    """Per patched API, the calls and substitutions between two ``stats()`` snapshots."""
    out = {}
    for api, row in after.items():
        old = before.get(api, {})
        calls = row["calls"] - old.get("calls", 0)
        if calls:
            out[api] = {"calls": calls, "substituted": row["substituted"] - old.get("substituted", 0),
                        "fallbacks": {r: n - old.get("fallbacks", {}).get(r, 0) for r, n in row["fallbacks"].items()
                                      if n - old.get("fallbacks", {}).get(r, 0)}}
    return out


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------

def _spawn(args, mode: str, env_extra: dict, workspace: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode] + _passthrough(args)
    env = dict(os.environ, FIBUILD_ROOT=str(workspace), FIBUILD_TRACE="0", FIBUILD_APPLY="0")
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    log(f"== {mode}: {' '.join(f'{k}={v}' for k, v in env_extra.items()) or 'no fibuild'}")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=args.child_timeout)
    if proc.returncode != 0:
        raise SystemExit(f"serving_step: the {mode} run failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # each run's figures as soon as it ends: a session cut short keeps the runs it finished
    (Path(args.out) / f"run-{mode}.json").write_text(json.dumps(result, indent=1))
    return result


def _passthrough(args) -> list[str]:
    out = ["--device", args.device, "--engine", args.engine, "--layers", str(args.layers), "--model", args.model,
           "--kv-len", str(args.kv_len),
           "--iters", str(args.iters), "--warmup", str(args.warmup), "--out", str(args.out),
           "--batch", *map(str, args.batch), "--profile", str(args.profile)]
    if args.flashinfer_path:
        out += ["--flashinfer-path", str(Path(args.flashinfer_path).resolve())]
    return out


def _bench_traced(args, workspace: Path) -> list[str]:
    """``fibuild bench --recorded`` on every definition the trace saw (the traced workloads,
    not those the manifests declare); returns their names."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + (
        [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])), FIBUILD_TRACE="0", FIBUILD_APPLY="0")
    report = subprocess.run([sys.executable, "-m", "fibuild", "--root", str(workspace), "trace", "report", "--json"],
                            env=env, stdout=subprocess.PIPE, text=True, check=True, timeout=300)
    names = sorted(json.loads(report.stdout)["definitions"])
    log(f"== fibuild bench on the traced definitions: {', '.join(names)}")
    cmd = [sys.executable, "-m", "fibuild", "--root", str(workspace), "bench", *names, "--recorded",
           "--device", args.device, "--timeout", "120"]
    for sol in args.bench_solution:  # a grid has many variants: a session may bench a few of them
        cmd += ["--solution", sol]
    if args.device == "cuda":
        cmd.append("--graph")
    log(f"   its output: {args.out}/bench.log")
    try:
        with open(Path(args.out) / "bench.log", "w") as out:
            subprocess.run(cmd, env=env, timeout=args.bench_timeout, check=False, stdout=out, stderr=subprocess.STDOUT)
    except subprocess.TimeoutExpired:
        log(f"fibuild bench stopped after {args.bench_timeout} s; the evaluations recorded so far count")
    return names


def _evaluate_chain(args, workspace: Path) -> None:
    """``fibuild chain llama3_8b_decode_layer`` at each batch size (the traced decode workloads'
    KV lengths): each slot's choice timed in sequence, which the applied runs' resolver prefers.
    With ``--pdl``, once per launch mode: chain choices count only in the mode they were made in."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + (
        [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])), FIBUILD_TRACE="0", FIBUILD_APPLY="0")
    launches = ("0", "1") if args.pdl else (None,)  # None: the launch mode the environment sets
    with open(Path(args.out) / "chain.log", "w") as out:
        for pdl in launches:
            for batch in args.batch:
                axes = f"batch_size={batch},kv_tokens={batch * (args.kv_len + 1)}"
                log(f"== fibuild chain llama3_8b_decode_layer --axes {axes}"
                    f"{'' if pdl is None else f' (FIBUILD_PDL={pdl})'} (output: {args.out}/chain.log)")
                try:
                    subprocess.run([sys.executable, "-m", "fibuild", "--root", str(workspace), "chain",
                                    "llama3_8b_decode_layer", "--axes", axes, "--device", args.device, "--layers",
                                    "4", "--iters", "10"], env=env if pdl is None else {**env, "FIBUILD_PDL": pdl},
                                   timeout=args.bench_timeout, check=False, stdout=out, stderr=subprocess.STDOUT)
                except subprocess.TimeoutExpired:
                    log(f"fibuild chain stopped after {args.bench_timeout} s")


def _outputs(out_dir: Path, batch: int, pdl: bool = False) -> dict:
    """Each run's output at ``batch`` (plain, trace, apply[, apply_pdl], fp32), read once."""
    from safetensors.torch import load_file

    return {m: load_file(str(out_dir / f"out-{m}-b{batch}.safetensors"))["out"]
            for m in ("plain", "trace", "apply", "fp32") + (("apply_pdl",) if pdl else ())}


def _compare(got, want) -> tuple[float, float]:
    """(max abs difference, relative L2 error) of ``got`` against ``want``."""
    return float((got - want).abs().max()), float((got - want).norm() / want.norm().clamp_min(1e-30))


def driver(args) -> int:
    import platform

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workspace = out_dir / "workspace"
    if not workspace.exists():
        for part in ("defs", "solutions", "registry", "chains"):
            shutil.copytree(REPO / part, workspace / part, ignore=shutil.ignore_patterns("__pycache__"))
    t0 = time.time()
    plain = _spawn(args, "plain", {}, workspace)
    traced = _spawn(args, "trace", {"FIBUILD_TRACE": "1"}, workspace)
    benched = [] if args.skip_bench else _bench_traced(args, workspace)
    if args.chain:
        _evaluate_chain(args, workspace)
    # With --pdl: applied without dependent launch, then with it (each on its own mode's chain choices).
    applied = _spawn(args, "apply", {"FIBUILD_APPLY": "1", **({"FIBUILD_PDL": "0"} if args.pdl else {})}, workspace)
    applied_pdl = _spawn(args, "apply_pdl", {"FIBUILD_APPLY": "1", "FIBUILD_PDL": "1"}, workspace) \
        if args.pdl else None
    bandwidth = plain["copy_bandwidth"]
    same_picks = applied_pdl is not None and applied.get("picks") == applied_pdl.get("picks")
    rows = []
    for batch in args.batch:
        key = str(batch)
        p, t, a = (r["batches"][key]["step_s"] for r in (plain, traced, applied))
        floor = plain["batches"][key]["bytes"] / bandwidth
        out = _outputs(out_dir, batch, pdl=args.pdl)
        trace_diff, apply_diff = _compare(out["trace"], out["plain"]), _compare(out["apply"], out["plain"])
        plain_err, apply_err = _compare(out["plain"], out["fp32"])[1], _compare(out["apply"], out["fp32"])[1]
        ok = trace_diff[0] == 0.0 and apply_err <= args.error_ratio * plain_err
        rows.append({"batch": batch, "kv_len": args.kv_len, "plain_ms": p * 1e3, "traced_ms": t * 1e3,
                     "applied_ms": a * 1e3, "speedup": p / a, "floor_ms": floor * 1e3,
                     "applied_of_floor": floor / a, "traced_max_abs_diff": trace_diff[0],
                     "applied_rel_l2": apply_diff[1], "applied_max_abs_diff": apply_diff[0],
                     "plain_fp32_rel_l2": plain_err, "applied_fp32_rel_l2": apply_err, "agree": ok,
                     "decode_in_graph": applied["batches"][key].get("decode_in_graph", "-"),
                     "stats": applied["batches"][key].get("stats", {}),
                     "profile": {m: r["batches"][key]["profile"] for m, r in
                                 (("plain", plain), ("apply", applied), ("apply_pdl", applied_pdl))
                                 if r and "profile" in r["batches"][key]}})
        if applied_pdl is not None:
            ap = applied_pdl["batches"][key]["step_s"]
            pdl_err = _compare(out["apply_pdl"], out["fp32"])[1]
            rows[-1].update({"applied_pdl_ms": ap * 1e3, "pdl_speedup": p / ap, "applied_pdl_of_floor": floor / ap,
                             "applied_pdl_fp32_rel_l2": pdl_err,
                             "same_picks": same_picks,
                             "pdl_equals_applied": bool(_compare(out["apply_pdl"], out["apply"])[0] == 0.0)})
            rows[-1]["agree"] = rows[-1]["agree"] and pdl_err <= args.error_ratio * plain_err
    device = _device_name(args.device)
    summary = {"device": device, "engine": args.engine, "model": args.model, "layers": args.layers,
               "copy_bandwidth_gbs": bandwidth / 1e9,
               "rows": rows, "benched": benched, "chain": bool(args.chain),
               "substituted": applied.get("substituted", {}),
               "python": platform.python_version(), "seconds": time.time() - t0}
    (out_dir / "serving_step.json").write_text(json.dumps(summary, indent=2))
    md = _markdown(summary, args)
    (out_dir / "serving_step.md").write_text(md)
    print(md)
    try:
        plot(summary, out_dir / "serving_step.png")
    except SystemExit as exc:  # the table stands without it; draw it later with --plot
        log(str(exc))
    return 0 if all(r["agree"] for r in rows) else 1


def _device_name(kind: str) -> str:
    import torch

    if kind == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return platform_cpu()


def platform_cpu() -> str:
    import platform

    return f"CPU ({platform.processor() or platform.machine()})"


def _pdl_output_cell(row: dict) -> str:
    """Whether applied + PDL computed exactly what applied did; only asked of the same kernels."""
    if not row.get("same_picks", True):
        return "other picks"
    return "yes" if row["pdl_equals_applied"] else "no"


def _markdown(s: dict, args) -> str:
    lines = [f"# Decode step, {s['model']} shapes, {s['layers']} layers, called as {s['engine']} calls it — "
             f"{s['device']}", "",
             f"Copy bandwidth measured in the same run: {s['copy_bandwidth_gbs']:.0f} GB/s. Floor = "
             "(weights + KV bytes read) / that bandwidth. Step time: median of "
             f"{args.iters} {'CUDA-graph replays' if args.device == 'cuda' else 'eager steps'}, "
             "the decode wrapper planned before each. Errors: relative L2 of the final hidden state "
             f"against the step computed in fp32 (applied passes at ≤ {args.error_ratio:g}× plain's).", "",
             "| batch | KV len | plain ms | traced ms | applied ms | speedup | floor ms | applied % of floor | "
             "traced = plain | error vs fp32: plain | applied | applied vs plain | decode in the applied graph |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['batch']} | {r['kv_len']} | {r['plain_ms']:.3f} | {r['traced_ms']:.3f} | "
                     f"{r['applied_ms']:.3f} | {r['speedup']:.3f}× | {r['floor_ms']:.3f} | "
                     f"{100 * r['applied_of_floor']:.0f} % | {'yes' if r['traced_max_abs_diff'] == 0 else 'NO'} | "
                     f"{r['plain_fp32_rel_l2']:.1e} | {r['applied_fp32_rel_l2']:.1e}"
                     f"{'' if r['agree'] else ' (over tolerance)'} | {r['applied_rel_l2']:.1e} | "
                     f"{r['decode_in_graph']} |")
    if any("applied_pdl_ms" in r for r in s["rows"]):
        lines += ["", "Applied without and with programmatic dependent launch (`FIBUILD_PDL=0` / `1`; each "
                  "resolves on its own launch mode's chain choices where a chain was evaluated, so the kernels "
                  "may differ: the output column compares the two only where every pick is the same), against "
                  "plain and the floor:", "",
                  "| batch | plain ms | applied ms | applied + PDL ms | applied + PDL vs plain | % of floor: plain | "
                  "applied | applied + PDL | PDL output = applied output | error vs fp32: applied + PDL |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            lines.append(f"| {r['batch']} | {r['plain_ms']:.3f} | {r['applied_ms']:.3f} | {r['applied_pdl_ms']:.3f} | "
                         f"{r['pdl_speedup']:.3f}× | {100 * r['floor_ms'] / r['plain_ms']:.0f} % | "
                         f"{100 * r['applied_of_floor']:.0f} % | {100 * r['applied_pdl_of_floor']:.0f} % | "
                         f"{_pdl_output_cell(r)} | {r['applied_pdl_fp32_rel_l2']:.1e} |")
    profiled = [(r["batch"], m, pr) for r in s["rows"] for m, pr in r.get("profile", {}).items()]
    if profiled:
        lines += ["", "Inside the step (torch profiler over replays; `profile-<run>-b<batch>.md` has every "
                  "kernel): the GPU's idle gaps between kernels, kernels overlapping, and µs per layer of each "
                  "operation.", "", "| batch | run | span µs | gaps µs | overlap µs | "
                  + " | ".join(f"{k} µs/layer" for k in ("norm", "gemm", "attention", "silu_and_mul")) + " |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for batch, mode, pr in profiled:
            kinds = pr.get("by_kind", {})
            per_layer = " | ".join(f"{kinds.get(k, {}).get('us', 0.0) / s['layers']:.2f}"
                                   for k in ("norm", "gemm", "attention", "silu_and_mul"))
            lines.append(f"| {batch} | {mode} | {pr['span_us']:.1f} | {pr['gaps_us']:.1f} | {pr['overlap_us']:.1f} | "
                         f"{per_layer} |")
    subs = ", ".join(f"{k} ({v} keys)" for k, v in sorted(s["substituted"].items())) or "none (every call resolved " \
        "to FlashInfer/cuBLAS itself or to the reference, so the original ran)"
    lines += ["", f"Definitions traced and benched: {', '.join(s['benched']) or 'none'}."
              + (" The llama3_8b_decode_layer chain was evaluated at each batch size after the bench "
                 "(`chain.log`); the applied runs' resolver prefers its choices." if s.get("chain") else ""),
              f"Substituted when applied: {subs}.", "",
              "Calls of each patched API in the applied run (`fibuild.integrations.stats()`; the eager "
              "warm-up step and the capture: replays run no Python), substituted of them, and why the others "
              "were not:", "", "| batch | API | calls | substituted | fallbacks |", "|---|---|---|---|---|"]
    for r in s["rows"]:
        for api, row in sorted(r.get("stats", {}).items()):
            why = "; ".join(f"{n}× {reason}" for reason, n in row["fallbacks"].items()) or "-"
            lines.append(f"| {r['batch']} | `{api}` | {row['calls']} | {row['substituted']} | {why} |")
    lines.append("")
    return "\n".join(lines)


def plot(summary: dict, out: Path) -> None:
    """Step time per batch size, plain vs applied (and applied with dependent launch), against
    the floor; each bar's % of the floor and speedup over plain written over it; PNG to
    ``out``. SystemExit when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("serving_step: the plot needs matplotlib (pip install matplotlib)") from None
    rows = summary["rows"]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    series = [("plain_ms", "plain (FlashInfer + cuBLAS)", None)]
    if all("applied_pdl_ms" in r for r in rows):
        series += [("applied_ms", "FIBUILD_APPLY=1 FIBUILD_PDL=0", "speedup"),
                   ("applied_pdl_ms", "FIBUILD_APPLY=1 (dependent launch)", "pdl_speedup")]
    else:
        series += [("applied_ms", "FIBUILD_APPLY=1", "speedup")]
    width = 0.8 / len(series)
    for j, (field, label, ratio) in enumerate(series):
        offset = (j - (len(series) - 1) / 2) * width
        bars = ax.bar([i + offset for i in x], [r[field] for r in rows], width, label=label)
        for bar, r in zip(bars, rows):
            text = f"{100 * r['floor_ms'] / r[field]:.0f}%" + (f"\n{r[ratio]:.2f}×" if ratio else "")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7)
    ax.plot(list(x), [r["floor_ms"] for r in rows], "k_", markersize=40,
            label="weight + KV streaming floor (bars: % of it, × plain)")
    ax.set_xticks(list(x), [str(r["batch"]) for r in rows])
    ax.set_xlabel(f"batch size (KV length {rows[0]['kv_len']})")
    ax.set_ylabel("ms per decode step (CUDA graph)")
    ax.set_title(f"{summary['model']}, {summary['layers']} layers — {summary['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--engine", choices=("docs", "sglang", "vllm"), default="docs",
                   help="call the kernels as FlashInfer's docs show, or as SGLang or vLLM does")
    p.add_argument("--model", choices=tuple(MODELS), default="llama3-8b")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64, 128])
    p.add_argument("--kv-len", type=int, default=1024, help="tokens already in each sequence's cache")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--error-ratio", type=float, default=1.5,
                   help="applied passes when its error against the fp32 step is at most this times plain's")
    p.add_argument("--out", default="serving-step-results", help="folder for the results and the workspace copy")
    p.add_argument("--flashinfer-path", help="folder to put first on sys.path (a stand-in flashinfer)")
    p.add_argument("--skip-bench", action="store_true", help="do not run fibuild bench on the traced definitions")
    p.add_argument("--bench-timeout", type=int, default=900)
    p.add_argument("--bench-solution", action="append", default=[], metavar="S",
                   help="bench only these solutions (fibuild bench --solution: name, def/name, name[K=v,...]); "
                        "repeatable; default: every solution of the traced definitions")
    p.add_argument("--child-timeout", type=int, default=900)
    p.add_argument("--plot", nargs=2, metavar=("JSON", "PNG"),
                   help="only draw the plot of an earlier run's serving_step.json (needs matplotlib)")
    p.add_argument("--pdl", action="store_true",
                   help="run applied twice: without programmatic dependent launch (FIBUILD_PDL=0), then with it")
    p.add_argument("--chain", action="store_true",
                   help="after the bench, evaluate the llama3_8b_decode_layer chain at each batch size "
                        "(its choices go to the workspace's registry; the applied runs prefer them)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile N replays per batch size in each run (torch profiler): where the step's time "
                        "goes, per kernel, in profile-<run>-b<batch>.md")
    p.add_argument("--child", choices=("plain", "trace", "apply", "apply_pdl"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plot:
        plot(json.loads(Path(args.plot[0]).read_text()), Path(args.plot[1]))
        return 0
    if args.child:
        return child(args)
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())

"""Paged GQA decode (32 query heads, 8 KV heads, head dim 128, bf16) in Triton, plan/run,
for any page size.

``plan`` (host, once per page table) reads the indptr (and the last-page lengths) in one
device->host copy and cuts every sequence into chunks of whole pages, small enough that
even one sequence fills the GPU (flash-decoding's split-KV), and writes a work list: per
item its sequence, the offset of its first page in ``kv_indices``, its token count, and
the range of its sequence's items. ``DecodePlan.refill`` rewrites that list in place for a
new page table of the same batch size (a run captured in a CUDA graph then replays over the
new table). ``gqa_paged_decode`` (the run) only launches:

- ``_decode_chunk``, one program per (item, KV head): the 4 query heads of the group
  (padded to 16 rows for ``tl.dot``) stream the chunk's K and V in blocks of ``BLOCK_N``
  tokens gathered through the page table, with an online softmax in base 2. An unsplit
  sequence's item writes the output and lse; a split one writes its partial output and lse
  (fp32) and, with ``MERGE="fused"``, counts itself done on a per-(sequence, KV head)
  counter: the last one merges the partials by their lse and resets the counter (no second
  launch). Partials are read past L1 (``.cg``), after an acquire on the counter.
- with ``MERGE="separate"``, ``_merge_chunks`` (one program per sequence and KV head)
  merges instead, as a second launch.

A solution binds ``plan``'s ``page_size`` (its definition's); the merge and the launch
knobs are the constants of a variant of its grid. The plan carries all of them to the run. With ``kv_last_page_len`` a sequence's
last page holds that many tokens, else every page is full. Runs on CPU tensors under ``TRITON_INTERPRET=1`` (``tl.dot`` then takes
fp32 operands: the interpreter's bf16 dot returns garbage).

With dependent launch (``launch: {pdl: true}``), each program lets the next kernel launch at
once, reads its work item (the plan's) and its first block's page indices (the engine's page
table, written before the step), asks the L2 for that block's K and V rows, and then waits
for the previous kernel (q and the new token's K/V are its output) before it loads anything
into registers from them or writes; the separate merge waits before reading the partials.
"""
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fibuild.compile.launch import TritonLaunch

NUM_QO_HEADS = 32
NUM_KV_HEADS = 8
HEAD_DIM = 128
GROUP = NUM_QO_HEADS // NUM_KV_HEADS
BLOCK_H = 16  # query rows per program: the group of 4, padded to tl.dot's minimum
LOG2E = 1.4426950408889634
ITEM_FIELDS = 8  # seq, first index into kv_indices, tokens, first item of the seq, items of the seq, 3 unused
MERGE_BLOCK = 8  # partials merged per step

#: Programs the plan aims for, in multiples of the SM count: enough to hide the latency of
#: the dependent loads (page index, then K and V) and to balance the tail.
TARGET_WAVES = 4
#: A chunk holds at least this many tokens (rounded up to whole pages), so its partial
#: (2 KiB per KV head) stays small against its K and V (256 B per token and KV head).
MIN_CHUNK_TOKENS = 128


@dataclass(frozen=True)
class DecodePlan:
    """What the run needs: the work list (device int32) and launch parameters.

    :meth:`refill` rewrites the work list in place for a new page table of the same batch
    size, keeping every launch parameter, so that a run captured in a CUDA graph with this
    plan replays correctly over the new table.
    """

    batch_size: int
    num_items: int
    split: bool  # some sequence has several items: partials and a merge
    items: torch.Tensor  # [num_items, ITEM_FIELDS]
    seq_items: torch.Tensor  # [batch_size, 2]: first item and item count of each sequence
    partial_out: torch.Tensor  # [num_items, 32, 128] fp32 (one unused row when not split)
    partial_lse: torch.Tensor  # [num_items, 32] fp32
    counters: torch.Tensor  # [batch_size * 8] int32 zeros, the fused merge's arrival counts
    block_n: int
    num_warps: int
    num_stages: int
    fused: bool
    page_size: int
    packed: torch.Tensor  # items then seq_items, flat: the one buffer refill writes

    def refill(self, kv_indptr, kv_indices, *rest) -> bool:
        """Rewrite the work list for a new page table (the structural inputs, as ``plan``
        takes them) keeping num_items, split, fused and the buffers: the items are dealt
        out again, at least one per sequence and the rest in proportion to the sequences'
        new lengths, each sequence's pages split evenly over its items (an item may get no
        tokens: its partial has lse -inf and the merge ignores it). One device->host copy
        of the indptr (and last-page lengths), one host->device copy queued on the current
        stream. False, nothing written, for another batch size or device."""
        *last, _sm_scale = rest
        if kv_indptr.shape[0] != self.batch_size + 1 or kv_indptr.device != self.packed.device:
            return False
        indptr, tokens = _lengths(kv_indptr, last[0] if last else None, self.page_size)
        counts = _deal(tokens, self.num_items)
        self.packed.copy_(_work_list(indptr, tokens, counts, self.page_size), non_blocking=True)
        if self.split and self.fused:
            self.counters.zero_()  # re-armed already after a complete run; cheap insurance
        return True


_SM_COUNTS = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 16  # the interpreter: a small machine, so CPU tests exercise splitting
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def _lengths(kv_indptr, kv_last_page_len, page_size):
    """(indptr, tokens per sequence) on the host, int64, from one device->host copy."""
    batch = kv_indptr.shape[0] - 1
    parts = [kv_indptr] if kv_last_page_len is None else [kv_indptr, kv_last_page_len]
    host = torch.cat([p.to(torch.int64) for p in parts]).cpu()
    indptr = host[:batch + 1]
    pages = indptr[1:] - indptr[:-1]
    tokens = pages * page_size
    if kv_last_page_len is not None:
        tokens = torch.where(pages > 0, tokens - page_size + host[batch + 1:], tokens)
    return indptr, tokens


def _deal(tokens, num_items):
    """Items per sequence summing to ``num_items``: one each, the rest by largest remainder
    of the sequences' shares of the tokens (all to the first when there are none)."""
    counts = torch.ones_like(tokens)
    spare, total = num_items - tokens.shape[0], int(tokens.sum())
    if spare > 0 and total == 0:
        counts[0] += spare
    elif spare > 0:
        share = tokens * spare
        counts += share // total
        left = spare - int((share // total).sum())
        counts[torch.argsort(share % total, descending=True, stable=True)[:left]] += 1
    return counts


def _work_list(indptr, tokens, counts, page_size):
    """The packed int32 work list (items, then seq_items) of sequences cut into ``counts``
    items of whole pages each, spread evenly."""
    batch = counts.shape[0]
    pages = indptr[1:] - indptr[:-1]
    chunk_pages = torch.clamp(-(-pages // counts), min=1)  # per sequence
    first_item = torch.cumsum(counts, 0) - counts
    num_items = int(counts.sum())
    seq = torch.repeat_interleave(torch.arange(batch), counts)
    j = torch.arange(num_items) - first_item[seq]  # chunk index within its sequence
    start = j * chunk_pages[seq] * page_size  # first token of the item within its sequence
    items = torch.zeros(num_items, ITEM_FIELDS, dtype=torch.int64)
    items[:, 0] = seq
    items[:, 1] = indptr[:-1][seq] + j * chunk_pages[seq]
    items[:, 2] = torch.clamp(tokens[seq] - start, min=0).minimum(chunk_pages[seq] * page_size)
    items[:, 3] = first_item[seq]
    items[:, 4] = counts[seq]
    seq_items = torch.stack([first_item, counts], 1)
    return torch.cat([items.flatten(), seq_items.flatten()]).to(torch.int32)


def make_plan(kv_indptr, kv_last_page_len=None, *, page_size, target_waves=TARGET_WAVES,
              min_chunk_tokens=MIN_CHUNK_TOKENS, block_n=64, num_warps=4, num_stages=3,
              fused=True):
    """The DecodePlan of a page table, with the split policy's knobs exposed."""
    device = kv_indptr.device
    batch = kv_indptr.shape[0] - 1
    indptr, tokens = _lengths(kv_indptr, kv_last_page_len, page_size)  # the one device->host copy
    target_items = max(1, target_waves * _sm_count(device) // NUM_KV_HEADS)
    chunk = -(-max(min_chunk_tokens, -(-int(tokens.sum()) // target_items)) // page_size) * page_size
    counts = torch.clamp((tokens + chunk - 1) // chunk, min=1)  # an empty sequence: one empty item
    num_items = int(counts.sum())
    packed = _work_list(indptr, tokens, counts, page_size).to(device)
    split = bool(counts.max() > 1) if batch else False
    shape = (num_items,) if split else (1,)  # (1,): a valid pointer for the unused argument
    return DecodePlan(
        batch_size=batch, num_items=num_items, split=split,
        items=packed[:num_items * ITEM_FIELDS].view(num_items, ITEM_FIELDS),
        seq_items=packed[num_items * ITEM_FIELDS:].view(batch, 2),
        partial_out=torch.empty((*shape, NUM_QO_HEADS, HEAD_DIM), dtype=torch.float32, device=device),
        partial_lse=torch.empty((*shape, NUM_QO_HEADS), dtype=torch.float32, device=device),
        counters=torch.zeros(batch * NUM_KV_HEADS if split and fused else 1, dtype=torch.int32, device=device),
        block_n=block_n, num_warps=num_warps, num_stages=num_stages, fused=fused, page_size=page_size,
        packed=packed)


def plan(kv_indptr, kv_indices, *rest, page_size, MERGE="fused", WAVES=TARGET_WAVES,
         CHUNK=MIN_CHUNK_TOKENS, BLOCK_N=64, STAGES=3, WARPS=4):
    """Plan from the structural inputs (``kv_indptr, kv_indices[, kv_last_page_len], sm_scale``)
    for pages of ``page_size`` tokens. The rest are a variant's constants: ``MERGE``
    (``"fused"`` or ``"separate"``), ``WAVES`` (programs aimed at, in multiples of the SM
    count), ``CHUNK`` (least tokens an item holds), ``BLOCK_N`` (tokens a step), ``STAGES``
    and ``WARPS`` of the chunk kernel."""
    if MERGE not in ("fused", "separate"):
        raise ValueError(f"MERGE={MERGE!r}: expected 'fused' or 'separate'")
    *last, _sm_scale = rest
    return make_plan(kv_indptr, last[0] if last else None, page_size=page_size, target_waves=WAVES,
                     min_chunk_tokens=CHUNK, block_n=BLOCK_N, num_warps=WARPS, num_stages=STAGES,
                     fused=MERGE == "fused")


@triton.jit
def _field(row, k: tl.constexpr, N: tl.constexpr):
    return tl.sum(tl.where(tl.arange(0, N) == k, row, 0))


@triton.jit
def _merge(part_out_ptr, part_lse_ptr, first, count, out_ptr, lse_ptr, seq, kv_head,
           stride_pb, stride_plb, stride_ob, stride_lb,
           GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, MERGE_BLOCK: tl.constexpr):
    """out[seq, heads of kv_head] = the lse-weighted mean of ``count`` partials from ``first``."""
    heads = kv_head * GROUP + tl.arange(0, GROUP)
    dims = tl.arange(0, HEAD_DIM)
    m = tl.full([GROUP], float("-inf"), tl.float32)
    l = tl.zeros([GROUP], tl.float32)
    acc = tl.zeros([GROUP, HEAD_DIM], tl.float32)
    for i0 in range(0, count, MERGE_BLOCK):
        idx = i0 + tl.arange(0, MERGE_BLOCK)
        ok = idx < count
        rows = (first + idx).to(tl.int64)
        lse_b = tl.load(part_lse_ptr + rows[:, None] * stride_plb + heads[None, :], mask=ok[:, None],
                        other=float("-inf"), cache_modifier=".cg")
        out_b = tl.load(part_out_ptr + rows[:, None, None] * stride_pb + heads[None, :, None] * HEAD_DIM
                        + dims[None, None, :], mask=ok[:, None, None], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(lse_b, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # every lse -inf so far: weights 0
        alpha = tl.exp2(m - m_safe)
        w = tl.exp2(lse_b - m_safe[None, :])
        l = l * alpha + tl.sum(w, 0)
        acc = acc * alpha[:, None] + tl.sum(out_b * w[:, :, None], 0)
        m = m_new
    has = l > 0
    out = tl.where(has[:, None], acc / tl.where(has, l, 1.0)[:, None], 0.0)
    lse = tl.where(has, m + tl.log2(tl.where(has, l, 1.0)), float("-inf"))
    seq64 = seq.to(tl.int64)
    tl.store(out_ptr + seq64 * stride_ob + heads[:, None] * HEAD_DIM + dims[None, :], out.to(out_ptr.dtype.element_ty))
    tl.store(lse_ptr + seq64 * stride_lb + heads, lse)


@triton.jit
def _prefetch_l2(ptrs):
    """Ask the L2 for the 256-byte row at each of ``ptrs`` (a bf16 K or V row of 128): no
    register result, no L1 line, so a later load after the wait reads what is current."""
    addr = ptrs.to(tl.int64)
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tprefetch.global.L2 [$2];\n\tmov.u32 $0, 0;",
                              "=r,l,l", [addr, addr + 128], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _decode_chunk(q_ptr, k_ptr, v_ptr, indices_ptr, items_ptr, out_ptr, lse_ptr,
                  part_out_ptr, part_lse_ptr, counter_ptr, scale_log2,
                  stride_qb, stride_kp, stride_kt, stride_vp, stride_vt, stride_ob, stride_lb,
                  stride_pb, stride_plb,
                  PAGE: tl.constexpr, GROUP: tl.constexpr, NUM_KV: tl.constexpr, BLOCK_H: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, FIELDS: tl.constexpr,
                  MERGE_BLOCK: tl.constexpr, FUSED: tl.constexpr, DOT: tl.constexpr, PDL: tl.constexpr):
    item = tl.program_id(0)
    kv_head = tl.program_id(1)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    info = tl.load(items_ptr + item * FIELDS + tl.arange(0, FIELDS))  # the plan's: no kernel writes it
    seq = _field(info, 0, FIELDS)
    offset = _field(info, 1, FIELDS)
    ntok = _field(info, 2, FIELDS)
    group_first = _field(info, 3, FIELDS)
    group_count = _field(info, 4, FIELDS)

    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < GROUP
    dims = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + rows
    if PDL:  # the first block's page indices, and its K and V rows into L2, before the wait
        first = tl.arange(0, BLOCK_N)
        first_ok = first < ntok
        page0 = tl.load(indices_ptr + offset + first // PAGE, mask=first_ok, other=0).to(tl.int64)
        row0 = page0 * stride_kp + (first % PAGE) * stride_kt + kv_head * HEAD_DIM
        _prefetch_l2(tl.where(first_ok, row0, 0) + k_ptr)
        _prefetch_l2(tl.where(first_ok, page0 * stride_vp + (first % PAGE) * stride_vt + kv_head * HEAD_DIM, 0)
                     + v_ptr)
        tl.extra.cuda.gdc_wait()  # q (and the new token's K/V) are the previous kernels' output
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qb + heads[:, None] * HEAD_DIM + dims[None, :],
                mask=row_ok[:, None], other=0.0).to(DOT)

    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    for t0 in range(0, ntok, BLOCK_N):
        tokens = t0 + tl.arange(0, BLOCK_N)
        tok_ok = tokens < ntok
        page = tl.load(indices_ptr + offset + tokens // PAGE, mask=tok_ok, other=0).to(tl.int64)
        slot = tokens % PAGE
        k = tl.load(k_ptr + (page * stride_kp + slot * stride_kt + kv_head * HEAD_DIM)[:, None] + dims[None, :],
                    mask=tok_ok[:, None], other=0.0)
        v = tl.load(v_ptr + (page * stride_vp + slot * stride_vt + kv_head * HEAD_DIM)[:, None] + dims[None, :],
                    mask=tok_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(DOT))) * scale_log2
        s = tl.where(tok_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT), v.to(DOT))
        m = m_new

    has = l > 0
    out = tl.where(has[:, None], acc / tl.where(has, l, 1.0)[:, None], 0.0)
    lse = tl.where(has, m + tl.log2(tl.where(has, l, 1.0)), float("-inf"))
    if group_count == 1:  # the whole sequence: the answer itself
        seq64 = seq.to(tl.int64)
        tl.store(out_ptr + seq64 * stride_ob + heads[:, None] * HEAD_DIM + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
        tl.store(lse_ptr + seq64 * stride_lb + heads, lse, mask=row_ok)
    else:
        item64 = item.to(tl.int64)
        tl.store(part_out_ptr + item64 * stride_pb + heads[:, None] * HEAD_DIM + dims[None, :], out,
                 mask=row_ok[:, None])
        tl.store(part_lse_ptr + item64 * stride_plb + heads, lse, mask=row_ok)
        if FUSED:
            tl.debug_barrier()  # every thread's partial stores precede the release below
            arrived = tl.atomic_add(counter_ptr + seq * NUM_KV + kv_head, 1, sem="acq_rel")
            if arrived == group_count - 1:  # the last of its sequence: merge, then re-arm
                _merge(part_out_ptr, part_lse_ptr, group_first, group_count, out_ptr, lse_ptr, seq, kv_head,
                       stride_pb, stride_plb, stride_ob, stride_lb, GROUP, HEAD_DIM, MERGE_BLOCK)
                tl.atomic_xchg(counter_ptr + seq * NUM_KV + kv_head, 0)


@triton.jit
def _merge_chunks(part_out_ptr, part_lse_ptr, seq_items_ptr, out_ptr, lse_ptr,
                  stride_pb, stride_plb, stride_ob, stride_lb,
                  GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, MERGE_BLOCK: tl.constexpr,
                  PDL: tl.constexpr):
    seq = tl.program_id(0)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    first = tl.load(seq_items_ptr + seq * 2)  # the plan's
    count = tl.load(seq_items_ptr + seq * 2 + 1)
    if PDL:
        tl.extra.cuda.gdc_wait()  # the partials are the chunk kernel's output
    if count > 1:  # an unsplit sequence wrote its answer already
        _merge(part_out_ptr, part_lse_ptr, first, count, out_ptr, lse_ptr, seq, tl.program_id(1),
               stride_pb, stride_plb, stride_ob, stride_lb, GROUP, HEAD_DIM, MERGE_BLOCK)


_CHUNK = TritonLaunch(_decode_chunk)
_CHUNK_BOUND = {}  # (page size, block_n, fused, warps, stages) -> the bound launch


def _chunk_launch(plan):
    """``_decode_chunk`` bound to the plan's constexprs and launch shape (memoized: per call, a tuple)."""
    key = (plan.page_size, plan.block_n, plan.fused, plan.num_warps, plan.num_stages)
    bound = _CHUNK_BOUND.get(key)
    if bound is None:
        bound = _CHUNK_BOUND[key] = _CHUNK.bind(
            PAGE=plan.page_size, GROUP=GROUP, NUM_KV=NUM_KV_HEADS, BLOCK_H=BLOCK_H, HEAD_DIM=HEAD_DIM,
            BLOCK_N=plan.block_n, FIELDS=ITEM_FIELDS, MERGE_BLOCK=MERGE_BLOCK, FUSED=plan.fused,
            DOT=tl.float32 if os.environ.get("TRITON_INTERPRET") == "1" else tl.bfloat16,
            num_warps=plan.num_warps, num_stages=plan.num_stages)
    return bound
_MERGE = TritonLaunch(_merge_chunks).bind(GROUP=GROUP, HEAD_DIM=HEAD_DIM, MERGE_BLOCK=MERGE_BLOCK, num_warps=4)


@torch.no_grad()
def gqa_paged_decode(plan, q, k_cache, v_cache, kv_indptr, kv_indices, *rest):
    sm_scale = rest[-1]
    if k_cache.shape[1] != plan.page_size:
        raise ValueError(f"k_cache has pages of {k_cache.shape[1]} tokens; the plan is for {plan.page_size}")
    if q.stride(1) != HEAD_DIM or k_cache.stride(2) != HEAD_DIM or v_cache.stride(2) != HEAD_DIM \
            or q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("q, k_cache and v_cache need contiguous heads and head dims")
    batch = q.shape[0]
    output = torch.empty((batch, NUM_QO_HEADS, HEAD_DIM), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, NUM_QO_HEADS), dtype=torch.float32, device=q.device)
    if plan.num_items == 0:
        return output, lse
    part_out, part_lse = plan.partial_out, plan.partial_lse
    _chunk_launch(plan)(
        (plan.num_items, NUM_KV_HEADS),
        q, k_cache, v_cache, kv_indices, plan.items, output, lse, part_out, part_lse, plan.counters,
        float(sm_scale) * LOG2E, q.stride(0), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0),
        v_cache.stride(1), output.stride(0), lse.stride(0), part_out.stride(0), part_lse.stride(0))
    if plan.split and not plan.fused:
        _MERGE((batch, NUM_KV_HEADS), part_out, part_lse, plan.seq_items, output, lse, part_out.stride(0),
               part_lse.stride(0), output.stride(0), lse.stride(0))
    return output, lse

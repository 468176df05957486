#!/usr/bin/env python3
"""Make the FlashInfer level-10 dump fixture on a GPU: ``python make_flashinfer_dump.py OUT_DIR``.

Runs, with FlashInfer's own API logging (``FLASHINFER_LOGLEVEL=10``,
``FLASHINFER_DUMP_SAFETENSORS=1``, set here before flashinfer is imported):
three ``flashinfer.norm.rmsnorm`` calls on bf16 rows of 4096 (batch 1 twice, batch 2), one
on rows of 1024 (no shipped definition matches it), and a ``BatchDecodeWithPagedKVCacheWrapper``
plan + run (32 query heads, 8 KV heads, head dim 128, page size 1, two sequences of 3 and 2
pages, an index buffer of 8 slots of which 5 are used, as serving engines over-allocate).

Writes ``OUT_DIR/dump/`` (the FLASHINFER_DUMP_DIR, as FlashInfer wrote it),
``OUT_DIR/expected.json`` (what ``fibuild import flashinfer-dump`` must make of it) and
``OUT_DIR/log.txt`` (FlashInfer's API log). Shapes are small: the whole dump is ~100 kB.
Needs flashinfer-python 0.7.2, torch with CUDA and safetensors; stops itself after 8 minutes.
To commit it: copy OUT_DIR to ``tests/fixtures/flashinfer_dump/h200/`` (dump/ and
expected.json; log.txt is not needed) and run
``python -m pytest tests/unit/dataset/test_dump_import.py -k gpu_dump``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
from pathlib import Path


def main(out: Path) -> int:
    dump = out / "dump"
    if dump.exists():
        shutil.rmtree(dump)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "FLASHINFER_LOGLEVEL": "10",
        "FLASHINFER_DUMP_DIR": str(dump),
        "FLASHINFER_DUMP_SAFETENSORS": "1",
        "FLASHINFER_DUMP_INCLUDE": "rmsnorm,BatchDecodeWithPagedKVCacheWrapper.plan,"
                                   "BatchDecodeWithPagedKVCacheWrapper.run",
        "FLASHINFER_LOGDEST": str(out / "log.txt"),
    })
    signal.alarm(480)  # bounded: a JIT build gone wrong must not hold the GPU

    import flashinfer  # after the environment: api_logging reads it at import
    import torch
    from flashinfer.decode import BatchDecodeWithPagedKVCacheWrapper
    from flashinfer.norm import rmsnorm

    print(f"flashinfer {flashinfer.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0)}", flush=True)
    dev = torch.device("cuda:0")
    gen = torch.Generator(device=dev).manual_seed(0)

    weight = torch.randn(4096, device=dev, generator=gen).to(torch.bfloat16)
    for rows in (1, 1, 2):
        x = torch.randn(rows, 4096, device=dev, generator=gen).to(torch.bfloat16)
        rmsnorm(x, weight, eps=1e-6)
    small = torch.randn(2, 1024, device=dev, generator=gen).to(torch.bfloat16)
    rmsnorm(small, torch.ones(1024, device=dev, dtype=torch.bfloat16))
    print("rmsnorm: 4 calls", flush=True)

    workspace = torch.empty(32 * 1024 * 1024, dtype=torch.uint8, device=dev)
    wrapper = BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    indptr = torch.tensor([0, 3, 5], dtype=torch.int32, device=dev)
    indices = torch.tensor([4, 0, 7, 2, 9, 0, 0, 0], dtype=torch.int32, device=dev)
    last_page_len = torch.ones(2, dtype=torch.int32, device=dev)
    sm_scale = 1.0 / math.sqrt(128)
    wrapper.plan(indptr, indices, last_page_len, 32, 8, 128, 1, pos_encoding_mode="NONE",
                 q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16, sm_scale=sm_scale)
    k_cache = torch.randn(12, 1, 8, 128, device=dev, generator=gen).to(torch.bfloat16)
    v_cache = torch.randn(12, 1, 8, 128, device=dev, generator=gen).to(torch.bfloat16)
    q = torch.randn(2, 32, 128, device=dev, generator=gen).to(torch.bfloat16)
    out_t, lse = wrapper.run(q, (k_cache, v_cache), return_lse=True)
    torch.cuda.synchronize()
    print(f"decode: plan + run, output {tuple(out_t.shape)}, lse {tuple(lse.shape)}", flush=True)

    calls = sorted(p.name for p in dump.iterdir() if p.is_dir())
    expected = {
        "rmsnorm_batch_sizes": [1, 2],
        "decode_axes": {"batch_size": 2, "num_pages": 12, "len_indptr": 3, "num_kv_indices": 5},
        "kv_indices": [4, 0, 7, 2, 9],
        "sm_scale": sm_scale,
        # call folders no definition matches, by their "<pid>_<function>_call<N>" tail
        "unmatched": [c.rsplit("_pid", 1)[-1] for c in calls if c.endswith("rmsnorm_call0004")],
        "calls": calls,
        "flashinfer": flashinfer.__version__,
        "device": torch.cuda.get_device_name(0),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    size = sum(p.stat().st_size for p in dump.rglob("*") if p.is_file())
    print(f"{len(calls)} call folders, {size / 1024:.1f} kB in {dump}", flush=True)
    for name in calls:
        print("  " + name)
    return 0 if len(calls) == 6 else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]).resolve()))

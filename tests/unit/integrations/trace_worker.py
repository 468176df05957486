"""A process that traces stand-in flashinfer calls into a workspace (run by the tests).

``python trace_worker.py ROOT SEED N [loop]``: enables tracing (flush every record), calls
rmsnorm on N batch sizes and plans/runs one decode, then exits (atexit flushes); with
``loop`` it keeps tracing new batch sizes until killed.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures" / "flashinfer_stub"))

import fibuild  # noqa: E402

root, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
loop = len(sys.argv) > 4
fibuild.enable(trace=True, root=root, flush_every=1, per_key=1)
import flashinfer  # noqa: E402

w = torch.rand(64, dtype=torch.bfloat16)
wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8))
indptr = torch.tensor([0, 3, 7], dtype=torch.int32)
wrapper.plan(indptr, torch.arange(7, dtype=torch.int32), torch.ones(2, dtype=torch.int32), 8, 2, 16, 1,
             q_data_type=torch.bfloat16, sm_scale=0.5)
wrapper.run(torch.randn(2, 8, 16, dtype=torch.bfloat16),
            (torch.randn(9, 2, 16, dtype=torch.bfloat16), torch.randn(9, 2, 16, dtype=torch.bfloat16)))
batch = 1
while True:
    for b in range(1, n + 1):
        flashinfer.rmsnorm(torch.randn(batch * 1000 + b, 64, dtype=torch.bfloat16), w, 1e-5)
    batch += 1
    if not loop:
        break
    print("flushed", flush=True)

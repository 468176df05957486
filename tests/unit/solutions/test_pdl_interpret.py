"""The dependent-launch code paths of the PDL solutions, run under TRITON_INTERPRET=1 on CPU.

The interpreter cannot execute ``griddepcontrol`` (nor the decode's L2 prefetch, inline PTX),
and fibuild's launcher never sets ``PDL`` there. This check forces ``PDL=True`` through the
launcher and stands in no-ops for those instructions (counting the waits), so the code that
only PDL builds run (the GEMV's first tile before the wait, its loop from the second tile,
the decode's prefetch of the first block) is checked against the reference on CPU. On a GPU,
tests/gpu/test_pdl_gpu.py checks the real instructions.
"""
from __future__ import annotations

import json

from interpreted_run import DEFS_SUPPORT, run_interpreted

CHILD = r"""
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
import defs_support as ds
import triton.language.extra.cuda as cuda
from fibuild.compile import launch

waits = {"n": 0}
def _wait(*args, **kwargs):
    waits["n"] += 1
cuda.gdc_wait = _wait
cuda.gdc_launch_dependents = lambda *args, **kwargs: None
forced = launch.BoundLaunch._options
launch.BoundLaunch._options = lambda self, pdl: forced(self, True)

ws = ds.workspace()
report = {}
for definition, family, constants, axes_list in json.loads(sys.argv[2]):
    sol = next(s for s in ws.solutions(definition)
               if s.family == family and all(dict(s.constants).get(k) == v for k, v in constants.items()))
    defn = ws.definition(sol.definition)
    entry = ds.load_entry(sol)
    for module in list(sys.modules.values()):  # the L2 prefetch is inline PTX: not interpretable
        if hasattr(module, "_prefetch_l2"):
            module._prefetch_l2 = lambda ptrs: None
    results = []
    for axes in axes_list:
        workload = next(w for w in defn.workloads if all(w.axes.get(k) == v for k, v in axes.items())) \
            if defn.custom_inputs_entrypoint else type(defn.workloads[0])(uuid="t", axes=axes)
        args = ds.make_inputs(defn, workload, seed=3)
        before = waits["n"]
        got = ds.solution_outputs(defn, sol, entry, args)
        results.append({"axes": axes, "waits": waits["n"] - before,
                        "mismatches": ds.mismatches(defn, got, ds.reference_outputs(defn, args))})
    report[f"{definition}/{sol.name}"] = results
print(json.dumps(report))
"""

CASES = [  # definition, solution (family), constants of the variant, axes
    ("rmsnorm_h4096", "triton_row", {}, [{"batch_size": 3}]),
    ("fused_add_rmsnorm_h4096", "triton_row", {}, [{"batch_size": 3}]),
    ("silu_and_mul_i14336", "triton_vec", {}, [{"num_tokens": 2}]),
    ("gemm_n4096_k4096_bf16", "triton_stream", {"KERNEL": "fma"}, [{"M": 1}]),
    ("gemm_n4096_k4096_bf16", "triton_stream", {"KERNEL": "dot", "BLOCK_M": 16}, [{"M": 3}]),
    ("gqa_paged_decode_h32_kv8_d128_ps1", "triton_split_kv", {"MERGE": "fused"},
     [{"batch_size": 1, "num_kv_indices": 512}]),
    ("gqa_paged_decode_h32_kv8_d128_ps1", "triton_split_kv", {"MERGE": "separate"},
     [{"batch_size": 1, "num_kv_indices": 512}]),
]


def test_pdl_code_paths_match_the_reference_under_the_interpreter():
    report = run_interpreted(CHILD, DEFS_SUPPORT, json.dumps(CASES))
    for qualified, results in report.items():
        for r in results:
            assert r["waits"] > 0, (qualified, r)  # the PDL path really ran
            assert r["mismatches"] == [], (qualified, r)
    assert len(report) == len(CASES)

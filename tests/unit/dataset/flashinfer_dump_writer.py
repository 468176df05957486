"""Writes dump folders the way FlashInfer 0.7.2's ``flashinfer/api_logging.py`` does at
``FLASHINFER_LOGLEVEL=10`` with ``FLASHINFER_DUMP_SAFETENSORS=1``: a folder
``<YYYYmmdd_HHMMSS_mmm>_pid<PID>_<function>_call<NNNN>`` per call holding
``inputs.safetensors`` (tensors ``arg_<i>`` / ``kwarg_<name>``, tuple items ``<key>__<j>``),
``outputs.safetensors`` (``result`` or ``result_<i>``) and ``metadata.jsonl`` (an
``inputs_saved`` record, then a ``completed`` one, each also appended to ``session.jsonl``).
The hand-made fixture of the dump tests, until the one made on a GPU is committed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

RMSNORM_SIGNATURE = ("(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-06, out: "
                     "Optional[torch.Tensor] = None, enable_pdl: Optional[bool] = None) -> torch.Tensor")
FUSED_ADD_RMSNORM_SIGNATURE = ("(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float "
                               "= 1e-06, enable_pdl: Optional[bool] = None) -> None")
DECODE_PLAN_SIGNATURE = ("(self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, "
                         "num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int, "
                         "*deprecated_positional_args: Any, **kwargs: Any) -> None")
DECODE_RUN_SIGNATURE = ("(self, q: torch.Tensor, paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, "
                        "torch.Tensor]], *args, q_scale: Optional[float] = None, k_scale: Optional[float] = None, "
                        "v_scale: Optional[float] = None, out: Optional[torch.Tensor] = None, lse: "
                        "Optional[torch.Tensor] = None, return_lse: bool = False, enable_pdl: Optional[bool] = "
                        "None, window_left: Optional[int] = None, sinks: Optional[torch.Tensor] = None, "
                        "q_len_per_req: Optional[int] = None, skip_softmax_threshold_scale_factor: "
                        "Optional[float] = None, kv_cache_sf: Optional[Union[torch.Tensor, Tuple[torch.Tensor, "
                        "torch.Tensor]]] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]")


class FakeWrapper:
    """Stands for a wrapper object: its repr and id land in the metadata as FlashInfer's do."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<flashinfer.decode.{self.name} object at 0x{id(self):x}>"


def _meta(t: torch.Tensor) -> dict:
    return {"type": "torch.Tensor", "shape": list(t.shape), "dtype": str(t.dtype), "stride": list(t.stride()),
            "device": str(t.device), "requires_grad": t.requires_grad, "is_contiguous": t.is_contiguous()}


def _value(value, key: str, tensors: dict):
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {**_meta(value), "tensor_key": key}
    if isinstance(value, (list, tuple)):
        return {"type": type(value).__name__, "length": len(value),
                "items": [_value(v, f"{key}__{i}", tensors) for i, v in enumerate(value)], "truncated": False}
    if isinstance(value, torch.dtype):
        return {"type": "torch.dtype", "value": str(value)}
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    return {"type": type(value).__name__, "repr": str(value)[:1000]}


class DumpWriter:
    """Writes calls into ``root`` as one process would, with per-function call counters."""

    def __init__(self, root: Path, pid: int = 4242):
        self.root = Path(root)
        self.pid = pid
        self.counter: dict[str, int] = {}
        self.clock = 0

    def call(self, function: str, module: str, signature: str, args: tuple = (), kwargs: dict | None = None,
             result=None) -> Path:
        kwargs = kwargs or {}
        self.counter[function] = self.counter.get(function, 0) + 1
        self.clock += 1
        stamp = f"20261130_101500_{self.clock:03d}"
        folder = self.root / f"{stamp}_pid{self.pid}_{function}_call{self.counter[function]:04d}"
        folder.mkdir(parents=True)
        tensors: dict = {}
        metadata: dict = {}
        for i, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                tensors[f"arg_{i}"] = arg
            else:
                metadata[f"arg_{i}"] = _value(arg, f"arg_{i}", tensors)
        for key, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                tensors[f"kwarg_{key}"] = value
            else:
                metadata[f"kwarg_{key}"] = _value(value, f"kwarg_{key}", tensors)
        if tensors:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "inputs.safetensors"))
        size = sum(t.element_size() * t.nelement() for t in tensors.values())
        record = {
            "function_name": function, "module": module, "call_sequence": self.counter[function],
            "timestamp": stamp, "process_id": self.pid, "input_metadata": metadata, "output_metadata": {},
            "tensor_info": {"input_tensor_keys": list(tensors), "output_tensor_keys": [],
                            "input_size_bytes": size, "input_size_mb": size / (1024 * 1024)},
            "tensor_details": {k: {"shape": list(t.shape), "dtype": str(t.dtype), "stride": list(t.stride()),
                                   "device": str(t.device)} for k, t in tensors.items()},
            "tensor_format": "safetensors", "function_signature": signature,
            "versions": {"torch": torch.__version__, "python": "3.11.9", "flashinfer": "0.7.2"},
            "execution_status": "inputs_saved", "graph_capture": False,
        }
        if args and isinstance(args[0], FakeWrapper):
            record["self_id"] = id(args[0])
        record["dump_dir"] = str(folder)
        self._append(folder / "metadata.jsonl", record)
        self._append(self.root / "session.jsonl", record)
        outputs: dict = {}
        if isinstance(result, torch.Tensor):
            outputs["result"] = result
        elif isinstance(result, tuple):
            outputs.update({f"result_{i}": t for i, t in enumerate(result)})
        else:
            record["output_metadata"] = {"result": _value(result, "result", outputs)}
        if outputs:
            save_file({k: v.contiguous() for k, v in outputs.items()}, str(folder / "outputs.safetensors"))
        record = dict(record, execution_status="completed")
        record["tensor_info"] = dict(record["tensor_info"], output_tensor_keys=list(outputs))
        self._append(folder / "metadata.jsonl", record)
        self._append(self.root / "session.jsonl", record)
        return folder

    @staticmethod
    def _append(path: Path, record: dict) -> None:
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def write_handmade_dump(root: Path) -> dict:
    """Three rmsnorm calls (batch 3 twice, batch 5), a fused_add_rmsnorm call, a decode plan
    with an over-allocated index buffer and two runs, and a call no definition matches.
    Returns the page table it planned with."""
    gen = torch.Generator().manual_seed(0)
    w = DumpWriter(root)
    weight = torch.randn(4096, generator=gen).to(torch.bfloat16)
    for rows in (3, 3, 5):
        x = torch.randn(rows, 4096, generator=gen).to(torch.bfloat16)
        w.call("rmsnorm", "flashinfer.norm", RMSNORM_SIGNATURE, (x, weight), {"eps": 1e-6}, result=x.clone())
    x = torch.randn(2, 4096, generator=gen).to(torch.bfloat16)
    w.call("fused_add_rmsnorm", "flashinfer.norm", FUSED_ADD_RMSNORM_SIGNATURE, (x, x.clone(), weight, 1e-6))
    wrapper = FakeWrapper("BatchDecodeWithPagedKVCacheWrapper")
    indptr = torch.tensor([0, 3, 5], dtype=torch.int32)
    indices = torch.tensor([4, 0, 7, 2, 9, 0, 0, 0], dtype=torch.int32)  # pool over-allocated: 8 slots, 5 used
    last = torch.ones(2, dtype=torch.int32)
    w.call("BatchDecodeWithPagedKVCacheWrapper.plan", "flashinfer.decode", DECODE_PLAN_SIGNATURE,
           (wrapper, indptr, indices, last, 32, 8, 128, 1),
           {"pos_encoding_mode": "NONE", "q_data_type": torch.bfloat16, "kv_data_type": torch.bfloat16,
            "sm_scale": 0.08838834764831845})
    k = torch.randn(12, 1, 8, 128, generator=gen).to(torch.bfloat16)
    v = torch.randn(12, 1, 8, 128, generator=gen).to(torch.bfloat16)
    for _ in range(2):
        q = torch.randn(2, 32, 128, generator=gen).to(torch.bfloat16)
        w.call("BatchDecodeWithPagedKVCacheWrapper.run", "flashinfer.decode", DECODE_RUN_SIGNATURE,
               (wrapper, q, (k, v)), {"return_lse": True},
               result=(torch.zeros(2, 32, 128, dtype=torch.bfloat16), torch.zeros(2, 32)))
    x = torch.randn(2, 1024, generator=gen).to(torch.bfloat16)  # no h1024 definition
    w.call("rmsnorm", "flashinfer.norm", RMSNORM_SIGNATURE, (x, torch.ones(1024, dtype=torch.bfloat16)))
    return {"kv_indptr": indptr, "kv_indices": indices[:5]}

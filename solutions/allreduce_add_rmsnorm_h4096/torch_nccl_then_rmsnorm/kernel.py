"""All-reduce, then residual add + RMSNorm, as two separate steps in plain torch.

The all-reduce is ``torch.distributed.all_reduce`` on the bf16 tensor of the default
process group (NCCL on CUDA, gloo on CPU): the unfused baseline a tensor-parallel layer
runs. Outside a process group the all-reduce is over one rank (the identity).
"""
import torch
import torch.distributed as dist

EPS = 1e-5


@torch.no_grad()
def allreduce_add_rmsnorm(hidden_states: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor):
    total = hidden_states.clone()  # the caller's partial sum stays untouched
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    residual_out = (total.float() + residual.float()).to(residual.dtype)
    x = residual_out.float()
    x = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + EPS)
    return (x * weight.float()).to(hidden_states.dtype), residual_out

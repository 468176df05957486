"""RMSNorm in plain torch with fp32 accumulation."""
import torch

EPS = 1e-5


@torch.no_grad()
def rmsnorm(hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    x = hidden_states.float()
    x = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + EPS)
    return (x * weight.float()).to(hidden_states.dtype)

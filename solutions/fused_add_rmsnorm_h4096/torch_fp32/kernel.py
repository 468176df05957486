"""Fused residual add + RMSNorm in plain torch, both outputs written in place."""
import torch

EPS = 1e-5


@torch.no_grad()
def fused_add_rmsnorm(hidden_states: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    residual.add_(hidden_states)  # torch adds bf16 in fp32 and rounds once, as the definition does
    x = residual.float()
    x = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + EPS)
    hidden_states.copy_(x * weight.float())

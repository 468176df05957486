"""SiLU-and-mul in plain torch with fp32 math."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)

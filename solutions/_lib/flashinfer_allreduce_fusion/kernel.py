"""FlashInfer baseline: flashinfer.comm.trtllm_allreduce_fusion with pattern
kARResidualRMSNorm (all-reduce + residual add + RMSNorm in one kernel; CUDA, one GPU a rank).

Two entry points share this file: ``oneshot`` (every rank reads every peer's whole buffer
and reduces all tokens) and ``twoshot`` (reduce-scatter, norm on this rank's slice of
tokens, all-gather; needs more tokens than ranks). Both write into the outputs they are
given (destination passing). The IPC workspace is collective: it is created on the first
call of every rank of the default process group, sized for at least
``MIN_WORKSPACE_TOKENS`` tokens, and created again (larger) when a call needs more.
"""
import torch

EPS = 1e-5  # the definition fixes 1e-5
MIN_WORKSPACE_TOKENS = 8192

_workspaces = {}  # (world size, rank, device index) -> (ipc handles, workspace tensor, max tokens)


def _comm():
    try:
        import flashinfer.comm as comm
    except ImportError as exc:
        raise ModuleNotFoundError(
            "this baseline needs the flashinfer-python package: pip install 'fibuild[flashinfer]'"
        ) from exc
    return comm


def _group():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("trtllm_allreduce_fusion runs on the ranks of a torch.distributed process "
                           "group (NCCL, one GPU a rank); none is initialized")
    return dist, dist.get_world_size(), dist.get_rank()


def _workspace(comm, dist, world: int, rank: int, tokens: int, hidden: int, device: torch.device):
    key = (world, rank, device.index)
    found = _workspaces.get(key)
    if found is not None and found[2] >= tokens:
        return found[1]
    if found is not None:
        comm.trtllm_destroy_ipc_workspace_for_all_reduce_fusion(found[0], group=dist.group.WORLD)
    max_tokens = max(tokens, MIN_WORKSPACE_TOKENS)
    handles, tensor = comm.trtllm_create_ipc_workspace_for_all_reduce_fusion(
        tp_rank=rank, tp_size=world, max_token_num=max_tokens, hidden_dim=hidden, group=dist.group.WORLD)
    _workspaces[key] = (handles, tensor, max_tokens)
    return tensor


def _fused(hidden_states, residual, weight, output, residual_out, *, oneshot: bool) -> None:
    comm = _comm()
    dist, world, rank = _group()
    if not hidden_states.is_cuda:
        raise ValueError("trtllm_allreduce_fusion needs CUDA tensors")
    tokens, hidden = hidden_states.shape
    if not oneshot and tokens <= world:
        raise ValueError(f"two-shot all-reduce needs more tokens than ranks (num_tokens={tokens}, "
                         f"world_size={world})")
    workspace = _workspace(comm, dist, world, rank, tokens, hidden, hidden_states.device)
    comm.trtllm_allreduce_fusion(
        allreduce_in=hidden_states, world_size=world, world_rank=rank, token_num=tokens,
        hidden_dim=hidden, workspace_ptrs=workspace, launch_with_pdl=True, use_oneshot=oneshot,
        trigger_completion_at_end=True, fp32_acc=True,
        pattern_code=comm.AllReduceFusionPattern.kARResidualRMSNorm, allreduce_out=None,
        residual_in=residual, residual_out=residual_out, norm_out=output, quant_out=None,
        scale_out=None, rms_gamma=weight, rms_eps=EPS, scale_factor=None, layout_code=None)


@torch.no_grad()
def oneshot(hidden_states, residual, weight, output, residual_out) -> None:
    _fused(hidden_states, residual, weight, output, residual_out, oneshot=True)


@torch.no_grad()
def twoshot(hidden_states, residual, weight, output, residual_out) -> None:
    _fused(hidden_states, residual, weight, output, residual_out, oneshot=False)

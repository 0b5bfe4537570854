"""Data-parallel training on PyTorch's own engine, set up once before the loop.

Launched by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous), every process runs
the same recipe: gloo on CPU, NCCL on CUDA. A plain `python` launch is a world of one and needs no
process group at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from data2vec.errors import Data2VecError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """True in rank 0 of a torchrun job and in a plain launch: the one process that reports to the user.
    Read from torchrun's environment, so it holds before the process group exists and after it is gone."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (if any) and pin this process to its GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise Data2VecError(f"process {rank} wants GPU {local_rank} but only {torch.cuda.device_count()} are "
                                "visible; lower --nproc_per_node to the number of GPUs")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=torch.device("cuda", local_rank)
                                if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each process's own GPU (cuda:LOCAL_RANK); CPU stays CPU."""
    return torch.device("cuda", info.local_rank) if device.type == "cuda" else device


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over processes (for logging; a host sync, so only at log steps)."""
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world_size


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


GRADIENT_BUCKET = 1 << 24  # elements per all-reduce: bounds the extra memory of the flat copy


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Replace each gradient by its mean over processes, without DistributedDataParallel.

    Fine-tuning uses this rather than DDP because it freezes and unfreezes parameters during the run (the
    frozen start of speech recognition), which DDP, fixing its set of trained parameters when it wraps the
    model, does not allow. A parameter with no gradient on any process keeps none (so AdamW skips it as in
    one process); one with a gradient on some processes only counts zeros for the others. All processes
    must pass the same parameters in the same order (they do: freezing depends on the step alone)."""
    if not info.enabled or not params:
        return
    device = params[0].device
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    dist.all_reduce(present, op=dist.ReduceOp.SUM)
    seen_anywhere = [count > 0 for count in present.tolist()]  # one host read for all buckets
    start = 0
    while start < len(params):  # buckets of about GRADIENT_BUCKET elements
        end, size = start, 0
        while end < len(params) and (end == start or size + params[end].numel() <= GRADIENT_BUCKET):
            size += params[end].numel()
            end += 1
        bucket = params[start:end]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= info.world_size
        offset = 0
        for p, seen in zip(bucket, seen_anywhere[start:end]):
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone() if seen else None
            offset += n
        start = end


def any_process(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether `flag` holds on any process (one small all-reduce; just `flag` in a single process). The tensor
    lives on `device`: NCCL cannot reduce CPU tensors."""
    if not info.enabled:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device), info).item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, strategy: str, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: the model itself, DDP around it, or the model sharded in place
    with FSDP2 (each block of student and teacher its own unit, so the EMA update pairs identical shards)."""
    if not info.enabled:
        return model
    # layer drop skips blocks, each process its own: their parameters get no gradient in that step
    layer_drop = model.cfg.model.layer_drop > 0
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=layer_drop)
    if layer_drop:  # a block one process skips and another runs would wait forever for its all-gather
        raise Data2VecError(f"model.layer_drop={model.cfg.model.layer_drop} needs train.strategy=ddp with more "
                            "than one process (FSDP shards each block); set model.layer_drop=0 or use ddp")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (info.world_size,))
    for encoder in (model.student, model.teacher):
        for block in encoder.encoder.blocks:
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model weights and optimiser state keyed by parameter name (a collective under FSDP: every
    process must call it). The same format whatever the strategy, so checkpoints move between them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model, options=_options(cpu_offload=True))
    optim = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    return weights, optim


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict,
                    optim: dict | None) -> None:
    """Inverse of :func:`full_state`; every process passes the full checkpoint and keeps its shard. `optim`
    None (a weights-only checkpoint) leaves the optimiser fresh."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, weights, options=_options(strict=True))
    if optim is not None:
        set_optimizer_state_dict(model, optimizer, optim, options=_options())

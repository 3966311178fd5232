"""Multi-GPU and multi-node training through torchrun: each rank trains on its shard of the
images and gradients are averaged across ranks after every backward pass."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Rank:
    index: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0


def init_distributed(device: torch.device) -> Rank:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Rank()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Rank(index=dist.get_rank(), world_size=dist.get_world_size())


def shard_indices(count: int, rank: Rank) -> list[int]:
    """The images of this rank: every world_size-th index, the list first padded by wrapping
    around (as torch's DistributedSampler does) so that every rank takes the same number of
    steps; unequal step counts would leave ranks waiting on each other's all-reduce forever."""
    total = -(-count // rank.world_size) * rank.world_size
    padded = [i % count for i in range(total)]
    return padded[rank.index :: rank.world_size]


def average_gradients(modules: list[nn.Module], rank: Rank) -> None:
    if rank.world_size <= 1:
        return
    for module in modules:
        for parameter in module.parameters():
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= rank.world_size


def local_rank() -> int:
    """This process's index among the processes of its machine (torchrun's LOCAL_RANK): the
    GPU it takes."""
    return int(os.environ.get("LOCAL_RANK", "0"))

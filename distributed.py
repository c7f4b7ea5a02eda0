"""Data-parallel training across processes started by torchrun: which process this is, its share
of each batch, and sums across processes. With one process (plain `python`) every call is a no-op
and nothing touches torch.distributed.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and the rendezvous address) for each process.
"""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils import InputError


@dataclass(frozen=True)
class Ranks:
    """This process's place among `world` processes; rank 0 writes the run folder."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    def share(self, rows):
        """This rank's contiguous part of `rows` (1-D); the parts differ in length by one at most."""
        return rows if self.world == 1 else torch.tensor_split(rows, self.world)[self.rank]

    def all_sum(self, tensor):
        """The elementwise sum of `tensor` over every rank (a new tensor on every rank)."""
        if self.world == 1:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total


def _env_int(name, default):
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r}: expected an integer (torchrun sets it)") from None


def start(device, timeout_seconds):
    """Join the process group that torchrun set up, if there is one: NCCL on CUDA, gloo on the CPU.
    A collective that waits longer than `timeout_seconds` for another process fails the run. With
    several processes on CUDA each takes the GPU of its LOCAL_RANK. Returns (Ranks, device)."""
    world = _env_int("WORLD_SIZE", 1)
    if world == 1:
        return Ranks(), device
    ranks = Ranks(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=world,
                            timeout=timedelta(seconds=timeout_seconds))
    return ranks, device


def stop(ranks):
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()

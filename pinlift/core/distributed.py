"""One distributed setup for every trainer: join torchrun's process group or start a one-process group;
NCCL on CUDA, gloo on CPU."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Env:
    rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(prefer_cuda: bool = True) -> Env:
    """Join the process group torchrun set up, or start a one-process group; pick the device."""
    use_cuda = prefer_cuda and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend)
        else:
            store_file = tempfile.NamedTemporaryFile(prefix="pinlift-pg-", delete=False).name
            dist.init_process_group(backend, init_method=f"file://{store_file}", rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Env(rank, world, device, dist.get_backend())

"""One distributed code path for every device: NCCL on CUDA, gloo on CPU; torchrun or a single process."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.model_parallel import get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.types import ShardingPlan


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


def plan_for(model: torch.nn.Module, world_size: int, compute_device: str, group=None) -> ShardingPlan:
    """TorchRec's planner: a sharding plan for ``world_size`` devices of ``compute_device``.

    With a process group the plan is agreed collectively; without one (e.g. planning a CUDA topology
    on a machine that has no GPU) it is computed locally.
    """
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world_size, compute_device=compute_device))
    sharders = get_default_sharders()
    if group is not None:
        return planner.collective_plan(model, sharders, group)
    return planner.plan(model, sharders)


def wrap(model: torch.nn.Module, env: Env) -> DistributedModelParallel:
    """Shard the embedding tables by the planner's plan and replicate the dense part (DDP)."""
    plan = plan_for(model, env.world_size, env.device.type, dist.GroupMember.WORLD)
    return DistributedModelParallel(model, device=env.device, plan=plan, sharders=get_default_sharders())

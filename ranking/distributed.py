"""TorchRec sharding for every device: the planner's plan for a topology, and DistributedModelParallel."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.model_parallel import get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.types import ShardingPlan

from pinlift.core.distributed import Env, setup  # noqa: F401  (re-exported: ranking's entry points use them)


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

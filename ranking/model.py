"""The ranking model: TorchRec's DLRM with a DCN interaction over dense features and sparse IDs, with
one output head per (surface, task) — a shared bottom and surface-specific heads. Its served weights are
plain tensors (``served_state``: sharded tables gathered whole), written as safetensors, which cannot run
code when read, and loaded into a sharded model of any world size (``load_served_state``)."""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field, field_validator
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.models.dlrm import DLRM_DCN

from pinlift.core.config import Settings
from ranking.features import SPARSE_FEATURES, TABLE_OF_FEATURE


class ModelConfig(Settings):
    """The model's shape; these keys are settings of ``ranking.train`` too (its settings extend this model)."""

    model_config = ConfigDict(frozen=True)

    embedding_dim: int = Field(16, gt=0, description="width of every ID embedding (and of the dense arch's output)")
    dense_hidden: list[int] = Field([128], description="hidden layer widths of the dense arch")
    over_hidden: list[int] = Field([128, 64], description="hidden layer widths of the over arch (before the logits)")
    dcn_layers: int = Field(2, gt=0, description="cross layers of the DCN interaction")
    dcn_low_rank: int = Field(16, gt=0, description="rank of the DCN cross layers' low-rank weights")

    @field_validator("dense_hidden", "over_hidden")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if any(w <= 0 for w in v):
            raise ValueError(f"expected layer widths > 0, found {v}")
        return v


def embedding_tables(vocab_sizes: dict[str, int], dim: int) -> list[EmbeddingBagConfig]:
    """One table per id space; the pin table serves candidate, query and history features."""
    tables = []
    for table in ("user", "pin", "board", "advertiser"):
        feats = [f for f in SPARSE_FEATURES if TABLE_OF_FEATURE[f] == table]
        tables.append(EmbeddingBagConfig(name=f"t_{table}", embedding_dim=dim, num_embeddings=vocab_sizes[table],
                                         feature_names=feats))
    return tables


def build_model(vocab_sizes: dict[str, int], dense_in: int, cfg: ModelConfig, tasks: int,
                sparse_device: torch.device = torch.device("meta"), dense_device: torch.device | None = None) -> DLRM_DCN:
    """DLRM-DCN with ``tasks`` logits (one per task of the vocabulary); embedding tables on ``sparse_device``
    (meta: DMP materializes)."""
    ebc = EmbeddingBagCollection(tables=embedding_tables(vocab_sizes, cfg.embedding_dim), device=sparse_device)
    return DLRM_DCN(
        embedding_bag_collection=ebc, dense_in_features=dense_in,
        dense_arch_layer_sizes=[*cfg.dense_hidden, cfg.embedding_dim],
        over_arch_layer_sizes=[*cfg.over_hidden, tasks],
        dcn_num_layers=cfg.dcn_layers, dcn_low_rank_dim=cfg.dcn_low_rank, dense_device=dense_device)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the tasks that apply to each example (labels NaN elsewhere)."""
    mask = ~torch.isnan(labels)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], labels[mask], reduction="sum")
    return loss / mask.sum().clamp(min=1)


def served_state(model: torch.nn.Module, rank: int, device: torch.device) -> dict[str, torch.Tensor] | None:
    """The model's state as whole, contiguous CPU tensors on rank 0 (None on the others): each sharded table
    gathered from its shards onto ``device`` (a collective: every rank calls it)."""
    out = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            whole = torch.empty(value.size(), dtype=value.dtype, device=device) if rank == 0 else None
            value.gather(0, whole)
            value = whole
        if rank == 0:
            out[key] = value.detach().cpu().contiguous()
    return out if rank == 0 else None


def load_served_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors (``served_state``'s) into the model, each shard of a sharded table its own block;
    a missing, extra or misshapen tensor is refused."""
    state = model.state_dict()
    if set(state) != set(tensors):
        diff = sorted(set(state) ^ set(tensors))
        raise ValueError(f"ranking: served weights: expected the model's {len(state)} tensors, found "
                         f"{len(tensors)} (e.g. {diff[0]!r} differs)")
    with torch.no_grad():
        for key, value in state.items():
            whole = tensors[key]
            if tuple(whole.shape) != tuple(value.size()):
                raise ValueError(f"ranking: served weights: {key}: expected shape {tuple(value.size())}, "
                                 f"found {tuple(whole.shape)}")
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    block = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets,
                                                                  shard.metadata.shard_sizes))
                    shard.tensor.copy_(whole[block])
            else:
                value.copy_(whole)

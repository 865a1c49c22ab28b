"""The ranking model: TorchRec's DLRM with a DCN interaction over dense features and sparse IDs, with
one output head per (surface, task) — a shared bottom and surface-specific heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.models.dlrm import DLRM_DCN

from ranking.features import SPARSE_FEATURES, TABLE_OF_FEATURE, TASKS


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = 16
    dense_hidden: tuple[int, ...] = (128,)
    over_hidden: tuple[int, ...] = (128, 64)
    dcn_layers: int = 2
    dcn_low_rank: int = 16


def embedding_tables(vocab_sizes: dict[str, int], dim: int) -> list[EmbeddingBagConfig]:
    """One table per id space; the pin table serves candidate, query and history features."""
    tables = []
    for table in ("user", "pin", "board", "advertiser"):
        feats = [f for f in SPARSE_FEATURES if TABLE_OF_FEATURE[f] == table]
        tables.append(EmbeddingBagConfig(name=f"t_{table}", embedding_dim=dim, num_embeddings=vocab_sizes[table],
                                         feature_names=feats))
    return tables


def build_model(vocab_sizes: dict[str, int], dense_in: int, cfg: ModelConfig,
                sparse_device: torch.device = torch.device("meta"), dense_device: torch.device | None = None) -> DLRM_DCN:
    """DLRM-DCN with ``len(TASKS)`` logits; embedding tables on ``sparse_device`` (meta: DMP materializes)."""
    ebc = EmbeddingBagCollection(tables=embedding_tables(vocab_sizes, cfg.embedding_dim), device=sparse_device)
    return DLRM_DCN(
        embedding_bag_collection=ebc, dense_in_features=dense_in,
        dense_arch_layer_sizes=[*cfg.dense_hidden, cfg.embedding_dim],
        over_arch_layer_sizes=[*cfg.over_hidden, len(TASKS)],
        dcn_num_layers=cfg.dcn_layers, dcn_low_rank_dim=cfg.dcn_low_rank, dense_device=dense_device)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the tasks that apply to each example (labels NaN elsewhere)."""
    mask = ~torch.isnan(labels)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], labels[mask], reduction="sum")
    return loss / mask.sum().clamp(min=1)

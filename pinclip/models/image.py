"""The hybrid image encoder: a convolutional stem and a funnel ViT trunk (paper §3.1.1, Hybrid-ViT).

The stem is a stack of strided 3x3 ``ConvNormAct`` (early convolutions, Xiao et al. 2021) and a 1x1
projection to the trunk width. The trunk is ``modules`` groups of timm ViT ``Block``s; between two groups
the token grid is 2x2 average-pooled (the funneling step), so later, deeper groups run on 4x fewer tokens.
The output is the unpooled visual tokens (B, N, width); pooling happens in the PinCLIP model.

Written here (no timm equivalent): the funnel between block groups, which is one ``avg_pool2d`` on the
token grid. The stem uses GroupNorm rather than BatchNorm so that a pin's embedding never depends on the
other pins in its batch (no statistics leak between in-batch negatives, nothing to sync across ranks,
nothing to keep frozen when the stem is locked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, resample_abs_pos_embed, trunc_normal_
from timm.models._manipulate import named_apply
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn
from torch.utils.checkpoint import checkpoint

from pinclip.models.config import ImageTowerConfig


class ConvStem(nn.Module):
    """Strided 3x3 conv-norm-act stages, then a 1x1 conv to ``width``: images -> (B, width, H', W')."""

    def __init__(self, channels: tuple[int, ...], width: int, in_chans: int = 3):
        super().__init__()
        stages, prev = [], in_chans
        for ch in channels:
            stages.append(ConvNormAct(prev, ch, kernel_size=3, stride=2, norm_layer="groupnorm", act_layer="gelu"))
            prev = ch
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Conv2d(prev, width, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stages(images))


class FunnelViT(nn.Module):
    """Conv stem + funnel ViT trunk; ``forward(images)`` returns unpooled visual tokens (B, N, width)."""

    def __init__(self, cfg: ImageTowerConfig):
        super().__init__()
        self.width = cfg.width
        self.stem = ConvStem(cfg.stem_channels, cfg.width)
        grid = cfg.img_size // 2 ** len(cfg.stem_channels)
        self.grid = (grid, grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, cfg.width))
        self.stages = nn.ModuleList(
            nn.ModuleList(Block(cfg.width, cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True,
                                init_values=cfg.layer_scale_init) for _ in range(cfg.depth))
            for _ in range(cfg.modules)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.grad_checkpointing = False
        trunc_normal_(self.pos_embed, std=0.02)
        named_apply(init_weights_vit_timm, self.stages)

    @property
    def blocks(self) -> list[Block]:
        """All transformer blocks in depth order (across funnel modules)."""
        return [block for stage in self.stages for block in stage]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward (torch.utils.checkpoint, non-reentrant)."""
        self.grad_checkpointing = enable

    def freeze(self, trainable_last_n: int) -> None:
        """Lock the stem, position embedding and all blocks but the last ``trainable_last_n`` (LiT-style)."""
        blocks = self.blocks
        if not 0 <= trainable_last_n <= len(blocks):
            raise ValueError(f"pinclip: trainable_last_n {trainable_last_n}: expected 0..{len(blocks)}")
        self.stem.requires_grad_(False)
        self.pos_embed.requires_grad_(False)
        for i, block in enumerate(blocks):
            block.requires_grad_(i >= len(blocks) - trainable_last_n)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        x = x + resample_abs_pos_embed(self.pos_embed, new_size=grid, old_size=self.grid, num_prefix_tokens=0)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x, grid = funnel_pool(x, grid)
            for block in stage:
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        return self.norm(x)


def funnel_pool(tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """2x2 average pooling of a (B, H*W, D) token grid; odd sides keep their last row/column (ceil mode)."""
    b, _, d = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, d, *grid)
    x = F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
    return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])

"""The fusion encoder (paper §3.1.2, eqs. 3–5) and the attention pooler every embedding ends in.

Visual and text tokens, already at the shared width, get a learned modality embedding each, are
concatenated (eq. 3), pass ``depth`` timm ViT ``Block``s with vanilla self-attention (eq. 4) in which text
padding is masked out as keys, and are pooled by one multi-head attention pooler with a learned query
(eq. 5, timm's ``AttentionPoolLatent``). Normalisation (eq. 6) is left to the caller.
"""

from __future__ import annotations

import torch
from timm.layers import AttentionPoolLatent, trunc_normal_
from timm.models._manipulate import named_apply
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn
from torch.utils.checkpoint import checkpoint

from pinclip.models.config import FusionConfig


def key_padding_bias(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (B, 1, 1, N) from a boolean (B, N) mask of the tokens that may be attended to.

    Additive rather than boolean because timm's non-fused attention paths add the mask to the scores.
    """
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, float("-inf"))
    return bias[:, None, None, :]


def attention_pooler(width: int, embed_dim: int, heads: int) -> AttentionPoolLatent:
    """One learned query attending over (B, N, width) tokens, projected to (B, embed_dim)."""
    return AttentionPoolLatent(width, out_features=embed_dim, num_heads=heads, norm_layer=nn.LayerNorm)


class FusionEncoder(nn.Module):
    """``forward(visual, text, text_keep)`` -> the pooled, unnormalised multimodal embedding r (B, embed_dim)."""

    def __init__(self, width: int, embed_dim: int, pool_heads: int, cfg: FusionConfig):
        super().__init__()
        self.visual_type = nn.Parameter(torch.zeros(1, 1, width))
        self.text_type = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(
            Block(width, cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(width)
        self.pool = attention_pooler(width, embed_dim, pool_heads)
        self.grad_checkpointing = False
        trunc_normal_(self.visual_type, std=0.02)
        trunc_normal_(self.text_type, std=0.02)
        named_apply(init_weights_vit_timm, self.blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each fusion layer's activations in backward."""
        self.grad_checkpointing = enable

    def forward(self, visual: torch.Tensor, text: torch.Tensor, text_keep: torch.Tensor) -> torch.Tensor:
        """visual (B, Nv, W), text (B, Nt, W) and ``text_keep`` (B, Nt) bool: which text tokens are real."""
        x = torch.cat([visual + self.visual_type, text + self.text_type], dim=1)
        visual_keep = torch.ones(visual.shape[:2], dtype=torch.bool, device=visual.device)
        bias = key_padding_bias(torch.cat([visual_keep, text_keep], dim=1), x.dtype)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, bias, use_reentrant=False)
            else:
                x = block(x, attn_mask=bias)
        return self.pool(self.norm(x), attn_mask=bias)

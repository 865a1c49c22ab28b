"""The PinCLIP model, assembled from its towers, and ``create_model`` to build it by config name.

Embeddings. Every embedding (image, text, fusion) is an attention-pooled, L2-normalised vector f(x) of
width ``embed_dim`` (eq. 6): ``encode_image`` / ``encode_text`` / ``encode_fusion`` return it. Matryoshka
(eq. 12) then gives, for each prefix k, ``normalize(W_k f(x)[:k])`` with its own bias-free head
W_k (k x k, identity at init) shared by the three kinds so that image, text and fusion prefixes live in
one space. Those head outputs, ``model.matryoshka(f(x))[k]``, are what the losses score and what is used
downstream: the 256-d embedding is ``matryoshka(emb)[256]`` and **the published 64-d embedding is
``matryoshka(emb)[64]``**. Heads have no bias, so the k-prefix output is invariant to the scale of f(x)
and depends only on its first k dims (eq. 6's normalisation over all dims does not leak the rest in).

Missing text. A learned "missing text" token sits in front of every text sequence and is attended to
(by the text pooler and the fusion layers) only in rows without text — an all-zero attention-mask row,
as :func:`pinclip.models.text.tokenize` makes for ``None`` — or when no text is given at all, so an
image-only pin still gets a fusion embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from pinclip.models.config import PinCLIPConfig, load_config, with_overrides
from pinclip.models.fusion import FusionEncoder, attention_pooler, key_padding_bias
from pinclip.models.image import FunnelViT
from pinclip.models.text import TextTower

EMBEDDING_KINDS = ("image", "text", "fusion")


class MatryoshkaHeads(nn.Module):
    """Per-prefix heads: ``forward(emb)`` -> {k: normalize(W_k emb[:, :k])} for every k in ``dims``."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = tuple(dims)
        self.heads = nn.ModuleDict({str(k): nn.Linear(k, k, bias=False) for k in self.dims})
        for head in self.heads.values():
            nn.init.eye_(head.weight)

    def forward(self, emb: torch.Tensor) -> dict[int, torch.Tensor]:
        return {k: F.normalize(self.heads[str(k)](emb[:, :k]), dim=-1) for k in self.dims}


class MeanPooler(nn.Module):
    """The tokens' mean, projected to ``embed_dim`` (``image_pool: mean``, the alternative to attention)."""

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens.mean(dim=1))


def _project(width: int, shared_width: int) -> nn.Module:
    return nn.Identity() if width == shared_width else nn.Linear(width, shared_width)


class PinCLIP(nn.Module):
    """Image tower, text tower, fusion encoder, three attention poolers and the Matryoshka heads."""

    def __init__(self, cfg: PinCLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.image = FunnelViT(cfg.image)
        self.text = TextTower(cfg.text)
        self.image_proj = _project(self.image.width, cfg.width)
        self.text_proj = _project(self.text.width, cfg.width)
        self.missing_text = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.image_pool = (attention_pooler(cfg.width, cfg.embed_dim, cfg.pool_heads) if cfg.image_pool == "attention"
                           else MeanPooler(cfg.width, cfg.embed_dim))
        self.text_pool = attention_pooler(cfg.width, cfg.embed_dim, cfg.pool_heads)
        # Centering of the tower embeddings (batch statistics in training, running ones in eval). At init
        # every pooled image is nearly the same vector (mean pairwise cosine ~0.87; texts ~0.94): the
        # sigmoid image-text loss then falls straight into its collapsed optimum — one image vector, one
        # text vector, every pair scored alike (loss log B + (B-1) log(1 + 1/(B-1))) — and never leaves it.
        # Centered, the embeddings start near-orthogonal as SigLIP's init (t = 10, b = -10) assumes.
        # (``center: false`` leaves them uncentred, for comparison.)
        center = (lambda: nn.BatchNorm1d(cfg.embed_dim, affine=False)) if cfg.center else nn.Identity
        self.image_center, self.text_center = center(), center()
        self.fusion = FusionEncoder(cfg.width, cfg.embed_dim, cfg.pool_heads, cfg.fusion)
        self.matryoshka_heads = MatryoshkaHeads(cfg.matryoshka_dims)
        trunc_normal_(self.missing_text, std=0.02)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Unpooled visual tokens at the shared width (B, Nv, width) from normalised images (B, 3, H, W)."""
        return self.image_proj(self.image(images))

    def text_tokens(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                    batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpooled text tokens (B, 1 + L, width) behind the missing-text token, and which of them count.

        The text tower only runs on rows that have text, so it never sees an all-padding sequence.
        """
        if (input_ids is None) != (attention_mask is None):
            raise ValueError("pinclip: text: expected both input_ids and attention_mask, or neither")
        missing = self.missing_text.expand(batch_size, -1, -1)
        if input_ids is None:
            return missing, torch.ones(batch_size, 1, dtype=torch.bool, device=missing.device)
        keep = attention_mask.bool()
        has_text = keep.any(dim=1)
        tokens = missing.new_zeros(batch_size, input_ids.shape[1], self.cfg.width)
        if has_text.any():
            present = self.text_proj(self.text(input_ids[has_text], attention_mask[has_text]))
            tokens = tokens.to(present.dtype).index_put((has_text,), present)
        return torch.cat([missing.to(tokens.dtype), tokens], dim=1), torch.cat([~has_text[:, None], keep], dim=1)

    def matryoshka(self, emb: torch.Tensor) -> dict[int, torch.Tensor]:
        """{k: normalize(W_k emb[:, :k])}; ``[64]`` is the published embedding, ``[embed_dim]`` the full one."""
        return self.matryoshka_heads(emb)

    def _image_embedding(self, visual: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_center(self.image_pool(visual)), dim=-1)

    def _text_embedding(self, text: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_center(self.text_pool(text, attn_mask=key_padding_bias(keep, text.dtype))), dim=-1)

    def _fusion_embedding(self, visual: torch.Tensor, text: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fusion(visual, text, keep), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image embedding f(x) (B, embed_dim), L2-normalised, from the image tower's own pooler."""
        return self._image_embedding(self.image_tokens(images))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text embedding (B, embed_dim), L2-normalised, from the text tower's own pooler."""
        return self._text_embedding(*self.text_tokens(input_ids, attention_mask, input_ids.shape[0]))

    def encode_fusion(self, images: torch.Tensor, input_ids: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion (multimodal Pin) embedding (B, embed_dim), L2-normalised; text may be absent (None)."""
        return self._fusion_embedding(self.image_tokens(images),
                                      *self.text_tokens(input_ids, attention_mask, images.shape[0]))

    def forward(self, kinds: Sequence[str], images: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> dict[str, dict[int, torch.Tensor]]:
        """Per-prefix embeddings {kind: {k: (B, k)}} for ``kinds`` among image, text, fusion — what the losses take.

        Tower tokens are computed once and shared by the kinds that need them.
        """
        kinds = set(kinds)
        if not kinds <= set(EMBEDDING_KINDS):
            raise ValueError(f"pinclip: kinds {sorted(kinds)}: expected some of {EMBEDDING_KINDS}")
        batch_size = (images if images is not None else input_ids).shape[0]
        if kinds & {"image", "fusion"}:
            visual = self.image_tokens(images)
        if kinds & {"text", "fusion"}:
            text, keep = self.text_tokens(input_ids, attention_mask, batch_size)
        embeddings = {}
        if "image" in kinds:
            embeddings["image"] = self._image_embedding(visual)
        if "text" in kinds:
            embeddings["text"] = self._text_embedding(text, keep)
        if "fusion" in kinds:
            embeddings["fusion"] = self._fusion_embedding(visual, text, keep)
        return {kind: self.matryoshka(emb) for kind, emb in embeddings.items()}

    def freeze_image_tower(self, trainable_last_n: int) -> None:
        """Lock the image stem and all image transformer blocks but the last ``trainable_last_n`` (paper §4.4.3)."""
        self.image.freeze(trainable_last_n)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per transformer block in the image, text and fusion encoders."""
        self.image.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)
        self.fusion.set_grad_checkpointing(enable)


def create_model(name_or_cfg: str | Path | PinCLIPConfig | dict[str, Any] = "tiny", **overrides: Any) -> PinCLIP:
    """Build PinCLIP from a config name (``tiny``, ``base``), a YAML path, a config or a dict.

    ``overrides`` replace config fields; a sub-config takes a partial dict, e.g.
    ``create_model("tiny", text={"pretrained": "minilm"}, embed_dim=128, matryoshka_dims=(64, 128))``.
    """
    if isinstance(name_or_cfg, PinCLIPConfig):
        cfg = name_or_cfg
    elif isinstance(name_or_cfg, dict):
        cfg = PinCLIPConfig.from_dict(name_or_cfg)
    else:
        cfg = load_config(name_or_cfg)
    return PinCLIP(with_overrides(cfg, overrides))

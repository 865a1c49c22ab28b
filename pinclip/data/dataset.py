"""Torch datasets for PinCLIP training: image–text pairs, neighbor (query, positive) pin pairs, and the
corpus of training pins that uniform Pin-to-Pin negatives are drawn from.

Both datasets implement ``__getitems__``, so a ``DataLoader`` reads a whole batch of images with one
``ImageStore.load`` and normalises it as one tensor. A collate then tokenizes the batch's texts with a
``tokenize(list[str]) -> (input_ids, attention_mask)`` callable that the model supplies, and returns a
small typed batch. A missing text is tokenized as ``""`` and flagged ``False`` in the batch's mask, so
the loss drops that pair while the image still serves as a negative for the others. ``Augment`` is
open_clip's training augmentation (random resized crop, horizontal flip) of a normalised batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from timm.data.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pinlift.core.errors import input_error
from pinlift.core.schema import TABLES
from pinworld.images import ImageStore
from pinworld.world import World

IMAGE_MEAN = OPENAI_CLIP_MEAN  # per-channel RGB statistics the pixels are normalised with, in [0, 1] units
IMAGE_STD = OPENAI_CLIP_STD
# global batch sizes of the paper (§4.2): 32,768 image-text pairs and 4,096 neighbor pairs per step
IMAGE_TEXT_PER_NEIGHBOR_PAIR = 32_768 // 4_096

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def neighbor_batch_size(image_text_batch_size: int) -> int:
    """Neighbor pairs per step for an image–text batch, at the paper's 8 : 1 ratio (at least one)."""
    return max(1, round(image_text_batch_size / IMAGE_TEXT_PER_NEIGHBOR_PAIR))


def normalize_images(images: np.ndarray) -> torch.Tensor:
    """uint8 images (n, H, W, 3) -> float32 (n, 3, H, W), scaled to [0, 1] then normalised per channel."""
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(255).sub_(mean).div_(std)


CROP_RATIO = (3 / 4, 4 / 3)   # aspect ratios of the random crop (open_clip's, torchvision's default)


def _crop_box(h: int, w: int, scale: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop of ``scale`` of the area, torchvision's RandomResizedCrop draw."""
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw
    return 0, 0, h, w   # square images: the whole image, as torchvision's fallback gives them


@dataclass(frozen=True)
class Augment:
    """open_clip's training augmentation: per image a random resized crop covering a ``scale`` share of the
    area (aspect ratio in ``CROP_RATIO``, bicubic back to the input size), then a horizontal flip with
    probability ``flip``. At scale (1, 1) and flip 0 it returns the batch itself."""

    scale: tuple[float, float] = (1.0, 1.0)
    flip: float = 0.0

    @property
    def crops(self) -> bool:
        return tuple(self.scale) != (1.0, 1.0)

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``images`` (n, 3, H, W) augmented with draws from ``rng`` (crop, then flip, image by image)."""
        if not self.crops and self.flip == 0:
            return images
        h, w = images.shape[-2:]
        out = []
        for image in images:
            if self.crops:
                image = TF.resized_crop(image, *_crop_box(h, w, self.scale, rng), size=[h, w],
                                        interpolation=InterpolationMode.BICUBIC, antialias=True)
            if self.flip and rng.random() < self.flip:
                image = image.flip(-1)
            out.append(image)
        return torch.stack(out)


class _Images:
    """Image URIs of the pins a dataset reads, and a lazily opened store (memmaps are not pickled)."""

    def __init__(self, world: World, pin_ids: np.ndarray, size: int | None):
        pins = world.table("pins").select("pin_id", "image_uri", known=pl.lit(True))
        uris = (pl.DataFrame({"pin_id": pin_ids}, schema={"pin_id": pl.Int64})
                .join(pins, on="pin_id", how="left", maintain_order="left"))
        missing = uris.filter(pl.col("known").is_null())["pin_id"]
        if len(missing):
            raise ValueError(f"pinclip: {len(missing)} pins not in the pins table, e.g. {missing[:5].to_list()}")
        no_image = uris.filter(pl.col("image_uri").is_null())["pin_id"]
        if len(no_image):
            raise input_error(world.workdir / TABLES["pins"].path, "image_uri", "an image for every pin PinCLIP "
                              "trains on or embeds", f"{len(no_image)} pins without one, e.g. {no_image[:5].to_list()}")
        self.world_dir: Path = world.dir
        self.size = size
        self.uris = uris["image_uri"].to_numpy()
        self._store: ImageStore | None = None

    def __getstate__(self):
        return {**self.__dict__, "_store": None}

    def load(self, rows: np.ndarray) -> torch.Tensor:
        if self._store is None:
            self._store = ImageStore(self.world_dir, self.size)
        return normalize_images(self._store.load(self.uris[rows]))


@dataclass
class TokenizedText:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def tokenize_texts(tokenize: Tokenize, texts: Sequence[str | None]) -> tuple[TokenizedText, torch.Tensor]:
    """Tokenized texts (a missing one as ``""``) and a bool mask of the texts that are present."""
    ids, mask = tokenize([t if t is not None else "" for t in texts])
    return TokenizedText(ids, mask), torch.tensor([t is not None for t in texts], dtype=torch.bool)


@dataclass
class ImageTextSamples:
    """A batch as a dataset returns it: images read and normalised, texts still strings."""

    pin_ids: torch.Tensor             # (n,) int64
    images: torch.Tensor              # (n, 3, H, W) float32
    descriptive: list[str | None]
    keyword: list[str | None]


@dataclass
class ImageTextBatch:
    pin_ids: torch.Tensor
    images: torch.Tensor
    descriptive: TokenizedText
    keyword: TokenizedText
    has_descriptive: torch.Tensor     # (n,) bool: the pin has descriptive text
    has_keyword: torch.Tensor         # (n,) bool: the pin has keyword text


class ImageTextDataset(Dataset):
    """Pins with their image and coalesced texts (``sources.text_sources``); pins with neither text are
    left out. An item is ``(image (3, H, W), descriptive or None, keyword or None)``."""

    def __init__(self, world: World, texts: pl.DataFrame, image_size: int | None = None):
        rows = texts.filter(pl.col("descriptive").is_not_null() | pl.col("keyword").is_not_null())
        self.pin_ids = rows["pin_id"].to_numpy()
        self.descriptive = rows["descriptive"].to_list()
        self.keyword = rows["keyword"].to_list()
        self.images = _Images(world, self.pin_ids, image_size)

    def __len__(self) -> int:
        return len(self.pin_ids)

    def __getitems__(self, indices: Sequence[int]) -> ImageTextSamples:
        rows = np.asarray(indices, np.int64)
        return ImageTextSamples(torch.from_numpy(self.pin_ids[rows]), self.images.load(rows),
                                [self.descriptive[i] for i in rows], [self.keyword[i] for i in rows])

    def __getitem__(self, index: int):
        s = self.__getitems__([index])
        return s.images[0], s.descriptive[0], s.keyword[0]


class ImageTextCollate:
    """``ImageTextSamples`` -> ``ImageTextBatch``, tokenizing both kinds of text."""

    def __init__(self, tokenize: Tokenize):
        self.tokenize = tokenize

    def __call__(self, s: ImageTextSamples) -> ImageTextBatch:
        descriptive, has_descriptive = tokenize_texts(self.tokenize, s.descriptive)
        keyword, has_keyword = tokenize_texts(self.tokenize, s.keyword)
        return ImageTextBatch(s.pin_ids, s.images, descriptive, keyword, has_descriptive, has_keyword)


def _pin_text(texts: pl.DataFrame) -> pl.DataFrame:
    """``pin_id, text``: a pin's one text for its fusion embedding (descriptive, else keyword, else null)."""
    return texts.select("pin_id", pl.coalesce("descriptive", "keyword").alias("text"))


@dataclass
class PinSamples:
    pin_ids: torch.Tensor             # (n,) int64
    images: torch.Tensor              # (n, 3, H, W) float32
    text: list[str | None]


@dataclass
class NeighborSamples:
    query_ids: torch.Tensor           # (n,) int64
    positive_ids: torch.Tensor
    query_images: torch.Tensor        # (n, 3, H, W) float32
    positive_images: torch.Tensor
    query_text: list[str | None]
    positive_text: list[str | None]
    negatives: PinSamples | None = None   # corpus negatives of every query (``CorpusPins``), if drawn


@dataclass
class NeighborBatch:
    query_ids: torch.Tensor
    positive_ids: torch.Tensor
    query_images: torch.Tensor
    positive_images: torch.Tensor
    query_text: TokenizedText
    positive_text: TokenizedText
    query_has_text: torch.Tensor      # (n,) bool
    positive_has_text: torch.Tensor
    negative_ids: torch.Tensor | None = None      # (m,) int64: a negative of every query
    negative_images: torch.Tensor | None = None
    negative_text: TokenizedText | None = None
    negative_has_text: torch.Tensor | None = None


class NeighborPairDataset(Dataset):
    """(query, positive) pin pairs (``pinclip.training.neighbors.sample_positives``), each pin with its image
    and one text: its descriptive text, else its keyword text, else None. An item is
    ``(query image, query text, positive image, positive text)``."""

    def __init__(self, world: World, pairs: pl.DataFrame, texts: pl.DataFrame, image_size: int | None = None):
        pin_text = _pin_text(texts)
        rows = (pairs.select("pin_id", "neighbor_id")
                .join(pin_text, on="pin_id", how="left", maintain_order="left")
                .join(pin_text.rename({"pin_id": "neighbor_id", "text": "neighbor_text"}), on="neighbor_id",
                      how="left", maintain_order="left"))
        self.query_ids = rows["pin_id"].to_numpy()
        self.positive_ids = rows["neighbor_id"].to_numpy()
        self.query_text = rows["text"].to_list()
        self.positive_text = rows["neighbor_text"].to_list()
        # one store for both sides, so a batch is one load: queries in rows [0, n), positives in [n, 2n)
        self.images = _Images(world, np.concatenate([self.query_ids, self.positive_ids]), image_size)

    def __len__(self) -> int:
        return len(self.query_ids)

    def __getitems__(self, indices: Sequence[int]) -> NeighborSamples:
        rows = np.asarray(indices, np.int64)
        images = self.images.load(np.concatenate([rows, rows + len(self)]))
        return NeighborSamples(torch.from_numpy(self.query_ids[rows]), torch.from_numpy(self.positive_ids[rows]),
                               images[:len(rows)], images[len(rows):],
                               [self.query_text[i] for i in rows], [self.positive_text[i] for i in rows])

    def __getitem__(self, index: int):
        s = self.__getitems__([index])
        return s.query_images[0], s.query_text[0], s.positive_images[0], s.positive_text[0]


class CorpusPins(Dataset):
    """Every training pin with its image and one text (as in ``NeighborPairDataset``): the pool that uniform
    Pin-to-Pin negatives are drawn from, saved to a board or not. An item is ``(image, text or None)``."""

    def __init__(self, world: World, texts: pl.DataFrame, image_size: int | None = None):
        rows = _pin_text(texts).sort("pin_id")
        self.pin_ids = rows["pin_id"].to_numpy()
        self.text = rows["text"].to_list()
        self.images = _Images(world, self.pin_ids, image_size)

    def __len__(self) -> int:
        return len(self.pin_ids)

    def draw(self, n: int, rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
        """``n`` distinct rows drawn uniformly among the pins not in ``avoid`` (a batch's own pins)."""
        allowed = np.flatnonzero(~np.isin(self.pin_ids, avoid))
        if len(allowed) < n:
            raise ValueError(f"pinclip: {len(allowed)} corpus pins outside the batch are fewer than the "
                             f"{n} negatives asked for")
        return rng.choice(allowed, size=n, replace=False)

    def __getitems__(self, indices: Sequence[int]) -> PinSamples:
        rows = np.asarray(indices, np.int64)
        return PinSamples(torch.from_numpy(self.pin_ids[rows]), self.images.load(rows), [self.text[i] for i in rows])

    def __getitem__(self, index: int):
        s = self.__getitems__([index])
        return s.images[0], s.text[0]


class NeighborCollate:
    """``NeighborSamples`` -> ``NeighborBatch``, tokenizing the texts of both sides and of the negatives."""

    def __init__(self, tokenize: Tokenize):
        self.tokenize = tokenize

    def __call__(self, s: NeighborSamples) -> NeighborBatch:
        query_text, query_has = tokenize_texts(self.tokenize, s.query_text)
        positive_text, positive_has = tokenize_texts(self.tokenize, s.positive_text)
        batch = NeighborBatch(s.query_ids, s.positive_ids, s.query_images, s.positive_images,
                              query_text, positive_text, query_has, positive_has)
        if s.negatives is not None:
            batch.negative_text, batch.negative_has_text = tokenize_texts(self.tokenize, s.negatives.text)
            batch.negative_ids, batch.negative_images = s.negatives.pin_ids, s.negatives.images
        return batch


def batches(dataset: ImageTextDataset | NeighborPairDataset, collate, batch_size: int, *, seed: int,
            num_workers: int = 0, drop_last: bool = True) -> DataLoader:
    """A shuffled ``DataLoader`` over ``dataset`` whose order depends only on ``seed``; each batch is
    fetched with one ``__getitems__`` call and turned into a typed batch by ``collate``."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=drop_last, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))

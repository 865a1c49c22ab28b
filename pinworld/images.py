"""Image storage: pinworld writes uint8 shards (``images/shard-K.npy``, N x H x W x 3); user data may
instead reference image files (PNG/JPEG) by path. ``load_images`` reads both kinds of URI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHARD_SIZE = 50_000


def shard_uri(index: int) -> str:
    return f"images/shard-{index // SHARD_SIZE:05d}.npy#{index % SHARD_SIZE}"


class ImageStore:
    """Reads pin images by ``image_uri`` relative to a world directory, resized to ``size``."""

    def __init__(self, world_dir: Path | str, size: int | None = None):
        self.root = Path(world_dir)
        self.size = size
        self._shards: dict[str, np.ndarray] = {}

    def _shard(self, rel: str) -> np.ndarray:
        arr = self._shards.get(rel)
        if arr is None:
            arr = np.load(self.root / rel, mmap_mode="r", allow_pickle=False)
            self._shards[rel] = arr
        return arr

    def load(self, uris) -> np.ndarray:
        """uint8 array (n, H, W, 3) for the given URIs."""
        out = []
        for uri in uris:
            if ".npy#" in uri:
                rel, row = uri.rsplit("#", 1)
                img = np.asarray(self._shard(rel)[int(row)])
            else:
                path = self.root / uri
                if not path.is_file():
                    raise FileNotFoundError(f"pinworld: image {uri!r} not found under {self.root}")
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    if self.size and im.size != (self.size, self.size):
                        im = im.resize((self.size, self.size), Image.Resampling.BICUBIC)
                    img = np.asarray(im)
            if self.size and img.shape[0] != self.size:
                img = np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.Resampling.BICUBIC))
            out.append(img)
        if not out:
            return np.zeros((0, self.size or 0, self.size or 0, 3), np.uint8)
        return np.stack(out)

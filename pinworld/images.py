"""Image storage: pinworld writes uint8 shards (``images/shard-K.npy``, N x H x W x 3); user data may
instead reference image files (any format PIL reads) by a path relative to ``world/``, which must stay
inside it. ``ImageStore.load`` reads both kinds of URI; ``read_image`` turns any image file into the RGB
square the models read: transparency composited onto white (the background it is drawn for), then padded
to a square with white rather than squashed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from pinlift.core.errors import input_error

SHARD_SIZE = 50_000
BACKGROUND = (255, 255, 255)   # what transparent areas and padding become


def shard_uri(index: int) -> str:
    return f"images/shard-{index // SHARD_SIZE:05d}.npy#{index % SHARD_SIZE}"


def split_uri(uri: str) -> tuple[str, str]:
    """(file, row) of an ``image_uri``: a shard's file and row for ``shard.npy#ROW``, else the file and ""."""
    if ".npy#" in uri:
        rel, _, row = uri.rpartition("#")
        return rel, row
    return uri, ""


def resolve_inside(root: Path | str, uri: str) -> Path | None:
    """``root / uri`` when it stays inside ``root`` (no absolute path, no ``..`` escape, no symlink out);
    None otherwise."""
    root = Path(root).resolve()
    if not uri or Path(uri).is_absolute():
        return None
    path = (root / uri).resolve()
    return path if path.is_relative_to(root) else None


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with any transparency (RGBA, LA, P or L with a transparent colour) composited onto white."""
    if im.mode == "P" or (im.mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def square(im: Image.Image) -> Image.Image:
    """``im`` centred on a white square of its longer side."""
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    out = Image.new("RGB", (side, side), BACKGROUND)
    out.paste(im, ((side - w) // 2, (side - h) // 2))
    return out


def read_image(path: Path | str, size: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) of any PIL-readable file: RGB on white, padded square, resized to ``size`` (bicubic)
    when given; an unreadable file is one InputError line naming it."""
    path = Path(path)
    with _readable(path, "an image file (PNG, JPEG, ...)"), Image.open(path) as im:
        if size:
            im.draft("RGB", (size, size))   # JPEG: decode at a reduced scale when that is enough
        out = square(to_rgb(im))
        if size and out.size != (size, size):
            out = out.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        return np.asarray(out)


@contextmanager
def _readable(path: Path, expected: str) -> Iterator[None]:
    """An image file that cannot be read (garbage, truncated) is one InputError line naming it."""
    try:
        yield
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise input_error(path, "image_uri", expected, f"an unreadable file ({str(exc).splitlines()[0]})") from None


class ImageStore:
    """Reads pin images by ``image_uri`` relative to a world directory, resized to ``size``."""

    def __init__(self, world_dir: Path | str, size: int | None = None):
        self.root = Path(world_dir)
        self.size = size
        self._shards: dict[str, np.ndarray] = {}

    def _inside(self, rel: str) -> Path:
        """The file ``rel`` names under the world directory; a path leaving it is one InputError line."""
        path = resolve_inside(self.root, rel)
        if path is None:
            raise input_error(self.root, "image_uri", "a path inside world/", repr(rel))
        return path

    def _shard(self, rel: str) -> np.ndarray:
        arr = self._shards.get(rel)
        if arr is None:
            path = self._inside(rel)
            with _readable(path, "a .npy shard of uint8 images"):
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            self._shards[rel] = arr
        return arr

    def _file(self, uri: str) -> np.ndarray:
        path = self._inside(uri)
        if not path.is_file():
            raise FileNotFoundError(f"pinworld: image {uri!r} not found under {self.root}")
        return read_image(path, self.size)

    def load(self, uris) -> np.ndarray:
        """uint8 array (n, H, W, 3) for the given URIs; shard rows are read with one indexed read
        per shard."""
        uris = list(uris)
        images: list[np.ndarray | None] = [None] * len(uris)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, uri in enumerate(uris):
            rel, row = split_uri(uri)
            if row:
                by_shard.setdefault(rel, []).append((i, int(row)))
            else:
                images[i] = self._file(uri)
        for rel, items in by_shard.items():
            idx = np.array([r for _, r in items])
            order = np.argsort(idx, kind="stable")
            block = np.asarray(self._shard(rel)[idx[order]])
            for j, k in enumerate(order):
                images[items[k][0]] = block[j]
        if not images:
            return np.zeros((0, self.size or 0, self.size or 0, 3), np.uint8)
        if self.size:
            images = [img if img.shape[:2] == (self.size, self.size) else
                      np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.Resampling.BICUBIC))
                      for img in images]
        return np.stack(images)

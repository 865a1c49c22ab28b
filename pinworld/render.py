"""Render pin images: scenes of 1-3 Twemoji glyphs on a background, graded by the pin's visual style.

The visual style (background pattern + colour grading) is the pixel-only latent factor: it drives
engagement and appears in no text source. The visible part of a pin's quality shows as photo quality
does: a poor pin is blurred and dull, a good one crisp and bright (zero leaves the image as drawn).
Background colour, arrangement, scale and rotation are nuisance attributes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from pinworld.taxonomy import Taxonomy

STYLES = ("plain", "striped", "dotted", "checkered", "pastel", "noir")
BACKGROUND_COLOURS = {
    "white": (245, 245, 240), "cream": (250, 235, 200), "pink": (245, 190, 200), "red": (215, 70, 60),
    "orange": (240, 150, 60), "yellow": (245, 220, 90), "green": (120, 190, 120), "teal": (70, 170, 170),
    "blue": (90, 140, 215), "purple": (160, 110, 200), "grey": (150, 150, 155), "black": (40, 40, 45),
}
COLOUR_NAMES = tuple(BACKGROUND_COLOURS)
ARRANGEMENTS = ("centered", "side by side", "diagonal", "row", "column", "triangle")
SCALES = (0.36, 0.48, 0.6)          # glyph size as a share of the image side (single object)
ROTATIONS = (-30, -20, -10, 0, 10, 20, 30)


class SceneRenderer:
    """Draws scenes at ``size`` x ``size``; glyphs are resized/rotated once and cached."""

    def __init__(self, taxonomy: Taxonomy, size: int = 64):
        self.taxonomy = taxonomy
        self.size = size
        self._glyphs: dict[tuple[int, int, int], np.ndarray] = {}
        yy, xx = np.mgrid[0:size, 0:size]
        unit = max(size // 8, 2)
        self._masks = {
            "plain": np.zeros((size, size), bool),
            "striped": ((xx + yy) // unit) % 2 == 0,
            "dotted": ((xx % (2 * unit) - unit) ** 2 + (yy % (2 * unit) - unit) ** 2) < (unit * 0.55) ** 2,
            "checkered": ((xx // unit) + (yy // unit)) % 2 == 0,
        }

    def _glyph(self, object_id: int, px: int, rotation: int) -> np.ndarray:
        key = (object_id, px, rotation)
        g = self._glyphs.get(key)
        if g is None:
            im = Image.open(self.taxonomy.objects[object_id].png_path).convert("RGBA")
            im = im.resize((px, px), Image.Resampling.LANCZOS)
            if rotation:
                im = im.rotate(rotation, resample=Image.Resampling.BICUBIC, expand=False)
            g = np.asarray(im, dtype=np.float32)
            self._glyphs[key] = g
        return g

    def _background(self, style: int, colour: int) -> np.ndarray:
        base = np.array(BACKGROUND_COLOURS[COLOUR_NAMES[colour]], np.float32)
        alt = base * 0.6 + 255 * 0.4 if base.mean() < 170 else base * 0.7
        pattern = STYLES[style] if STYLES[style] in self._masks else "plain"
        img = np.empty((self.size, self.size, 3), np.float32)
        img[:] = base
        img[self._masks[pattern]] = alt
        return img

    def _layout(self, n: int, arrangement: int, scale: int, jitter: np.ndarray) -> tuple[int, list]:
        s = self.size
        px = int(round(SCALES[scale] * s * (1.0 if n == 1 else 0.72 if n == 2 else 0.6)))
        px = max(px, 6)
        free = s - px
        name = ARRANGEMENTS[arrangement]
        if n == 1:
            centres = [(0.5, 0.5)]
        elif name in ("side by side", "row"):
            centres = [(0.5, (i + 0.5) / n) for i in range(n)]
        elif name == "column":
            centres = [((i + 0.5) / n, 0.5) for i in range(n)]
        elif name == "diagonal":
            centres = [((i + 0.5) / n, (i + 0.5) / n) for i in range(n)]
        else:  # triangle
            centres = [(0.28, 0.5), (0.72, 0.28), (0.72, 0.72)][:n]
        out = []
        for i, (cy, cx) in enumerate(centres):
            y = int(np.clip(cy * s - px / 2 + jitter[i, 0] * s * 0.06, 0, free))
            x = int(np.clip(cx * s - px / 2 + jitter[i, 1] * s * 0.06, 0, free))
            out.append((y, x))
        return px, out

    def render_one(self, objects, style, colour, arrangement, scale, rotations, jitter,
                   visual_quality: float = 0.0) -> np.ndarray:
        """One scene as uint8 (size, size, 3)."""
        img = self._background(style, colour)
        px, positions = self._layout(len(objects), arrangement, scale, jitter)
        for obj, rot, (y, x) in zip(objects, rotations, positions):
            g = self._glyph(int(obj), px, int(rot))
            a = g[..., 3:4] * (1.0 / 255.0)
            region = img[y:y + px, x:x + px]
            region *= 1.0 - a
            region += g[..., :3] * a
        name = STYLES[style]
        if name == "pastel":
            img = img * 0.5 + 255 * 0.5
        elif name == "noir":
            grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
            grey = np.clip((grey - 128.0) * 1.5 + 110.0, 0, 255)
            img = np.stack([grey * 0.92, grey * 0.95, grey * 1.05 + 6], axis=-1)
        return photo_quality(np.clip(img, 0, 255).astype(np.uint8), visual_quality, self.size)

    def render_batch(self, scenes: dict[str, np.ndarray], out: np.ndarray) -> None:
        """Render rows of a scene table (arrays: objects (n,3) -1 padded, style, colour, arrangement,
        scale, rotations (n,3), jitter (n,3,2)) into ``out`` (n, size, size, 3)."""
        objs = scenes["objects"]
        for i in range(len(objs)):
            k = int((objs[i] >= 0).sum())
            out[i] = self.render_one(
                objs[i, :k], int(scenes["style"][i]), int(scenes["colour"][i]),
                int(scenes["arrangement"][i]), int(scenes["scale"][i]), scenes["rotations"][i, :k],
                scenes["jitter"][i], float(scenes["visual_quality"][i]),
            )


def photo_quality(img: np.ndarray, visual_quality: float, size: int) -> np.ndarray:
    """Grade a rendered uint8 image by the visible part of its pin's quality: below zero, a blur (radius
    up to 2 px at 64 px) and lower contrast and exposure; above zero, more of both."""
    if visual_quality == 0.0:
        return img
    tone = float(np.tanh(visual_quality))
    if visual_quality < 0:
        radius = min(1.0, -visual_quality / 1.5) * 2.0 * size / 64
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))
    out = (img.astype(np.float32) - 128.0) * (1.0 + 0.3 * tone) + 128.0 + 18.0 * tone
    return np.clip(out, 0, 255).astype(np.uint8)

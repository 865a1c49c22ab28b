"""Images and text share the latent semantics: simple probes recover topic from pixels and from text,
the pixel-only factor (visual style) only from pixels and the text-only factor (attribute) only from text."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def colour_histograms(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole-image and foreground (two most common colours removed) 4x4x4 colour histograms."""
    q = (images // 64).astype(np.int32)
    codes = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).reshape(len(images), -1)
    full = np.zeros((len(images), 64), np.float32)
    fg = np.zeros_like(full)
    for i, c in enumerate(codes):
        b = np.bincount(c, minlength=64).astype(np.float32)
        full[i] = b / b.sum()
        b[np.argsort(b)[-2:]] = 0
        fg[i] = b / max(b.sum(), 1.0)
    return full, fg


def texture(images: np.ndarray) -> np.ndarray:
    g = images.astype(np.float32).mean(-1) / 255.0
    return np.stack([np.abs(np.diff(g, axis=1)).mean((1, 2)), np.abs(np.diff(g, axis=2)).mean((1, 2)),
                     np.abs(g[:, 1:, 1:] - g[:, :-1, :-1]).mean((1, 2)),
                     np.abs(g[:, 1:, :-1] - g[:, :-1, 1:]).mean((1, 2))], 1)


@pytest.fixture(scope="module")
def modalities(tiny_world):
    n = 3000
    imgs = tiny_world.images(range(n))
    full, fg = colour_histograms(imgs)
    pixels = np.concatenate([full, fg, texture(imgs) * 10], 1)
    pins = tiny_world.table("pins").sort("pin_id")
    text = [f"{a or ''} {b or ''}" for a, b in zip(pins["title"].to_list(), pins["description"].to_list())]
    captions = pins["caption"].to_list()
    train = np.arange(n) < 2200
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True)
    vec.fit([t for t, m in zip(text + captions, np.concatenate([train, train])) if m])
    scaler = StandardScaler().fit(pixels[train])
    return {"pixels": scaler.transform(pixels), "text": vec.transform(text), "caption": vec.transform(captions),
            "train": train, "truth": tiny_world.truth.pins}


def probe(x, y, train) -> tuple[float, float]:
    """Held-out accuracy of a logistic-regression probe, and the majority-class baseline."""
    model = LogisticRegression(max_iter=300, C=0.5).fit(x[train], y[train])
    acc = float((model.predict(x[~train]) == y[~train]).mean())
    majority = float((y[~train] == np.bincount(y[train]).argmax()).mean())
    return acc, majority


def test_topic_from_pixels_and_from_text(modalities):
    m = modalities
    topic = m["truth"].topic.astype(int)
    for name in ("pixels", "text", "caption"):
        acc, majority = probe(m[name], topic, m["train"])
        assert acc > 3 * majority, (name, acc, majority)


def test_style_only_in_pixels(modalities):
    m = modalities
    style = m["truth"].style.astype(int)
    acc_pix, majority = probe(m["pixels"], style, m["train"])
    assert acc_pix > 0.8
    for name in ("text", "caption"):
        acc, majority = probe(m[name], style, m["train"])
        assert acc < majority + 0.06, (name, acc, majority)


def test_attribute_only_in_text(modalities):
    m = modalities
    attr = m["truth"].attr.astype(int)
    acc_text, majority = probe(m["text"], attr, m["train"])
    assert acc_text > 0.6
    for name in ("pixels", "caption"):
        acc, majority = probe(m[name], attr, m["train"])
        assert acc < majority + 0.06, (name, acc, majority)

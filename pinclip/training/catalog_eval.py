"""Recall@K on a catalog (images with texts and categories, no logs): two small pure functions.

* :func:`image_text_recall`: query i's image -> its own text; distractors: the texts of every other
  evaluated item that has one.
* :func:`image_image_recall`: query i's image -> the image of one other item of its category (drawn with
  ``seed``); distractors: the items of other categories (items sharing a category with the query are
  neither its positive's rivals nor misses). Items without a same-category partner are not queries.

Both count ties against the positive, as :func:`pinclip.training.evaluate.distractors_at_or_above` does,
and return the fraction of queries hit per K with the number of queries.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

import numpy as np

# the module, not its names: pinclip.training.evaluate imports this module back, in either order
from pinclip.training import evaluate

KS = (1, 5, 10)


class CatalogRecall(NamedTuple):
    recall: dict[int, float]   # {K: fraction of queries hit} (NaN without queries)
    queries: int


def image_text_recall(image_vecs, text_vecs, has_text, ks: Sequence[int] = KS) -> CatalogRecall:
    """Image -> own text Recall@K over the items with ``has_text`` (rows of ``text_vecs`` without text are unused)."""
    image_vecs, text_vecs = np.asarray(image_vecs), np.asarray(text_vecs)
    has_text = np.asarray(has_text, dtype=bool)
    if image_vecs.shape != text_vecs.shape or has_text.shape != image_vecs.shape[:1]:
        raise ValueError(f"catalog eval: expected image and text vectors (n, d) and has_text (n,), found "
                         f"{image_vecs.shape}, {text_vecs.shape} and {has_text.shape}")
    rows = np.flatnonzero(has_text)
    texts = text_vecs[rows]
    own = np.arange(len(rows))
    counts = evaluate.distractors_at_or_above(image_vecs[rows], texts, texts, exclude=(own, own))
    return CatalogRecall(evaluate.recall_from_counts(counts, ks), len(rows))


def _labels(category) -> tuple:
    """An item's categories: none, one label, or a collection of labels (a string is one label)."""
    if category is None:
        return ()
    if isinstance(category, (str, bytes)) or not isinstance(category, Iterable):
        return (category,)
    return tuple(category)


def image_image_recall(image_vecs, categories: Sequence[Hashable], ks: Sequence[int] = KS,
                       seed: int = 0) -> CatalogRecall:
    """Image -> image Recall@K by category (see the module docstring).

    ``categories[i]`` is item i's category, a collection of them (an item on several boards), or None;
    an item without a category is never a query but is a distractor for every query.
    """
    vecs = np.asarray(image_vecs)
    if vecs.ndim != 2 or len(categories) != len(vecs):
        raise ValueError(f"catalog eval: expected image vectors (n, d) and one category per row, found "
                         f"{vecs.shape} and {len(categories)} categories")
    members: dict = {}
    labels = [_labels(c) for c in categories]
    for i, item_labels in enumerate(labels):
        for label in item_labels:
            members.setdefault(label, []).append(i)
    rng = np.random.default_rng(seed)
    queries, positives, ex_rows, ex_cols = [], [], [], []
    for i, item_labels in enumerate(labels):
        related = np.unique(np.concatenate([members[label] for label in item_labels])) if item_labels else []
        partners = [j for j in related if j != i]
        if not partners:
            continue
        row = len(queries)
        queries.append(i)
        positives.append(partners[rng.integers(len(partners))])
        ex_rows += [row] * len(related)
        ex_cols += list(related)
    queries = np.asarray(queries, dtype=np.int64)
    counts = evaluate.distractors_at_or_above(vecs[queries], vecs[np.asarray(positives, dtype=np.int64)], vecs,
                                     exclude=(np.asarray(ex_rows, np.int64), np.asarray(ex_cols, np.int64)))
    return CatalogRecall(evaluate.recall_from_counts(counts, ks), len(queries))

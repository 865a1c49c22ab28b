"""Point-in-time lookups over event rows: "what happened to this entity before that day".

Rows (entity, day, item) are sorted once by (entity, day); a query (entity, day) binary-searches the
first row on or after that day, so every feature built here sees only events strictly before the
example's day.
"""

from __future__ import annotations

import numpy as np

DAY_OFFSET = 1 << 20   # days may be negative (back catalog); keys stay positive and ordered


def entity_day_keys(entity, day) -> np.ndarray:
    """One ordered int64 key per (entity, day): sorts by entity, then day."""
    return np.asarray(entity, np.int64) * (2 * DAY_OFFSET) + (np.asarray(day, np.int64) + DAY_OFFSET)


class History:
    """Sorted events of entities, with optional items (e.g. the pin a user saved) and weights."""

    def __init__(self, entity, day, item=None, weight=None):
        keys = entity_day_keys(entity, day)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.entity = np.asarray(entity, np.int64)[order]
        self.item = None if item is None else np.asarray(item, np.int64)[order]
        w = np.ones(len(order)) if weight is None else np.asarray(weight, np.float64)[order]
        self.cumulative = np.concatenate([[0.0], np.cumsum(w)])

    def _bounds(self, entity, day) -> tuple[np.ndarray, np.ndarray]:
        lo = np.searchsorted(self.keys, entity_day_keys(entity, -DAY_OFFSET + 1), side="left")
        hi = np.searchsorted(self.keys, entity_day_keys(entity, day), side="left")
        return lo, hi

    def count_before(self, entity, day) -> np.ndarray:
        """Sum of weights of the entity's events on days < ``day``."""
        lo, hi = self._bounds(entity, day)
        return self.cumulative[hi] - self.cumulative[lo]

    def recent_before(self, entity, day, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The entity's last ``k`` items before ``day`` (newest last), as jagged (values, lengths)."""
        if self.item is None:
            raise ValueError("History.recent_before needs items")
        lo, hi = self._bounds(entity, day)
        lengths = np.minimum(hi - lo, k)
        starts = hi - lengths
        return self.item[_ranges(starts, lengths)], lengths


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l), vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def gather_jagged(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a CSR jagged array (values, offsets) -> (values, lengths) for those rows."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    return values[_ranges(starts, lengths)], lengths

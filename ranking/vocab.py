"""Id vocabularies: known ids to dense rows, with row 0 for every id not known."""

from __future__ import annotations

import numpy as np


class Vocab:
    """Sorted known ids -> rows 1..n; anything else -> 0 (the unknown row)."""

    def __init__(self, ids):
        self.ids = np.unique(np.asarray(ids, np.int64))

    def __len__(self) -> int:
        return len(self.ids) + 1

    def rows(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        if len(self.ids) == 0:
            return np.zeros(len(ids), np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, pos + 1, 0)

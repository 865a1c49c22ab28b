"""Co-engagement vectors: what the save graph knows about a pin, as of a day, with no content at all.

A pin's vector is its row in a truncated SVD of the degree-normalized user × pin save matrix, built from
saves strictly before a snapshot day; a user's vector is their row. Two pins saved by the same people
point the same way, so the cosine of a candidate with the query pin (Related Pins) or with the user is
the item-to-item and user-to-item collaborative signal that production rankers get from precomputed
graph embeddings (Pixie, PinSage). Snapshots are taken every ``every`` days, as a batch job would
publish them; an example on day d uses the snapshot of day ``every * floor(d / every)``, so it never sees a
save from its own day or later. A pin or user with no save before the snapshot has no vector (cosine 0,
flagged), which is what a fresh pin looks like to every engagement feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

from ranking.vocab import Vocab


@dataclass
class Snapshot:
    """Unit-norm user and pin vectors by vocabulary row (zero rows for row 0 and for those with no save
    before ``day``)."""

    day: int
    users: np.ndarray      # (len(user vocabulary), dim) float32
    pins: np.ndarray       # (len(pin vocabulary), dim) float32


class CoEngagement:
    """Point-in-time co-engagement vectors from saves (user_id, pin_id, day)."""

    KEEP = 2

    def __init__(self, user_id, pin_id, day, dim: int = 64, every: int = 7, seed: int = 0):
        if every < 1:
            raise ValueError(f"ranking: co-engagement snapshot interval must be >= 1 day, got {every}")
        # an id with no save at all (and so no vector in any snapshot) maps to row 0, a zero row
        self.users, self.pins = Vocab(user_id), Vocab(pin_id)
        self.user_row, self.pin_row = self.users.rows(user_id), self.pins.rows(pin_id)
        self.day = np.asarray(day, np.int64)
        self.dim, self.every, self.seed = dim, every, seed
        self._snapshots: dict[int, Snapshot] = {}

    def snapshot_day(self, day) -> np.ndarray:
        """The snapshot an example on ``day`` reads: the latest snapshot day on or before it."""
        return (np.asarray(day, np.int64) // self.every) * self.every

    def snapshot(self, day: int) -> Snapshot:
        """Vectors from the saves on days < ``day``. The last ``KEEP`` snapshots stay cached: training reads
        each snapshot once, and serving moves forward a day at a time."""
        if day not in self._snapshots:
            if len(self._snapshots) >= self.KEEP:
                self._snapshots.pop(next(iter(self._snapshots)))
            self._snapshots[day] = self._fit(day)
        return self._snapshots[day]

    def _fit(self, day: int) -> Snapshot:
        before = self.day < day
        users = np.zeros((len(self.users), self.dim), np.float32)
        pins = np.zeros((len(self.pins), self.dim), np.float32)
        # the save matrix over known ids only: vocabulary row r is matrix row r - 1
        rows, cols = self.user_row[before] - 1, self.pin_row[before] - 1
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(self.users) - 1, len(self.pins) - 1))
        m.data[:] = 1.0   # a pin saved twice by one user is one co-engagement
        du, dp = np.asarray(m.sum(1)).ravel(), np.asarray(m.sum(0)).ravel()
        k = min(self.dim, min(m.shape) - 1, int((du > 0).sum()) - 1, int((dp > 0).sum()) - 1)
        if k < 1:
            return Snapshot(day, users, pins)
        norm = sp.diags(1 / np.sqrt(np.maximum(du, 1))) @ m @ sp.diags(1 / np.sqrt(np.maximum(dp, 1)))
        u, s, vt = randomized_svd(norm, k, n_iter=5, random_state=self.seed)
        users[1:, :k] = _unit(u * s, du > 0)
        pins[1:, :k] = _unit(vt.T * s, dp > 0)
        return Snapshot(day, users, pins)

    def features(self, user_id, pin_id, query_pin_id, day) -> np.ndarray:
        """Per example (n, 4): cosine of the candidate with the user and with the query pin (0 without a
        query or where either has no vector), whether the candidate has a vector, whether the query has."""
        user, pin = self.users.rows(user_id), self.pins.rows(pin_id)
        query = self.pins.rows(query_pin_id)   # -1 (no query) is never a saved pin's id
        snap_day = self.snapshot_day(day)
        out = np.zeros((len(pin_id), 4), np.float32)
        for s in np.unique(snap_day):
            rows = np.flatnonzero(snap_day == s)
            snap = self.snapshot(int(s))
            cand, q = snap.pins[pin[rows]], snap.pins[query[rows]]
            out[rows, 0] = np.einsum("nd,nd->n", cand, snap.users[user[rows]])
            out[rows, 1] = np.einsum("nd,nd->n", cand, q)
            out[rows, 2] = cand.any(1)
            out[rows, 3] = q.any(1)
        return out


def _unit(x: np.ndarray, present: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(present[:, None] & (n > 0), x / np.maximum(n, 1e-12), 0.0).astype(np.float32)

"""Deterministic randomisation: a salted hash puts every user in one of 10,000 buckets, and the
traffic split maps bucket ranges to variants.

bucket(user) = int(blake2b(f"{salt}:{user_id}", 8 bytes), big-endian) mod 10,000. Changing the salt
re-randomises everyone independently of any earlier experiment; the same salt always gives the same
assignment, on any machine, without storing it.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

BUCKETS = 10_000
NOT_IN_EXPERIMENT = -1


def buckets(salt: str, user_ids) -> np.ndarray:
    """Bucket in [0, 10000) of each user for ``salt``."""
    ids = np.asarray(user_ids, np.int64).reshape(-1)
    out = np.empty(len(ids), np.int64)
    prefix = f"{salt}:"
    for i, u in enumerate(ids.tolist()):
        digest = hashlib.blake2b(f"{prefix}{u}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") % BUCKETS
    return out


def bucket_bounds(shares: Sequence[float]) -> np.ndarray:
    """Upper bucket bound of each variant: variant j owns buckets [bounds[j-1], bounds[j])."""
    bounds = np.rint(np.cumsum(np.asarray(shares, float)) * BUCKETS).astype(np.int64)
    if bounds[-1] > BUCKETS or (np.diff(np.concatenate([[0], bounds])) <= 0).any():
        raise ValueError(f"abtest: traffic shares {list(shares)}: expected positive shares summing to at most 1")
    return bounds


def variant_of_buckets(b: np.ndarray, shares: Sequence[float]) -> np.ndarray:
    """Variant index per bucket (-1 outside the experiment's traffic); works on any array shape."""
    bounds = bucket_bounds(shares)
    v = np.searchsorted(bounds, b, side="right")
    return np.where(v < len(bounds), v, NOT_IN_EXPERIMENT).astype(np.int8)


def assign(salt: str, user_ids, shares: Sequence[float]) -> np.ndarray:
    """Variant index of each user (0 = control, 1 = treatment, -1 = not in the experiment)."""
    return variant_of_buckets(buckets(salt, user_ids), shares)


def sample_users(user_ids, fraction: float = 1.0, count: int | None = None, seed: int = 0) -> np.ndarray:
    """The users who can enter the experiment, sorted: a hash sample independent of the assignment
    salt (``fraction`` of the buckets, then the ``count`` lowest hashes)."""
    ids = np.unique(np.asarray(user_ids, np.int64))
    b = buckets(f"sample-{seed}", ids)
    keep = b < int(round(fraction * BUCKETS))
    ids, b = ids[keep], b[keep]
    if count is not None and len(ids) > count:
        ids = ids[np.sort(np.lexsort((ids, b))[:count])]
    return np.sort(ids)

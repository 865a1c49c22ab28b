"""Stateless hashing of integer ids: the same id gives the same number on every machine and in every run."""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: uint64 in, well-mixed uint64 out (wraps around, as intended)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform_hash(ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per id: a function of (seed, id) alone."""
    with np.errstate(over="ignore"):
        x = np.asarray(ids).astype(np.uint64) + np.uint64(seed) * GOLDEN
        return (mix64(x) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53

"""The world clock: days, the one definition of fresh content and new ads, and the default cutoff."""

from __future__ import annotations

import numpy as np

FRESH_DAYS = 28   # content is fresh when its age at impression time is < 28 days
NEW_AD_DAYS = 14  # an ad is new when its age at impression time is < 14 days
AGE_BUCKETS = ((0, 1), (1, 7), (7, 28), (28, None))  # content-age buckets [lo, hi) in days


def default_cutoff(first_day: int, end_day: int) -> int:
    """The default training cutoff T: two thirds into the log window of days [first_day, end_day)."""
    return first_day + (2 * (end_day - first_day)) // 3


def age(created_day, day):
    """Age in days at ``day`` of content created on ``created_day`` (both arrays or scalars)."""
    return np.asarray(day) - np.asarray(created_day)


def is_fresh(created_day, day):
    return age(created_day, day) < FRESH_DAYS


def is_new_ad(created_day, day):
    return age(created_day, day) < NEW_AD_DAYS


def age_bucket(created_day, day) -> np.ndarray:
    """Index into AGE_BUCKETS for each item."""
    a = age(created_day, day)
    return np.searchsorted([1, 7, 28], a, side="right")

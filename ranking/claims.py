"""The cold-start claims a content embedding must show in ranking, checked on the arms' per-seed AUCs.

Every check is a difference of AUCs paired by seed (a lift is the arm's AUC minus the IDs-only AUC of the
same seed). A claim that something is larger **holds** when the difference is positive on every seed and
its mean is more than twice its standard error, so that it stands out of the seed-to-seed spread; the
shuffled arm's "no lift" holds when its lift is not positive by that same rule. One seed is not judged.
A reference comparison is reported with the same figures and never judged.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pinlift.core.vocabulary import ADS, FEED, RELATED, Vocabulary
from ranking.arms import ARMS

IMPRESSION_SLICES = ("train_impressions_0", "train_impressions_1_10", "train_impressions_11_100",
                     "train_impressions_101+")
FRESH_SLICE = {FEED: "fresh", RELATED: "fresh", ADS: "new_ads"}   # a surface's kind -> its cold content's slice


def key_tasks(tasks: Iterable[str]) -> list[str]:
    """Each surface's key task, its first declared one, from ``surface/action`` names in declaration order
    (an eval report's metrics)."""
    first: dict[str, str] = {}
    for task in tasks:
        first.setdefault(task.split("/")[0], task)
    return list(first.values())


def _auc(runs: list[dict], task: str, sl: str) -> np.ndarray | None:
    cells = [r["metrics"].get(task, {}).get(sl) for r in runs]
    return None if any(c is None for c in cells) else np.array([c["auc"] for c in cells])


def _lift(reports: dict[str, list[dict]], arm: str, task: str, sl: str) -> np.ndarray | None:
    a, base = _auc(reports[arm], task, sl), _auc(reports["ids"], task, sl)
    return None if a is None or base is None else a - base[:len(a)]


def _record(claim: str, diff: np.ndarray, *, larger: bool = True, reference: bool = False) -> dict:
    record = {"claim": claim, "per_seed": [float(d) for d in diff], "mean": float(diff.mean()), "se": None,
              "holds": None, "reference": reference}
    if len(diff) > 1:   # one seed has no spread to judge by
        record["se"] = float(diff.std(ddof=1) / np.sqrt(len(diff)))
        if not reference:
            positive = bool((diff > 0).all() and record["mean"] > 2 * record["se"])
            record["holds"] = positive if larger else not positive
    return record


def claim_checks(reports: dict[str, list[dict]], vocab: Vocabulary, arm: str = "pinclip") -> list[dict]:
    """The claims for ``arm`` against IDs-only, its shuffled control and the topic floor, and the reference
    comparisons, on every key task the reports have (surfaces of ``vocab``); claims whose arms or slices are
    missing are left out."""
    if "ids" not in reports or arm not in reports:
        return []
    out = []
    for task in key_tasks(reports["ids"][0]["metrics"]):
        fresh = FRESH_SLICE[vocab.kind_of(task.split("/")[0])]
        overall, cold = _lift(reports, arm, task, "all"), _lift(reports, arm, task, fresh)
        if overall is None:
            continue
        out.append(_record(f"{task}: {arm} lifts AUC overall", overall))
        if cold is not None:
            out.append(_record(f"{task}: the lift on {fresh} exceeds the overall lift", cold - overall))
        by_impressions = [_lift(reports, arm, task, sl) for sl in IMPRESSION_SLICES]
        if all(x is not None for x in by_impressions):
            means = ", ".join(f"{x.mean():+.4f}" for x in by_impressions)
            few, many = (by_impressions[0] + by_impressions[1]) / 2, (by_impressions[2] + by_impressions[3]) / 2
            out.append(_record(f"{task}: the lift shrinks with training impressions (0 / 1–10 / 11–100 / 101+: "
                               f"{means}; checked: the mean of 0 and 1–10 against that of 11–100 and 101+)", few - many))
        for floor in (a for a in ARMS.values() if a.floor):
            if floor.name in reports and cold is not None and (lift := _lift(reports, floor.name, task, fresh)) is not None:
                out.append(_record(f"{task}: {arm} {floor.floor} on {fresh}", cold - lift, reference=floor.reference))
        shuffled = f"{arm}_shuffled"
        if shuffled in reports and (noise := _lift(reports, shuffled, task, "all")) is not None:
            out.append(_record(f"{task}: {shuffled} shows no lift", noise, larger=False))
    return out


def format_checks(checks: list[dict]) -> str:
    """One line per claim: holds or fails (or a reference), the mean paired difference ± its standard error,
    per seed."""
    verdict = {True: "holds", False: "**fails**", None: "not judged (one seed)"}
    return "\n".join(f"- {'reference' if c.get('reference') else verdict[c['holds']]}: {c['claim']}: {c['mean']:+.4f}"
                     + ("" if c["se"] is None else f" ± {c['se']:.4f}") + " "
                     f"(per seed {', '.join(f'{d:+.4f}' for d in c['per_seed'])})" for c in checks)

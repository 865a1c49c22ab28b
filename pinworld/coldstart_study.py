"""The cold-start lift study: how much do true content features lift a simple click model, and how
much more on fresh pins than on old ones?

On one surface of a generated world, impressions on days < T train a logistic regression (scikit-learn,
liblinear, L2, fixed ``C`` and seed) and impressions on days >= T evaluate it with ROC AUC
(``sklearn.metrics.roc_auc_score``). Three arms share everything but the content features:

* ``ids``    -- the ID baseline: pin-ID one-hot (only pins with an impression before T get a column; a
  pin first seen from T on has no ID feature), user-ID one-hot and position one-hot.
* ``topic``  -- ``ids`` plus the pin's topic one-hot (:func:`pinworld.oracle.topic_one_hot`, the floor).
* ``oracle`` -- ``ids`` plus the oracle features (:func:`pinworld.oracle.oracle_features`: topic
  one-hot, pixel-only visual style one-hot, text-only attribute one-hot, and the visible part of the
  pin's quality when the world's images show one -- the ceiling of a content embedding).

With ``crosses=True`` (the default) the content arms also get user x content crosses: one sparse
column per (user, content feature), i.e. a per-user weight on each topic / style / attribute. Without
them a linear model can only learn the *global* appeal of content, which in pinworld is weak (most of
the content effect is personal taste), so the crosses are what lets content features personalise --
the job a content embedding does inside a real ranker. Nothing else is crossed and nothing is tuned
per arm.

AUC is reported on all test impressions and on slices: ``fresh`` (pin age < 28 days at impression,
:mod:`pinlift.core.clock`), ``old`` (the rest) and ``unseen`` (pins with no training impression, so no ID
feature). Lifts are arm AUC minus ``ids`` AUC on the same rows. Their spread comes from a Poisson
bootstrap over users (the models are fixed; test rows are reweighted per user), which is cheap and
accounts for the clustering of impressions by user.

Usage: ``python -m pinworld.coldstart_study --workdir W [--out results.json]`` prints a table and writes
the result as JSON. See docs/coldstart_study.md for figures on the ``small`` preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pinlift.core.cli import add_debug_flag, run_command
from pinlift.core.clock import FRESH_DAYS, is_fresh
from pinlift.core.vocabulary import ACTIONS, FEED, REPIN
from pinworld.oracle import oracle_features
from pinworld.world import World

ARMS = ("ids", "topic", "oracle")
SLICES = ("all", "fresh", "old", "unseen")
DEFAULT_C = 0.3


def _one_hot(cols: np.ndarray, n_cols: int, keep: np.ndarray | None = None) -> sp.csr_matrix:
    """One row per entry of ``cols`` with a 1 in column ``cols[i]`` (no entry where ``keep`` is False)."""
    n_rows = len(cols)
    rows = np.arange(n_rows)
    if keep is not None:
        rows, cols = rows[keep], cols[keep]
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, n_cols))


def _content_block(content: np.ndarray, pins: np.ndarray, users: np.ndarray, n_users: int,
                   crosses: bool) -> list[sp.csr_matrix]:
    """Dense content features of each row's pin, plus (optionally) user x content crosses."""
    feats = content[pins]
    blocks = [sp.csr_matrix(feats)]
    if crosses:
        r, c = np.nonzero(feats)
        k = content.shape[1]
        blocks.append(sp.csr_matrix((feats[r, c], (r, users[r].astype(np.int64) * k + c)),
                                    shape=(len(pins), n_users * k)))
    return blocks


def run_study(workdir, cutoff: int | None = None, surface: str | None = None, label: str = ACTIONS[0],
              seed: int = 0, *, crosses: bool = True, C: float = DEFAULT_C, n_boot: int = 20) -> dict:
    """Train the three arms on days < ``cutoff`` and evaluate them on days >= ``cutoff``.

    ``cutoff`` defaults to 2/3 of the log window. Returns a JSON-able dict with the world's identity,
    the study settings, row counts per slice, each arm's AUC per slice, lifts vs ``ids`` and their
    bootstrap spread, and the orderings the study is about (``checks``).
    """
    if label not in ACTIONS:
        raise ValueError(f"unknown label {label!r}: expected one of {', '.join(ACTIONS)}")
    t_start = time.time()
    world = World(workdir)
    surface = world.truth.vocab.surface(surface).name if surface else world.truth.vocab.first(FEED).name
    cfg = world.config
    T = int(cutoff) if cutoff is not None else world.default_cutoff()
    if not 0 < T < cfg.days:
        raise ValueError(f"cutoff {T} must be inside the log window (0, {cfg.days})")
    truth = world.truth

    imp = world.impressions(surfaces=[surface]).select("day", "user_id", "pin_id", "position", label)
    day = imp["day"].to_numpy()
    pin = imp["pin_id"].to_numpy().astype(np.int64)
    user = imp["user_id"].to_numpy().astype(np.int64)
    pos = imp["position"].to_numpy().astype(np.int64)
    y = imp[label].to_numpy().astype(np.int8)
    train, test = day < T, day >= T
    if not train.any() or not test.any():
        raise ValueError(f"no {surface} impressions on one side of cutoff {T}")

    n_pins, n_users, n_pos = len(truth.pins.topic), cfg.n_users, int(pos.max()) + 1
    # pin-ID vocabulary: pins with a training impression; the rest get no ID column
    seen = np.zeros(n_pins, bool)
    seen[pin[train]] = True
    pin_col = np.cumsum(seen) - 1
    fresh = is_fresh(truth.pins.created_day[pin], day)
    oracle = oracle_features(world)
    content = {"topic": oracle[:, : truth.n_topics], "oracle": oracle}

    def design(rows: np.ndarray, arm: str) -> sp.csr_matrix:
        p, u = pin[rows], user[rows]
        blocks = [_one_hot(pin_col[p], int(seen.sum()), seen[p]), _one_hot(u, n_users), _one_hot(pos[rows], n_pos)]
        if arm != "ids":
            blocks += _content_block(content[arm], p, u, n_users, crosses)
        return sp.hstack(blocks, format="csr")

    tr_rows, te_rows = np.flatnonzero(train), np.flatnonzero(test)
    y_tr, y_te = y[train], y[test]
    slice_masks = {"all": np.ones(len(te_rows), bool), "fresh": fresh[test], "old": ~fresh[test],
                   "unseen": ~seen[pin[test]]}
    scores, n_features, fit_seconds = {}, {}, {}
    for arm in ARMS:
        t0 = time.time()
        x_tr = design(tr_rows, arm)
        model = LogisticRegression(C=C, solver="liblinear", dual=True, random_state=seed, max_iter=1000)
        model.fit(x_tr, y_tr)
        scores[arm] = model.decision_function(design(te_rows, arm))
        n_features[arm] = int(x_tr.shape[1])
        fit_seconds[arm] = round(time.time() - t0, 2)

    def aucs(weights: np.ndarray | None) -> dict[str, dict[str, float]]:
        out = {}
        for arm in ARMS:
            out[arm] = {}
            for s, m in slice_masks.items():
                yy = y_te[m]
                if yy.min(initial=1) == yy.max(initial=0):  # AUC undefined without both classes
                    out[arm][s] = float("nan")
                    continue
                w = None if weights is None else weights[m]
                out[arm][s] = float(roc_auc_score(yy, scores[arm][m], sample_weight=w))
        return out

    auc = aucs(None)
    lift = {arm: {s: auc[arm][s] - auc["ids"][s] for s in SLICES} for arm in ARMS if arm != "ids"}

    # Poisson bootstrap over users: the spread of the lifts (and of fresh-minus-old lift)
    rng = np.random.default_rng(seed)
    user_te = user[test]
    boot = {arm: {s: [] for s in (*SLICES, "fresh_minus_old")} for arm in lift}
    for _ in range(n_boot):
        w = rng.poisson(1.0, n_users).astype(np.float64)[user_te]
        a = aucs(w)
        for arm in lift:
            for s in SLICES:
                boot[arm][s].append(a[arm][s] - a["ids"][s])
            boot[arm]["fresh_minus_old"].append(boot[arm]["fresh"][-1] - boot[arm]["old"][-1])
    spread = {arm: {s: _summary(v) for s, v in d.items()} for arm, d in boot.items()} if n_boot else {}

    counts = {s: {"impressions": int(m.sum()), "positives": int(y_te[m].sum()),
                  "pins": int(len(np.unique(pin[test][m])))} for s, m in slice_masks.items()}
    counts["train"] = {"impressions": int(train.sum()), "positives": int(y_tr.sum()),
                       "pins": int(seen.sum())}
    checks = {
        "oracle_beats_ids": bool(lift["oracle"]["all"] > 0),
        "topic_beats_ids": bool(lift["topic"]["all"] > 0),
        "oracle_beats_topic": bool(auc["oracle"]["all"] > auc["topic"]["all"]),
        "oracle_lift_fresh_gt_old": bool(lift["oracle"]["fresh"] > lift["oracle"]["old"]),
        "topic_lift_fresh_gt_old": bool(lift["topic"]["fresh"] > lift["topic"]["old"]),
    }
    return {
        "study": "coldstart",
        "world": {"workdir": str(world.workdir), "preset": world.meta.get("preset"),
                  "seed": world.meta.get("seed"), "generator_version": world.generator_version,
                  "days": cfg.days},
        "settings": {"cutoff": T, "surface": surface, "label": label, "seed": seed, "crosses": crosses,
                     "C": C, "solver": "liblinear (dual)", "n_boot": n_boot, "fresh_days": FRESH_DAYS,
                     "features": _feature_description(crosses)},
        "counts": counts,
        "n_features": n_features,
        "auc": auc,
        "lift": lift,
        "bootstrap": spread,
        "checks": checks,
        "seconds": {"fit": fit_seconds, "total": round(time.time() - t_start, 2)},
    }


def _summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"sd": float("nan"), "p05": float("nan"), "p95": float("nan"), "share_positive": float("nan")}
    return {"sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "p05": float(np.quantile(v, 0.05)),
            "p95": float(np.quantile(v, 0.95)), "share_positive": float((v > 0).mean())}


def _finite(obj):
    """``obj`` with non-finite floats (an AUC undefined on a one-class slice) replaced by None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _feature_description(crosses: bool) -> dict[str, str]:
    base = "pin-ID one-hot (pins with a training impression) + user-ID one-hot + position one-hot"
    x = " + user x content crosses" if crosses else ""
    return {"ids": base, "topic": f"{base} + topic one-hot{x}",
            "oracle": f"{base} + oracle (topic, style, attribute one-hots){x}"}


def format_table(result: dict) -> str:
    """A plain-text table of AUC per slice and arm, with lifts vs ``ids`` (+- bootstrap sd)."""
    s, w = result["settings"], result["world"]
    lines = [f"cold-start study: preset={w['preset']} seed={w['seed']} surface={s['surface']} "
             f"label={s['label']} cutoff={s['cutoff']}/{w['days']} crosses={s['crosses']} C={s['C']}",
             f"{'slice':<7} {'test rows':>10} {'ids':>7} {'topic':>7} {'oracle':>7} "
             f"{'lift topic':>17} {'lift oracle':>17}"]
    for sl in SLICES:
        a = result["auc"]
        cells = []
        for arm in ("topic", "oracle"):
            sd = result["bootstrap"].get(arm, {}).get(sl, {}).get("sd")
            cells.append(f"{result['lift'][arm][sl]:+.4f}" + (f" ±{sd:.4f}" if sd is not None else ""))
        lines.append(f"{sl:<7} {result['counts'][sl]['impressions']:>10} {a['ids'][sl]:>7.4f} "
                     f"{a['topic'][sl]:>7.4f} {a['oracle'][sl]:>7.4f} {cells[0]:>17} {cells[1]:>17}")
    fm = result["bootstrap"].get("oracle", {}).get("fresh_minus_old")
    extra = f" (bootstrap sd {fm['sd']:.4f}, share > 0: {fm['share_positive']:.2f})" if fm else ""
    lines.append(f"oracle lift fresh - old: {result['lift']['oracle']['fresh'] - result['lift']['oracle']['old']:+.4f}"
                 + extra)
    lines.append("checks: " + ", ".join(f"{k}={v}" for k, v in result["checks"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pinworld.coldstart_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a generated pinworld workdir")
    ap.add_argument("--cutoff", type=int, default=None, help="train on days < cutoff (default 2/3 of the window)")
    ap.add_argument("--surface", default=None, help="a surface of the world (default: its feed)")
    ap.add_argument("--label", default=REPIN, choices=ACTIONS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=DEFAULT_C, help="inverse L2 strength (default %(default)s)")
    ap.add_argument("--no-crosses", action="store_true", help="content features without user x content crosses")
    ap.add_argument("--n-boot", type=int, default=20, help="bootstrap replicates (0 to skip)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    return run_command("pinworld coldstart-study", lambda: _run(args), args.debug)


def _run(args) -> int:
    result = run_study(args.workdir, args.cutoff, args.surface, args.label, args.seed,
                       crosses=not args.no_crosses, C=args.C, n_boot=args.n_boot)
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_finite(result), indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``abtest simulate exp.yaml``: run an experiment against pinworld's ground-truth users.

Per day: embeddings of the pins created up to ``day − lag`` are published (incrementally) for arms that
use them; the sampled users who are active make requests on each surface; each request gets a candidate
pool (the organic sources, plus HNSW neighbours for arms with ``related_ann``); the arm of the user's
variant ranks it (Ads: a second-price auction on pCTR × bid); pinworld's ground truth draws the actions.
Rankers are frozen; only the Ads calibration layer follows each run's own served impressions
(``recalibrate_ads``: refitted after every day).

Common random numbers. Which users are active, their requests and candidate pools, the rankers' noise
and the uniforms behind every action draw come from streams seeded by (seed, day, surface) and drawn
for all sampled users, whatever their variant. So a user's events depend only on the arm serving
them: arms with the same ranking show the same slates, and arms that differ draw their actions with
the same uniforms. This removes the noise that independent draws would add to the comparison, keeps
A/A arms exactly equal in distribution, and lets the validation study evaluate every user under every
arm (potential outcomes) and re-randomise afterwards. An injected ``lift`` multiplies the ground-truth
probabilities of the arm's users by (1 + δ) at event generation.

Outputs (``W/experiments/<name>/``, written to a temporary directory and renamed into place):
``exposures/part-0.parquet``, ``events/day=D/part-0.parquet``, ``embeddings/<name>/v*`` (the versions
served), ``config.yaml`` and ``simulation.json``. Schemas in docs/abtest.md.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from abtest.assign import assign, sample_users
from abtest.candidates import AnnCandidateSource, CandidateSource, Requests
from abtest.config import VARIANTS, Arm, ExperimentConfig, dump_config
from pinlift.core.errors import InputError
from abtest.publishers import EmbeddingPublisher, make_publisher
from abtest.rankers import LoggingPolicyRanker, Ranker, RunRanker, auction, rank_slates
from abtest.storage import atomic_dir
from pinclip.index import HNSWConfig
from pinlift.core.vocabulary import ADS, CLICK, EVENTS, HIDE, IMPRESSION, RELATED, REPIN
from pinworld.world import World

# independent random streams per (seed, day, stream, surface's index in the workspace's declaration)
STREAM_ACTIVE, STREAM_REQUESTS, STREAM_RANK, STREAM_RESPOND = 1, 2, 3, 4
EVENTS_SCHEMA = pa.schema([
    pa.field("day", pa.int32(), False), pa.field("user_id", pa.int64(), False),
    pa.field("surface", pa.string(), False), pa.field("request_id", pa.int64(), False),
    pa.field("pin_id", pa.int64(), False), pa.field("position", pa.int16(), False),
    pa.field("action", pa.string(), False), pa.field("value", pa.float64(), True)])
EXPOSURES_SCHEMA = pa.schema([
    pa.field("experiment", pa.string(), False), pa.field("user_id", pa.int64(), False),
    pa.field("variant", pa.string(), False), pa.field("first_exposure_day", pa.int32(), False)])


def events_table(day: int, req: Requests, rows: np.ndarray, slates: np.ndarray, repin: np.ndarray,
                 click: np.ndarray, hide: np.ndarray, price: np.ndarray | None) -> pa.Table:
    """Event rows of requests ``rows``: one impression per filled slot and one row per action;
    ``value`` is the cost of an ad click (NULL elsewhere)."""
    masks = {IMPRESSION: slates >= 0, REPIN: repin, CLICK: click, HIDE: hide}
    cols = {k: [] for k in ("row", "pos", "action", "value")}
    for a, m in masks.items():
        r, k = np.nonzero(m)
        cols["row"].append(r)
        cols["pos"].append(k)
        cols["action"].append(np.full(len(r), EVENTS.index(a), np.int8))
        v = price[r, k] if (a == CLICK and price is not None) else np.full(len(r), np.nan)
        cols["value"].append(v)
    r, k, a, v = (np.concatenate(cols[c]) for c in ("row", "pos", "action", "value"))
    order = np.lexsort((a, k, req.request_ids[rows][r]))
    r, k, a, v = r[order], k[order], a[order], v[order]
    return pa.table({
        "day": np.full(len(r), day, np.int32),
        "user_id": req.user_ids[rows][r].astype(np.int64),
        "surface": pa.array([req.surface] * len(r), pa.string()),
        "request_id": req.request_ids[rows][r].astype(np.int64),
        "pin_id": slates[r, k].astype(np.int64),
        "position": k.astype(np.int16),
        "action": pa.array(np.asarray(EVENTS)[a], pa.string()),
        "value": pa.array(v, pa.float64(), mask=np.isnan(v)),
    }, schema=EVENTS_SCHEMA)


def served_impressions(day: int, req: Requests, rows: np.ndarray, slates: np.ndarray,
                       click: np.ndarray) -> pl.DataFrame:
    """Filled slots of requests ``rows`` as impressions in the schema of ``World.impressions``."""
    r, k = np.nonzero(slates >= 0)
    n = len(r)
    return pl.DataFrame({
        "request_id": req.request_ids[rows][r].astype(np.int64), "day": np.full(n, day, np.int32),
        "surface": [req.surface] * n, "user_id": req.user_ids[rows][r].astype(np.int64),
        "query_pin_id": pl.Series([None] * n, dtype=pl.Int64), "pin_id": slates[r, k].astype(np.int64),
        "position": k.astype(np.int16), REPIN: np.zeros(n, bool), CLICK: click[r, k].astype(bool),
        HIDE: np.zeros(n, bool)})


@dataclass
class _Group:
    """Arms that rank identically (same ranking key) share one ranker and one set of slates."""

    arm: Arm
    ranker: Ranker
    variants: list[int]
    embeddings: str | None = None
    ann: AnnCandidateSource | None = None
    versions: dict = field(default_factory=dict)   # day -> embedding version served


def _config_arm(cfg: ExperimentConfig, arm: Arm) -> str:
    """Which arm of the file ``arm`` comes from (for error locations)."""
    t = cfg.arms.treatment
    if t is not None and arm.ranking_key() == t.ranking_key() != cfg.arms.control.ranking_key():
        return "treatment"
    return "control"


class Simulator:
    """Simulates ``variants`` (name, arm) for the sampled users; ``membership`` (users × variants)
    says under which variants each user is served (one-hot for an experiment, all for potential
    outcomes)."""

    def __init__(self, cfg: ExperimentConfig, world: World, out_workdir: Path,
                 variants: list[tuple[str, Arm]], users: np.ndarray, membership: np.ndarray):
        self.cfg, self.world, self.out_workdir = cfg, world, Path(out_workdir)
        self.truth = world.truth
        self.variants = variants
        self.users, self.membership = users, membership
        self.source = CandidateSource(world, cfg.ads_candidates_per_slot)
        self.publishers: dict[str, EmbeddingPublisher] = {}
        self.groups: list[_Group] = []
        scorers: dict[str, object] = {}
        for v, (name, arm) in enumerate(variants):
            loc = ("arms", _config_arm(cfg, arm))
            group = next((g for g in self.groups if g.arm.ranking_key() == arm.ranking_key()), None)
            if group is not None:
                group.variants.append(v)
                continue
            ranker, run_embeddings = self._ranker(arm, loc, scorers)
            embeddings = arm.embeddings or run_embeddings
            if run_embeddings and arm.embeddings and arm.embeddings != run_embeddings:
                raise cfg.error((*loc, "embeddings"), f"{run_embeddings!r} (the embedding run {arm.run!r} was "
                                f"trained with)", repr(arm.embeddings))
            if arm.related_ann is not None and not embeddings:
                raise cfg.error((*loc, "related_ann"), "an arm with `embeddings:` (the HNSW index is built "
                                "over them)", "no embeddings")
            ann = None
            if arm.related_ann is not None:
                a = arm.related_ann
                ann = AnnCandidateSource(a.k, HNSWConfig(m=a.m, ef_construction=40, ef_search=a.ef_search),
                                         self.truth.pins.is_ad)
            if embeddings and embeddings not in self.publishers:
                self.publishers[embeddings] = make_publisher(world, self.out_workdir, embeddings,
                                                             cfg.embedding_lag_days)
            self.groups.append(_Group(arm, ranker, [v], embeddings, ann))
        self.scorers = scorers
        self.calibration = self._calibrate(scorers)
        self.served_ads: dict[str, list[pl.DataFrame]] = {run: [] for run in self.calibration}
        self.first_day = np.full(len(users), np.iinfo(np.int32).max, np.int64)
        self.counts: dict[str, dict[str, int]] = {name: {} for name, _ in variants}
        self.next_request = 0

    def _ranker(self, arm: Arm, loc: tuple, scorers: dict) -> tuple[Ranker, str | None]:
        if arm.ranker == "logging_policy":
            return LoggingPolicyRanker(self.source), None
        from ranking.score import Scorer

        run_dir = self.world.workdir / "ranking" / "runs" / arm.run
        if not (run_dir / "config.json").is_file():
            raise self.cfg.error((*loc, "run"), f"a trained ranking run in {run_dir.parent}", f"no run {arm.run!r}")
        run_cfg = json.loads((run_dir / "config.json").read_text())
        cutoff = run_cfg.get("cutoff_day")
        if cutoff is not None and self.cfg.days.start < cutoff:
            raise self.cfg.error(("days", "start"), f"a day on or after the training cutoff of run {arm.run!r} "
                                 f"({cutoff}): the rankers must not have seen the experiment's days",
                                 self.cfg.days.start)
        if arm.run not in scorers:
            scorers[arm.run] = Scorer(self.world.workdir, arm.run, world=self.world)
        emb = run_cfg.get("embeddings")
        return RunRanker(scorers[arm.run]), (emb.split("@")[0] if emb else None)

    def _calibrate(self, scorers: dict) -> dict[str, dict]:
        """Fit each ranking run's Ads pCTR calibration on the logged days [its cutoff, the start)."""
        kinds = {self.cfg.vocabulary.kind_of(s) for s in self.cfg.surfaces}
        if not self.cfg.calibrate_ads or ADS not in kinds:
            return {}
        out = {}
        for run, scorer in scorers.items():
            since, until = scorer.cfg["cutoff_day"], self.cfg.days.start
            if until <= since:
                raise self.cfg.error(("calibrate_ads",), f"logged days between run {run!r}'s training cutoff "
                                     f"({since}) and days.start to calibrate Ads pCTR on, or `calibrate_ads: "
                                     "false`", f"days.start {until}")
            out[run] = {"days": [since, until], **scorer.fit_ads_calibration(since, until).to_dict()}
        return out

    def _active(self, day: int) -> np.ndarray:
        u = self.truth.users
        rng = np.random.default_rng([self.cfg.seed, day, STREAM_ACTIVE])
        draw = rng.random(len(self.users))
        return self.users[(u.signup_day[self.users] <= day) & (draw < u.activity[self.users])]

    def run_day(self, day: int, write, progress=None) -> None:
        """Simulate ``day``; ``write(variant_index, table)`` receives each variant's events."""
        cfg = self.cfg
        for name, pub in self.publishers.items():
            emb = pub.publish_until(day)
            for g in self.groups:
                if g.embeddings == name:
                    g.ranker.set_embeddings(emb)
                    if g.ann is not None:
                        g.ann.update(emb)
                    g.versions[day] = emb.ref
        active = self._active(day)
        index = cfg.vocabulary.names.index
        reqs = self.source.requests(
            day, active, cfg.surfaces, lambda s: np.random.default_rng([cfg.seed, day, STREAM_REQUESTS, index(s)]))
        tables: dict[int, list[pa.Table]] = {v: [] for v in range(len(self.variants))}
        for surface in cfg.surfaces:
            req = reqs[surface]
            req.request_ids = np.arange(self.next_request, self.next_request + len(req), dtype=np.int64)
            self.next_request += len(req)
            user_pos = np.searchsorted(self.users, req.user_ids)
            member = self.membership[user_pos]                      # (R, V)
            served = member.any(1)
            np.minimum.at(self.first_day, user_pos[served], day)
            key = (cfg.seed, day, STREAM_RANK, index(surface))
            respond_seed = [cfg.seed, day, STREAM_RESPOND, index(surface)]
            for g in self.groups:
                rows = np.flatnonzero(member[:, g.variants].any(1))
                slates = np.full((len(req), req.k), -1, np.int64)
                price = np.full((len(req), req.k), np.nan) if req.kind == ADS else None
                if len(rows):
                    pool = req.pool[rows]
                    if req.kind == RELATED and g.ann is not None:
                        pool = np.concatenate([pool, g.ann.related(req.query[rows])], 1)
                    scores = g.ranker.scores(req, rows, pool, day, key)
                    if req.kind == ADS:
                        slates[rows], price[rows] = auction(pool, scores, self.source.bid[np.maximum(pool, 0)],
                                                            req.k, cfg.reserve_cpc)
                    else:
                        slates[rows] = rank_slates(pool, scores, req.k)
                for v in g.variants:
                    mine = member[:, v]
                    if not mine.any():
                        continue
                    arm = self.variants[v][1]
                    full = np.where(mine[:, None], slates, -1)
                    # the same seed for every arm: common random numbers (see the module docstring)
                    resp = self.truth.respond(req.user_ids, full, day, surface, req.query,
                                              rng=np.random.default_rng(respond_seed), lift=arm.lift or None)
                    rows_v = np.flatnonzero(mine)
                    if req.kind == ADS and g.arm.run in self.served_ads:
                        self.served_ads[g.arm.run].append(
                            served_impressions(day, req, rows_v, full[rows_v], resp.click[rows_v]))
                    t = events_table(day, req, rows_v, full[rows_v], resp.repin[rows_v], resp.click[rows_v],
                                     resp.hide[rows_v], None if price is None else price[rows_v])
                    tables[v].append(t)
                    c = self.counts[self.variants[v][0]]
                    c[f"{surface}_requests"] = c.get(f"{surface}_requests", 0) + len(rows_v)
                    c[f"{surface}_impressions"] = c.get(f"{surface}_impressions", 0) + int((full[rows_v] >= 0).sum())
            if progress is not None:
                progress(surface)
        for v, ts in tables.items():
            if ts:
                write(v, pa.concat_tables(ts))
        if cfg.recalibrate_ads:
            self._recalibrate(day)

    def _recalibrate(self, day: int) -> None:
        """Refit each run's Ads calibration on its logged days plus the Ads impressions it has served."""
        for run, parts in self.served_ads.items():
            served = pl.concat(parts) if parts else None
            since, until = self.calibration[run]["days"]
            fit = self.scorers[run].fit_ads_calibration(since, until, served=served)
            self.calibration[run].setdefault("refits", []).append(
                {"after_day": day, "served_impressions": 0 if served is None else served.height, **fit.to_dict()})

    def exposures(self, names: np.ndarray) -> pa.Table:
        """Users with at least one request, their variant label (``names``, one per sampled user) and
        first exposure day."""
        seen = self.first_day < np.iinfo(np.int32).max
        return pa.table({"experiment": pa.array([self.cfg.name] * int(seen.sum()), pa.string()),
                         "user_id": self.users[seen].astype(np.int64),
                         "variant": pa.array(names[seen].tolist(), pa.string()),
                         "first_exposure_day": self.first_day[seen].astype(np.int32)}, schema=EXPOSURES_SCHEMA)


def _world(cfg: ExperimentConfig) -> World:
    cfg.require_simulation()
    try:
        world = World(cfg.workdir)
        world.truth  # noqa: B018 - fail now, not after the first day
    except FileNotFoundError as exc:
        raise cfg.error(("workdir",), "a pinworld workspace with ground truth (simulation needs "
                        "pinworld's users)", str(exc).splitlines()[0].removeprefix("pinworld: ")) from None
    return world


def eligible_users(cfg: ExperimentConfig, world: World) -> np.ndarray:
    """The user sample: users signed up before the experiment ends, hash-sampled (docs/abtest.md)."""
    users = world.table("users").select("user_id", "signup_day")
    ids = users["user_id"].to_numpy()[users["signup_day"].to_numpy() < cfg.days.end]
    return sample_users(ids, cfg.users.fraction, cfg.users.count, cfg.users.seed)


def _drive(sim: Simulator, cfg: ExperimentConfig, write, progress: bool, desc: str) -> None:
    days = range(cfg.days.start, cfg.days.end)
    with tqdm(total=len(days) * len(cfg.surfaces), desc=desc, unit="surface-day", disable=not progress,
              file=sys.stderr) as bar:
        for day in days:
            bar.set_postfix(day=day)
            sim.run_day(day, lambda v, t, d=day: write(v, d, t), progress=lambda s: bar.update(1))


def _warn_window(cfg: ExperimentConfig, world: World) -> list[str]:
    notes = []
    if cfg.days.end > world.config.days:
        notes.append(f"days {world.config.days}..{cfg.days.end - 1} are past the world's window "
                     f"[0, {world.config.days}): no new pins or ads arrive on them")
    return notes


def simulate(cfg: ExperimentConfig, *, progress: bool = True) -> Path:
    """Simulate the experiment into ``W/experiments/<name>/`` (atomically); returns that directory."""
    start = time.time()
    world = _world(cfg)
    users = eligible_users(cfg, world)
    variant = assign(cfg.assignment_salt, users, cfg.traffic.shares())
    names = [(v, cfg.arm(v)) for v in VARIANTS]
    membership = np.stack([variant == 0, variant == 1], 1)
    for j, v in enumerate(VARIANTS):
        if not membership[:, j].any():
            raise cfg.error(("traffic", v), f"a share that gives variant {v!r} some of the "
                            f"{len(users)} sampled users", "none assigned")
    notes = _warn_window(cfg, world)
    for n in notes:
        print(f"abtest: warning: {n}", file=sys.stderr)
    with atomic_dir(cfg.experiment_dir) as tmp:
        sim = Simulator(cfg, world, tmp, names, users, membership)

        def write(v: int, day: int, table: pa.Table) -> None:
            # both variants' events of a day go to one file per variant; analysis reads all of them
            part = tmp / "events" / f"day={day}"
            part.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, part / f"part-{VARIANTS[v]}.parquet")

        _drive(sim, cfg, write, progress, f"abtest simulate {cfg.name}")
        exposures = sim.exposures(np.asarray([VARIANTS[i] if i >= 0 else "" for i in variant], dtype=object))
        if exposures.num_rows == 0:
            raise cfg.error(("days",), "days on which sampled users make requests", "no requests")
        (tmp / "exposures").mkdir()
        pq.write_table(exposures, tmp / "exposures" / "part-0.parquet")
        (tmp / "config.yaml").write_text(dump_config(cfg))
        exposed = {v: int(sum(1 for x in exposures.column("variant").to_pylist() if x == v)) for v in VARIANTS}
        meta = {
            "experiment": cfg.name, "generator_version": world.generator_version,
            "days": [cfg.days.start, cfg.days.end], "surfaces": cfg.surfaces,
            "sampled_users": int(len(users)), "assigned": {v: int((variant == j).sum()) for j, v in enumerate(VARIANTS)},
            "exposed": exposed, "counts": sim.counts,
            "arms": {v: {**cfg.arm(v).model_dump(mode="json")} for v in VARIANTS},
            "embeddings_served": {VARIANTS[v]: {str(d): ref for d, ref in g.versions.items()}
                                  for g in sim.groups for v in g.variants},
            "publishes": {name: getattr(p, "history", []) for name, p in sim.publishers.items()},
            "ads_calibration": sim.calibration,
            "notes": notes, "seconds": round(time.time() - start, 2),
        }
        (tmp / "simulation.json").write_text(json.dumps(meta, indent=2, default=str))
    return cfg.experiment_dir


def simulate_potential_outcomes(cfg: ExperimentConfig, arms: dict[str, Arm], out_dir: Path, *,
                                progress: bool = True) -> dict[str, Path]:
    """Serve every sampled user under every arm in ``arms`` (same requests, same random numbers) and
    write one experiment-shaped directory per arm, ``out_dir/<arm>/{exposures,events}``: the
    potential outcomes the validation study re-randomises over. Returns arm -> directory."""
    world = _world(cfg)
    users = eligible_users(cfg, world)
    names = list(arms.items())
    membership = np.ones((len(users), len(names)), bool)
    with atomic_dir(Path(out_dir)) as tmp:
        sim = Simulator(cfg, world, tmp, names, users, membership)

        def write(v: int, day: int, table: pa.Table) -> None:
            part = tmp / names[v][0] / "events" / f"day={day}"
            part.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, part / "part-0.parquet")

        _drive(sim, cfg, write, progress, f"abtest potential outcomes {cfg.name}")
        for name, _ in names:
            (tmp / name / "exposures").mkdir(parents=True, exist_ok=True)
            pq.write_table(sim.exposures(np.full(len(users), name, dtype=object)),
                           tmp / name / "exposures" / "part-0.parquet")
        (tmp / "config.yaml").write_text(dump_config(cfg))
        (tmp / "potential.json").write_text(json.dumps(
            {"experiment": cfg.name, "arms": {n: a.model_dump(mode="json") for n, a in names},
             "users": int(len(users)), "counts": sim.counts, "generator_version": world.generator_version},
            indent=2))
    if not any(Path(out_dir).glob("*/events/*/*.parquet")):
        raise InputError(f"{out_dir}: events: expected event rows, found none (no requests on the experiment's days)")
    return {name: Path(out_dir) / name for name, _ in names}

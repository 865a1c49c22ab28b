"""Read a generated (or user-supplied) world, with as-of-day views that never leak later behaviour.

``World.pins(as_of=T)`` returns pins created before day T with the search queries and annotations
known before T; every behaviour table (pin_board, boards, queries, annotations, impressions) is cut at
``day < T``. Anything trained with cutoff T reads through these views.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pinworld.config import GENERATOR_VERSION, WorldConfig
from pinworld.engagement import GroundTruth
from pinworld.images import ImageStore
from pinworld.latents import PinLatents, UserLatents
from pinworld.render import STYLES
from pinlift.core.clock import default_cutoff
from pinlift.core.errors import InputError, input_error
from pinlift.core.schema import ADS_TABLE, TABLES
from pinlift.core.vocabulary import Vocabulary, load_vocabulary
from pinworld.text import ATTRIBUTES

KIND_POLARS = {"int": pl.Int64, "float": pl.Float32, "string": pl.String, "bool": pl.Boolean}
# day column of each table that behaviour creates; pins/ads/users are cut by their own creation day
DAY_COLUMNS = {"pins": "created_day", ADS_TABLE: "created_day", "users": "signup_day", "boards": "created_day",
               "pin_board": "day", "pin_search_queries": "day", "pin_annotations": "day", "impressions": "day"}


class NoGroundTruth(FileNotFoundError):
    """What needs pinworld's hidden state was asked of a workspace without it (a team's own data)."""


class World:
    """A workspace's tables (``world/``, ``logs/``) and, for pinworld's own worlds, its ground truth."""

    def __init__(self, workdir: Path | str):
        self.workdir = Path(workdir)
        self.dir = self.workdir / "world"
        if not (self.dir / "pins.parquet").is_file():
            raise FileNotFoundError(f"pinworld: {self.dir / 'pins.parquet'} not found "
                                    f"(run `pinworld generate --workdir {self.workdir}` or bring your own tables)")
        meta = self.dir / "world.json"
        # a user's own world has no world.json: it is "external", with no preset, seed or ground truth
        self.meta = json.loads(meta.read_text()) if meta.is_file() else {"generator_version": "external"}
        self.generator_version = self.meta.get("generator_version", GENERATOR_VERSION)

    @cached_property
    def config(self) -> WorldConfig:
        return WorldConfig.from_dict(self.meta["config"])

    @cached_property
    def vocabulary(self) -> Vocabulary:
        """The surfaces this workspace declares (``world/surfaces.yaml``)."""
        return load_vocabulary(self.workdir)

    @property
    def is_catalog(self) -> bool:
        """A workspace without logs: a catalog of pins, whose days are the pins' creation days."""
        return "config" not in self.meta and not self.has("impressions")

    @cached_property
    def log_window(self) -> tuple[int, int]:
        """Days [first, end) of the organic logs: pinworld's generated window, the days a team's own
        impressions span, or for a catalog the days its pins were created on."""
        if "config" in self.meta:
            return 0, self.config.days
        table, day = ("pins", "created_day") if self.is_catalog else ("impressions", "day")
        lo, hi = self.scan(table).select(lo=pl.col(day).min(), hi=pl.col(day).max()).collect().row(0)
        if lo is None:
            raise InputError(f"{self.workdir / TABLES[table].path}: {day}: expected rows to set the default "
                             "cutoff, found none (give the cutoff day)")
        return int(lo), int(hi) + 1

    def default_cutoff(self) -> int:
        """The cutoff T when none is given: ``pinlift.core.clock.default_cutoff`` of the log window, or a
        catalog's end, so that every pin is known (a catalog holds out only what its split does)."""
        first, end = self.log_window
        return end if self.is_catalog else default_cutoff(first, end)

    def cutoff(self, day: int | None = None) -> int:
        """The cutoff T: ``day``, which must leave log days before and from it (a catalog: pins before
        it), or the default one."""
        if day is None:
            return self.default_cutoff()
        first, end = self.log_window
        last, window = (end, "the catalog's days") if self.is_catalog else (end - 1, "the log window")
        if not first < day <= last:
            raise input_error(self.workdir, "cutoff_day", f"a day inside {window} ({first + 1} to {last})", day)
        return day

    def scan(self, table: str) -> pl.LazyFrame:
        """All rows of a table, lazily, with every schema column: an absent optional table is empty, and
        a column a file may leave out (or hold only nulls in) reads as typed nulls or its default."""
        t = TABLES[table]
        if not t.required and not self.has(table):
            return pl.LazyFrame(schema={c.name: KIND_POLARS[c.kind] for c in t.columns})
        filled = self.filled_columns(table)
        lf = self._files(table)
        return lf.with_columns([pl.lit(c.default, KIND_POLARS[c.kind]).alias(c.name) for c in t.columns
                                if c.name in filled]) if filled else lf

    def _files(self, table: str) -> pl.LazyFrame:
        path = self.workdir / TABLES[table].path
        return (pl.scan_parquet(path) if TABLES[table].path.endswith(".parquet")
                else pl.scan_parquet(path / "**" / "*.parquet", hive_partitioning=False))

    def filled_columns(self, table: str) -> set[str]:
        """The fillable columns of ``table`` that its files leave out or hold only nulls in (all of them
        for an absent optional table): they read as typed nulls or their default."""
        t = TABLES[table]
        if not t.required and not self.has(table):
            return {c.name for c in t.columns if c.fillable}
        found = self._files(table).collect_schema()
        return {c.name for c in t.columns if c.fillable and found.get(c.name, pl.Null) == pl.Null}

    def has(self, table: str) -> bool:
        path = self.workdir / TABLES[table].path
        return path.is_file() or (path.is_dir() and any(path.rglob("*.parquet")))

    def table(self, table: str, as_of: int | None = None) -> pl.DataFrame:
        """Rows of ``table`` from before day ``as_of`` (all rows when None; a null day, a user's unknown signup
        day, counts as before), filled as ``scan`` says."""
        lf = self.scan(table)
        if as_of is not None:
            lf = lf.filter((pl.col(DAY_COLUMNS[table]) < as_of).fill_null(True))
        return lf.collect()

    def pins(self, as_of: int | None = None) -> pl.DataFrame:
        """Pins created before ``as_of`` with list columns ``search_queries`` and ``annotations``
        (struct of annotation, score) holding only what was known before ``as_of``."""
        pins = self.table("pins", as_of)
        queries = (self.table("pin_search_queries", as_of).sort(["pin_id", "day"])
                   .group_by("pin_id", maintain_order=True).agg(pl.col("query").alias("search_queries")))
        ann = (self.table("pin_annotations", as_of).sort(["pin_id", "score"], descending=[False, True])
               .group_by("pin_id", maintain_order=True)
               .agg(pl.struct("annotation", "score").alias("annotations")))
        return (pins.join(queries, on="pin_id", how="left").join(ann, on="pin_id", how="left")
                .sort("pin_id"))

    def impressions(self, as_of: int | None = None, since: int | None = None,
                    surfaces: list[str] | None = None) -> pl.DataFrame:
        """Impressions on days [since, as_of), optionally for some surfaces."""
        lf = self.scan("impressions")
        if as_of is not None:
            lf = lf.filter(pl.col("day") < as_of)
        if since is not None:
            lf = lf.filter(pl.col("day") >= since)
        if surfaces is not None:
            lf = lf.filter(pl.col("surface").is_in(surfaces))
        return lf.collect()

    @cached_property
    def _image_uris(self) -> tuple[np.ndarray, list[str]]:
        pins = self.scan("pins").select("pin_id", "image_uri").collect().sort("pin_id")
        return pins["pin_id"].to_numpy(), pins["image_uri"].to_list()

    def images(self, pin_ids, size: int | None = None) -> np.ndarray:
        """uint8 images (n, H, W, 3) of the given pins."""
        ids, uris = self._image_uris
        want = np.asarray(pin_ids, np.int64)
        pos = np.minimum(np.searchsorted(ids, want), max(len(ids) - 1, 0))
        if len(want) and not (ids[pos] == want).all():
            raise KeyError(f"pinworld: pin_id {int(want[ids[pos] != want][0])} not in pins")
        store = self.__dict__.setdefault("_stores", {}).setdefault(size, ImageStore(self.dir, size))
        return store.load([uris[i] for i in pos])

    # ---- ground truth: only pinworld's own worlds have it ---------------------------------------

    @cached_property
    def truth(self) -> GroundTruth:
        """The hidden state and engagement model (pinworld worlds only)."""
        tdir = self.dir / "truth"
        if not tdir.is_dir():
            raise NoGroundTruth(f"pinworld: {tdir} not found: this world has no ground truth")
        p = pq.read_table(tdir / "pins.parquet")
        u = pq.read_table(tdir / "users.parquet")

        def col(t, name):
            return t.column(name).to_numpy()

        def fixed(t, name, width):
            return t.column(name).combine_chunks().flatten().to_numpy().reshape(-1, width)

        pins = PinLatents(
            topic=col(p, "topic"), objects=fixed(p, "objects", 3), style=col(p, "style"), attr=col(p, "attr"),
            quality=col(p, "quality"), created_day=col(p, "created_day"), is_ad=col(p, "is_ad"),
            advertiser_id=col(p, "advertiser_id"), bid=col(p, "bid"), ad_end_day=col(p, "ad_end_day"),
            ad_quality=col(p, "ad_quality"), language=col(p, "language"), text_quality=col(p, "text_quality"),
            colour=col(p, "colour"), arrangement=col(p, "arrangement"), scale=col(p, "scale"),
            rotations=fixed(p, "rotations", 3), jitter=fixed(p, "jitter", 6).reshape(-1, 3, 2),
            # worlds from pinworld-1.0 predate visible quality: their images show none
            visual_quality=col(p, "visual_quality") if "visual_quality" in p.column_names
            else np.zeros(p.num_rows, np.float32))
        t = self.meta["n_topics"]
        users = UserLatents(
            taste0=fixed(u, "taste0", t), taste1=fixed(u, "taste1", t),
            style_pref=fixed(u, "style_pref", len(STYLES)), attr_pref=fixed(u, "attr_pref", len(ATTRIBUTES)),
            activity=col(u, "activity"), signup_day=col(u, "signup_day"), language=col(u, "language"),
            policy_taste=fixed(u, "policy_taste", t))
        trend = np.load(tdir / "trend.npy", allow_pickle=False)
        return GroundTruth(self.config, pins, users, trend)

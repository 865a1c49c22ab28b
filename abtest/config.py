"""The experiment file (``exp.yaml``): a pydantic schema, and a loader whose errors name the field
and its line.

Everything that reaches SQL is validated here: surfaces, actions, event columns and pin filters are
closed vocabularies (``Literal``), metric names match ``[a-z][a-z0-9_]*`` and are only ever used as
labels. See docs/abtest.md for the field-by-field reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from pinlift.core.errors import InputError, input_error
from pinlift.core.config import ConfigSource, read_yaml, validation_error
from abtest.metrics import (ACTIONS, BUILTIN_METRICS, DEFAULT_METRICS, EVENT_COLUMNS, PIN_FILTERS,
                            SURFACES, Metric, metric_from_spec)

Surface = Literal["homefeed", "related", "ads"]
Action = Literal["impression", "repin", "click", "hide"]
LiftAction = Literal["repin", "click", "hide"]
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VARIANTS = ("control", "treatment")
assert set(ACTIONS) == set(Action.__args__) and set(SURFACES) == set(Surface.__args__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Traffic(_Strict):
    """Share of all users in each variant (buckets of 10,000); the rest are not in the experiment."""

    control: float = Field(0.5, gt=0, le=1)
    treatment: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _total(self):
        if self.control + self.treatment > 1 + 1e-9:
            raise ValueError(f"expected shares summing to at most 1, found {self.control + self.treatment:g}")
        return self

    def shares(self) -> tuple[float, float]:
        return (self.control, self.treatment)


class AnnCandidates(_Strict):
    """Related Pins candidates added from an HNSW index over the arm's published embeddings."""

    k: int = Field(16, ge=1, le=200)          # neighbours of the query pin added to the pool
    ef_search: int = Field(64, ge=1, le=4096)
    m: int = Field(16, ge=4, le=64)           # HNSW graph degree


class Arm(_Strict):
    """One variant: a ranker, optionally embeddings published during the experiment, extra candidates."""

    ranker: Literal["ranking_run", "logging_policy"] = "ranking_run"
    run: str | None = Field(None, pattern=NAME_RE)   # directory under W/ranking/runs
    embeddings: str | None = Field(None, pattern=NAME_RE)  # name under W/embeddings (default: the run's)
    related_ann: AnnCandidates | None = None
    lift: dict[LiftAction, float] = Field(default_factory=dict)  # validation only: P(action) x (1 + lift)

    @field_validator("lift")
    @classmethod
    def _lift(cls, v):
        for action, delta in v.items():
            if not -1 < delta < 10:
                raise ValueError(f"expected a relative lift in (-1, 10) for {action}, found {delta}")
        return v

    @model_validator(mode="after")
    def _ranker(self):
        if self.ranker == "ranking_run" and self.run is None:
            raise ValueError("expected `run: NAME` (a ranking run) or `ranker: logging_policy`, found no run")
        if self.ranker == "logging_policy" and self.run is not None:
            raise ValueError(f"expected no run with `ranker: logging_policy`, found run {self.run!r}")
        return self

    def ranking_key(self) -> tuple:
        """Arms with equal keys produce identical slates (they differ at most in injected lift)."""
        return (self.ranker, self.run, self.embeddings, self.related_ann)


class Arms(_Strict):
    control: Arm
    treatment: Arm | None = None


class Days(_Strict):
    """Experiment days [start, start + count); start must be on or after the rankers' training cutoff."""

    start: int = Field(ge=0)
    count: int = Field(ge=1, le=365)

    @property
    def end(self) -> int:
        return self.start + self.count


class UserSample(_Strict):
    """Which users can enter the experiment: a hash sample independent of the assignment salt."""

    fraction: float = Field(1.0, gt=0, le=1)
    count: int | None = Field(None, ge=2)
    seed: int = 0


class MetricSpec(_Strict):
    """A built-in metric by name (optionally restricted to some surfaces), or a custom aggregate."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")
    surfaces: list[Surface] | None = None
    aggregate: Literal["sum", "count", "mean"] | None = None
    column: Literal[EVENT_COLUMNS] | None = None  # type: ignore[valid-type]
    action: Action | None = None
    pins: Literal[PIN_FILTERS] | None = None  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _known(self):
        custom = self.aggregate is not None
        if not custom:
            if self.name not in BUILTIN_METRICS:
                raise ValueError(f"expected a built-in metric ({', '.join(BUILTIN_METRICS)}) or a custom "
                                 f"metric with `aggregate:`, found unknown metric {self.name!r}")
            extra = [f for f in ("column", "action", "pins") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"expected only `surfaces` for built-in metric {self.name!r}, found `{extra[0]}`")
            allowed = BUILTIN_METRICS[self.name].surfaces
            for s in self.surfaces or ():
                if s not in allowed:
                    raise ValueError(f"expected surfaces among {list(allowed)} for {self.name!r}, found {s!r}")
        else:
            if self.name in BUILTIN_METRICS:
                raise ValueError(f"expected a custom metric name other than the built-in {self.name!r}")
            if self.action is None:
                raise ValueError("expected `action:` (impression | repin | click | hide) for a custom metric, "
                                 "found none")
            if self.aggregate in ("sum", "mean") and self.column is None:
                raise ValueError(f"expected `column:` ({' | '.join(EVENT_COLUMNS)}) for aggregate "
                                 f"{self.aggregate!r}, found none")
            if self.aggregate == "count" and self.column is not None:
                raise ValueError(f"expected no `column:` for aggregate 'count', found {self.column!r}")
        if self.surfaces is not None and (not self.surfaces or len(set(self.surfaces)) != len(self.surfaces)):
            raise ValueError(f"expected a non-empty list of distinct surfaces, found {self.surfaces}")
        return self

    def metric(self) -> Metric:
        return metric_from_spec(self.name, self.surfaces, self.aggregate, self.column, self.action, self.pins)


class ExperimentConfig(_Strict):
    """An experiment: who is in it, what each arm serves, on which days, and how it is analysed."""

    name: str = Field(pattern=NAME_RE)
    workdir: str = "pinwork"
    salt: str | None = Field(None, min_length=1, max_length=200)   # default: the name
    seed: int = 0
    aa: bool = False                       # A/A: the treatment is the control arm
    traffic: Traffic = Traffic()
    arms: Arms
    surfaces: list[Surface] = Field(default_factory=lambda: list(SURFACES))
    days: Days
    embedding_lag_days: int = Field(1, ge=0, le=60)
    users: UserSample = UserSample()
    reserve_cpc: float = Field(1.0, gt=0)   # Ads: auction reserve price per click (cents)
    # Ads: live ads retrieved per ad slot before the auction (the ad server's candidate depth)
    ads_candidates_per_slot: int = Field(16, ge=1, le=1000)
    # Ads: recalibrate each ranking run's pCTR per segment (new ad x ID seen in training) on the logged
    # Ads impressions between the run's training cutoff and the experiment's start
    calibrate_ads: bool = True
    # ... and refit it after every experiment day on those days plus the Ads impressions the run has served
    # so far (a production calibration layer follows its own traffic)
    recalibrate_ads: bool = True
    pre_period_days: int = Field(14, ge=0, le=365)
    cuped: bool = True
    metrics: list[MetricSpec] = Field(default_factory=lambda: [MetricSpec(name=m) for m in DEFAULT_METRICS])
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)
    multiple_testing: Literal["bh", "holm", "bonferroni", "none"] = "bh"
    srm_threshold: float = Field(0.001, gt=0, lt=1)

    _source: "ConfigSource | None" = PrivateAttr(None)

    @field_validator("surfaces")
    @classmethod
    def _surfaces(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError(f"expected a non-empty list of distinct surfaces, found {v}")
        return v

    @model_validator(mode="after")
    def _arms(self):
        if self.aa and self.arms.treatment is not None:
            raise ValueError("expected no `arms.treatment` with `aa: true` (the control arm serves both), "
                             "found one")
        if not self.aa and self.arms.treatment is None:
            raise ValueError("expected `arms.treatment` (or `aa: true`), found none")
        names = [m.name for m in self.metrics]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"expected distinct metric names, found {dup!r} twice")
        if not self.metrics:
            raise ValueError("expected at least one metric, found none")
        return self

    # ---- resolved views ------------------------------------------------------------------------

    @property
    def assignment_salt(self) -> str:
        return self.salt or self.name

    def arm(self, variant: str) -> Arm:
        """The arm serving ``variant`` (the control arm twice in A/A mode)."""
        if variant == "control" or self.aa:
            return self.arms.control
        return self.arms.treatment

    def metric_list(self) -> list[Metric]:
        """Metrics resolved to definitions, each on the experiment's surfaces it applies to."""
        out = []
        for spec in self.metrics:
            m = spec.metric()
            out.append(m.on([s for s in m.surfaces if s in self.surfaces]))
        return [m for m in out if m.surfaces]

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir)

    @property
    def experiment_dir(self) -> Path:
        return Path(self.workdir) / "experiments" / self.name

    # ---- errors that point back into the file --------------------------------------------------

    def error(self, loc: tuple, expected: str, found) -> InputError:
        """An error about field ``loc`` (e.g. ('days', 'start')), with its file and line when known."""
        field = ".".join(str(p) for p in loc)
        if self._source is None:
            return input_error("exp.yaml", field, expected, found)
        return input_error(f"{self._source.path}:{self._source.line(loc)}", field, expected, found)


def load_config(path: Path | str, *, workdir: str | None = None) -> ExperimentConfig:
    """Read and validate an experiment file; ``workdir`` overrides the file's. Raises InputError."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "file", "an experiment YAML file", "no such file")
    data, source = read_yaml(path, "a mapping of experiment fields")
    if not data:
        raise input_error(f"{path}:1", "file", "a mapping of experiment fields", "an empty file")
    if workdir is not None:
        data = {**data, "workdir": workdir}
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, lambda loc: f"{path}:{source.line(loc)}") from None
    cfg._source = source
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved configuration as YAML (saved beside every simulation and analysis)."""
    data: dict[str, Any] = cfg.model_dump(mode="json")
    data["salt"] = cfg.assignment_salt
    return yaml.safe_dump(data, sort_keys=False)

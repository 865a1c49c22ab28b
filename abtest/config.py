"""The experiment file (``exp.yaml``): a pydantic schema, and a loader whose errors name the field
and its line.

Everything that reaches SQL is validated here: surfaces are those the workspace declares
(``world/surfaces.yaml``), actions, event columns and pin filters are closed vocabularies (``Literal``),
metric names match ``[a-z][a-z0-9_]*`` and are only ever used as labels. See docs/abtest.md for the
field-by-field reference.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import core_schema

from abtest.engines import ENGINES
from pinlift.core.errors import InputError, input_error
from pinlift.core.config import ConfigSource, read_yaml, validation_error
from pinlift.core.vocabulary import ACTIONS, DECLARATION, EVENTS, Vocabulary, load_vocabulary
from abtest.metrics import (DEFAULT_METRICS, EVENT_COLUMNS, LOG_METRICS, METRIC_NAME, PIN_FILTERS, Metric,
                            builtin_metrics, cells_of, metric_from_spec)

Action = Literal[EVENTS]  # type: ignore[valid-type]
LiftAction = Literal[ACTIONS]  # type: ignore[valid-type]
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VARIANTS = ("control", "treatment")
DEFAULT_WORKDIR = "pinwork"


def _vocabulary(info: ValidationInfo) -> Vocabulary:
    """The workspace's surfaces, passed by ``load_config`` as the validation context."""
    return info.context["vocabulary"]


class Surface(str):
    """The name of a surface the workspace declares (validated as a plain ``str``)."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        return core_schema.with_info_after_validator_function(cls._declared, core_schema.str_schema())

    @staticmethod
    def _declared(name: str, info: ValidationInfo) -> str:
        names = _vocabulary(info).names
        if name not in names:
            raise ValueError(f"expected a surface the workspace declares in {DECLARATION} ({' | '.join(names)}), "
                             f"found {name!r}")
        return name


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

    k: int = Field(16, ge=1, le=200, description="neighbours of the query pin added to the pool")
    ef_search: int = Field(64, ge=1, le=4096)
    m: int = Field(16, ge=4, le=64, description="HNSW graph degree")


class Arm(_Strict):
    """One variant: a ranker, optionally embeddings published during the experiment, extra candidates."""

    ranker: Literal["ranking_run", "logging_policy"] = "ranking_run"
    run: str | None = Field(None, pattern=NAME_RE, description="directory under W/ranking/runs")
    embeddings: str | None = Field(None, pattern=NAME_RE, description="name under W/embeddings (default: the run's)")
    related_ann: AnnCandidates | None = None
    lift: dict[LiftAction, float] = Field(default_factory=dict, description="validation only: P(action) x (1 + lift)")
    label: str | None = Field(None, min_length=1, max_length=60, description="its name in the report's verdict")

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
    """Experiment days [start, start + count); start must be on or after the rankers' training cutoff.
    An analysis may leave out ``count``: every event from ``start`` on counts."""

    start: int = Field(ge=0)
    count: int | None = Field(None, ge=1, le=365, description="days analysed (simulate: required)")

    @property
    def end(self) -> int | None:
        """The first day after the window (None: open-ended)."""
        return None if self.count is None else self.start + self.count


class UserSample(_Strict):
    """Which users can enter the experiment: a hash sample independent of the assignment salt."""

    fraction: float = Field(1.0, gt=0, le=1)
    count: int | None = Field(None, ge=2)
    seed: int = 0


class MetricSpec(_Strict):
    """A built-in metric by name (optionally restricted to some surfaces), or a custom aggregate."""

    name: str = Field(pattern=METRIC_NAME)
    surfaces: list[Surface] | None = Field(None, description="default: every surface the metric applies to")
    aggregate: Literal["sum", "count", "mean"] | None = None
    column: Literal[EVENT_COLUMNS] | None = None  # type: ignore[valid-type]
    action: Action | None = None
    pins: Literal[PIN_FILTERS] | None = None  # type: ignore[valid-type]
    direction: Literal["increase", "decrease"] | None = Field(None, description="the good direction (default: "
                                                              "the built-in's own; custom: increase)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _known(self, info: ValidationInfo):
        builtin = builtin_metrics(_vocabulary(info))
        if self.aggregate is None:
            if self.name not in builtin:
                raise ValueError(f"expected a built-in metric ({', '.join(builtin)}) or a custom "
                                 f"metric with `aggregate:`, found unknown metric {self.name!r}")
            extra = [f for f in ("column", "action", "pins") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"expected only `surfaces` for built-in metric {self.name!r}, found `{extra[0]}`")
            allowed = builtin[self.name].surfaces
            for s in self.surfaces or ():
                if s not in allowed:
                    raise ValueError(f"expected surfaces among {list(allowed)} for {self.name!r}, found {s!r}")
        else:
            if self.name in builtin:
                raise ValueError(f"expected a custom metric name other than the built-in {self.name!r}")
            if self.action is None:
                raise ValueError(f"expected `action:` ({' | '.join(EVENTS)}) for a custom metric, found none")
            if self.aggregate in ("sum", "mean") and self.column is None:
                raise ValueError(f"expected `column:` ({' | '.join(EVENT_COLUMNS)}) for aggregate "
                                 f"{self.aggregate!r}, found none")
            if self.aggregate == "count" and self.column is not None:
                raise ValueError(f"expected no `column:` for aggregate 'count', found {self.column!r}")
        if self.surfaces is not None and (not self.surfaces or len(set(self.surfaces)) != len(self.surfaces)):
            raise ValueError(f"expected a non-empty list of distinct surfaces, found {self.surfaces}")
        return self

    def metric(self, vocab: Vocabulary) -> Metric:
        m = metric_from_spec(vocab, self.name, self.surfaces, self.aggregate, self.column, self.action, self.pins)
        return replace(m, direction=self.direction) if self.direction else m


def resolve_metrics(specs: list[MetricSpec], surfaces, vocab: Vocabulary) -> list[Metric]:
    """Metrics resolved to definitions, each on those of ``surfaces`` it applies to (none: left out)."""
    out = []
    for spec in specs:
        m = spec.metric(vocab)
        out.append(m.on([s for s in m.surfaces if s in surfaces]))
    return [m for m in out if m.surfaces]


class ExperimentConfig(_Strict):
    """An experiment: who is in it, what each arm serves, on which days, and how it is analysed."""

    name: str = Field(pattern=NAME_RE)
    workdir: str = DEFAULT_WORKDIR
    salt: str | None = Field(None, min_length=1, max_length=200, description="default: the name")
    seed: int = 0
    aa: bool = Field(False, description="A/A: the treatment is the control arm")
    traffic: Traffic = Traffic()
    arms: Arms | None = Field(None, description="what each variant serves (simulate, validate); none: an "
                              "analysis-only config of logged exposures and events")
    surfaces: list[Surface] | None = Field(None, description="served and analysed (default: every surface the "
                                           "workspace declares)")
    days: Days
    embedding_lag_days: int = Field(1, ge=0, le=60)
    users: UserSample = UserSample()
    reserve_cpc: float = Field(1.0, gt=0, description="Ads: auction reserve price per click (cents)")
    ads_candidates_per_slot: int = Field(16, ge=1, le=1000, description="Ads: live ads retrieved per ad slot before "
                                         "the auction (the ad server's candidate depth)")
    calibrate_ads: bool = Field(True, description="Ads: recalibrate each run's pCTR per segment (new ad x ID seen) "
                                "on the Ads impressions logged between its training cutoff and days.start")
    recalibrate_ads: bool = Field(True, description="Ads: refit that calibration after every day, adding the Ads "
                                  "impressions the run served (a calibration layer follows its own traffic)")
    pre_period_days: int = Field(14, ge=0, le=365)
    cuped: bool = True
    covariates: str | None = Field(None, description="CUPED covariates: a Parquet table of user_id and one column "
                                   "per metric (relative to this file; replaces the pre-period logs)")
    metrics: list[MetricSpec] = Field(default_factory=lambda: list(DEFAULT_METRICS), validate_default=True)
    primary: str | None = Field(None, description="the metric/surface cell the verdict is about (default: the "
                                "first metric on its first surface)")
    guardrails: list[str] = Field(default_factory=list, description="cells that must not move the wrong way")
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)
    multiple_testing: Literal["bh", "holm", "bonferroni", "none"] = "bh"
    srm_threshold: float = Field(0.001, gt=0, lt=1)
    engine: Literal[ENGINES] = Field("duckdb", description="where analyze runs the metric queries: duckdb "  # type: ignore[valid-type]
                                     "(embedded) or spark (the active or a new SparkSession)")

    _source: "ConfigSource | None" = PrivateAttr(None)
    _vocabulary: Vocabulary = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data, info: ValidationInfo):
        """Every surface the workspace declares; the default metrics (analysis-only: those without pins)."""
        if isinstance(data, dict) and data.get("surfaces") is None:
            data = {**data, "surfaces": list(_vocabulary(info).names)}
        if isinstance(data, dict) and "metrics" not in data:
            data = {**data, "metrics": list(DEFAULT_METRICS if data.get("arms") is not None else LOG_METRICS)}
        return data

    @field_validator("surfaces")
    @classmethod
    def _surfaces(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError(f"expected a non-empty list of distinct surfaces, found {v}")
        return v

    @field_validator("primary", "guardrails")
    @classmethod
    def _cells(cls, v, info: ValidationInfo):
        if v is None or not {"metrics", "surfaces"} <= info.data.keys():
            return v     # those fields failed: their error is reported
        metrics = resolve_metrics(info.data["metrics"], info.data["surfaces"], _vocabulary(info))
        keys = [c.key for c in cells_of(metrics)]
        for key in [v] if isinstance(v, str) else v:
            if key not in keys:
                raise ValueError(f"expected a metric/surface cell of the experiment ({' | '.join(keys)}), "
                                 f"found {key!r}")
            if info.field_name == "guardrails" and (v.count(key) > 1 or key == info.data.get("primary")):
                raise ValueError(f"expected distinct guardrails other than the primary metric, found {key!r} again")
        return v

    @model_validator(mode="after")
    def _arms(self):
        if self.arms is None:
            if self.aa:
                raise ValueError("expected `arms.control` with `aa: true`, found no arms")
        elif self.aa and self.arms.treatment is not None:
            raise ValueError("expected no `arms.treatment` with `aa: true` (the control arm serves both), "
                             "found one")
        elif not self.aa and self.arms.treatment is None:
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
    def vocabulary(self) -> Vocabulary:
        """The workspace's surfaces."""
        return self._vocabulary

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
        return resolve_metrics(self.metrics, self.surfaces, self.vocabulary)

    @property
    def primary_key(self) -> str:
        """The primary cell: `primary:`, else the first metric on its first surface."""
        return self.primary or cells_of(self.metric_list())[0].key

    @property
    def treatment_label(self) -> str:
        """The treatment's name in the verdict: its `label:`, else its run."""
        arm = None if self.arms is None else self.arm("treatment")
        if arm is None:
            return "The treatment"
        return arm.label or (f"Treatment ({arm.run})" if arm.run else "The treatment")

    def require_simulation(self) -> None:
        """Raise unless the file says what to simulate: arms and a number of days."""
        if self.arms is None:
            raise self.error(("arms",), "`arms:` (what each variant serves) to simulate", "an analysis-only config")
        if self.days.count is None:
            raise self.error(("days", "count"), "the number of days to simulate", "none")

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


def _beside(path: Path, value):
    """A path given in the file, relative to the file's folder (absolute ones and non-strings unchanged)."""
    if not isinstance(value, str) or Path(value).is_absolute():
        return value
    return os.path.normpath(path.parent / value)


def _declared_surfaces(path: Path, source: ConfigSource, data: dict) -> tuple[Vocabulary, dict]:
    """The surfaces: the workspace's ``world/surfaces.yaml``, or, in a workspace without one, ``surfaces:``
    given in the file as {name, kind} entries (then the file's data with their names)."""
    declaration = Path(str(data.get("workdir", DEFAULT_WORKDIR))) / DECLARATION
    given = data.get("surfaces")
    if not (isinstance(given, list) and given and all(isinstance(s, dict) for s in given)):
        if not declaration.is_file():
            raise input_error(declaration, "file", "the workspace's surfaces (docs/data.md, Surfaces), or `surfaces:` "
                              "in the experiment file as {name, kind} entries", "no file")
        return load_vocabulary(declaration.parent.parent), data
    if declaration.is_file():
        raise input_error(f"{path}:{source.line(('surfaces',))}", "surfaces",
                          f"surface names (the workspace declares its surfaces in {declaration})", "{name, kind} entries")
    try:
        vocab = Vocabulary.model_validate({"surfaces": [{"tasks": [], **s} for s in given]})
    except ValidationError as exc:
        raise validation_error(exc, lambda loc: f"{path}:{source.line(loc)}") from None
    return vocab, {**data, "surfaces": list(vocab.names)}


def load_config(path: Path | str, *, workdir: str | None = None) -> ExperimentConfig:
    """Read and validate an experiment file against the surfaces its workspace (or, without a declaration,
    the file) declares; ``workdir`` overrides the file's. Paths in the file (``workdir``, ``covariates``) are
    relative to the file. Raises InputError."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "file", "an experiment YAML file", "no such file")
    data, source = read_yaml(path, "a mapping of experiment fields")
    if not data:
        raise input_error(f"{path}:1", "file", "a mapping of experiment fields", "an empty file")
    data = {**data, **{k: _beside(path, data[k]) for k in ("workdir", "covariates") if k in data}}
    if workdir is not None:
        data = {**data, "workdir": workdir}
    vocab, data = _declared_surfaces(path, source, data)
    try:
        cfg = ExperimentConfig.model_validate(data, context={"vocabulary": vocab})
    except ValidationError as exc:
        raise validation_error(exc, lambda loc: f"{path}:{source.line(loc)}") from None
    cfg._source, cfg._vocabulary = source, vocab
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved configuration as YAML (saved beside every simulation and analysis)."""
    data: dict[str, Any] = cfg.model_dump(mode="json")
    data["salt"] = cfg.assignment_salt
    return yaml.safe_dump(data, sort_keys=False)

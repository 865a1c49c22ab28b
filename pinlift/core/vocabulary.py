"""Surfaces, their kinds and actions: declared by each workspace in ``world/surfaces.yaml``.

A surface has a *kind* (``feed``: a feed of pins; ``related``: item-to-item, with a query pin; ``ads``: ads
served by an auction) and the actions that are its ranking tasks. Stages branch on kinds, never on names,
so a team whose surfaces are called ``search`` and ``shop`` declares them and changes no code.
pinworld declares its three (``PINWORLD``) when it generates a world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from pinlift.core.config import Settings, read_yaml, validation_error
from pinlift.core.errors import InputError

SURFACE_KINDS = FEED, RELATED, ADS = ("feed", "related", "ads")
ACTIONS = REPIN, CLICK, HIDE = ("repin", "click", "hide")   # the labels every impression carries (its columns)
IMPRESSION = "impression"               # the event of being shown, beside the actions in experiment events
EVENTS = (IMPRESSION, *ACTIONS)         # the actions of experiment events
DECLARATION = "world/surfaces.yaml"
NAME = r"^[a-z][a-z0-9_]{0,31}$"


class Surface(Settings):
    """One surface: its name, its kind and the actions that are its ranking tasks."""

    name: str = Field(pattern=NAME, description="the surface's name, as in the impressions' `surface` column")
    kind: Literal[SURFACE_KINDS] = Field(description="feed | related | ads")  # type: ignore[valid-type]
    tasks: tuple[Literal[ACTIONS], ...] = Field(description="actions ranked on this surface")  # type: ignore


class Vocabulary(Settings):
    """A workspace's surfaces, in order."""

    surfaces: tuple[Surface, ...] = Field(min_length=1, description="the surfaces of the workspace")

    @model_validator(mode="after")
    def _unique(self):
        names = [s.name for s in self.surfaces]
        if len(set(names)) != len(names):
            raise ValueError(f"expected distinct surface names, found {names}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.surfaces)

    def surface(self, name: str) -> Surface:
        for s in self.surfaces:
            if s.name == name:
                return s
        raise InputError(f"surface {name!r}: expected one of {', '.join(self.names)}")

    def of_kind(self, kind: str) -> tuple[Surface, ...]:
        return tuple(s for s in self.surfaces if s.kind == kind)

    def kind_of(self, name: str) -> str:
        return self.surface(name).kind

    def first(self, kind: str) -> Surface | None:
        """The first surface of ``kind``, or None when the workspace has none."""
        return next(iter(self.of_kind(kind)), None)

    @property
    def tasks(self) -> tuple[tuple[str, str], ...]:
        """(surface, action) for every ranking task, in declaration order."""
        return tuple((s.name, a) for s in self.surfaces for a in s.tasks)

    def renamed(self, names: dict[str, str]) -> "Vocabulary":
        """The same surfaces with some renamed (old name → new name)."""
        return Vocabulary(surfaces=tuple(s.model_copy(update={"name": names.get(s.name, s.name)})
                                         for s in self.surfaces))


PINWORLD = Vocabulary(surfaces=(
    Surface(name="homefeed", kind=FEED, tasks=(REPIN, CLICK)),
    Surface(name="related", kind=RELATED, tasks=(REPIN, CLICK)),
    Surface(name="ads", kind=ADS, tasks=(CLICK,)),
))


def write_vocabulary(workdir: Path | str, vocab: Vocabulary) -> Path:
    """Declare ``vocab`` as the workspace's surfaces."""
    path = Path(workdir) / DECLARATION
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(vocab.model_dump(mode="json"), sort_keys=False))
    return path


def load_vocabulary(workdir: Path | str) -> Vocabulary:
    """The surfaces ``workdir`` declares; errors name the file, line and field."""
    path = Path(workdir) / DECLARATION
    if not path.is_file():
        raise InputError(f"{path}: file: expected the workspace's surfaces (see docs/data.md, Surfaces), found no file")
    data, source = read_yaml(path, "a mapping with `surfaces:`")
    try:
        return Vocabulary.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, lambda loc: f"{path}:{source.line(loc)}") from None

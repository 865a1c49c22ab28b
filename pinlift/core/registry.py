"""Named embedding sources a stage can publish without importing the stage that provides them.

A source is an entry point of the group ``pinlift.embedding_sources`` (``name = "module:function"``), the
function ``publish(workdir, name, *, kind)`` publishing version of the embeddings ``name`` with ``kind`` its
registered name. pinclip registers pinworld's oracle kinds in pyproject.toml; a team's package adds a source
by declaring one entry point: one registration adds one.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from pinlift.core.errors import InputError

EMBEDDING_SOURCES = "pinlift.embedding_sources"


def embedding_sources() -> dict[str, EntryPoint]:
    """Every registered embedding source by name."""
    return {ep.name: ep for ep in entry_points(group=EMBEDDING_SOURCES)}


def publish_source(kind: str, workdir: Path | str, name: str | None = None) -> dict:
    """Publish the registered source ``kind`` as a new version of ``name`` (default: ``kind``)."""
    sources = embedding_sources()
    if kind not in sources:
        raise InputError(f"embedding source {kind!r}: expected one of {', '.join(sorted(sources)) or 'none registered'}")
    return sources[kind].load()(workdir, name or kind, kind=kind)

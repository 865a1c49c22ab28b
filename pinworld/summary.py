"""A world's headline figures: sizes, engagement rates per surface, fresh-content and new-ad volume."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pinworld.catalog import connect
from pinlift.core.clock import FRESH_DAYS, NEW_AD_DAYS
from pinlift.core.schema import ADS_TABLE
from pinlift.core.vocabulary import ACTIONS
from pinworld.world import World


def world_stats(workdir: Path | str) -> dict:
    """Counts and per-surface rates, computed in DuckDB over the catalog."""
    world = World(workdir)
    con = connect(workdir)
    try:
        rows = con.execute(f"""
            SELECT i.surface, count(*) AS impressions, avg(i.repin::INT) AS repin_rate,
                   avg(i.click::INT) AS click_rate, avg(i.hide::INT) AS hide_rate,
                   avg((i.day - p.created_day < {FRESH_DAYS})::INT) AS fresh_share,
                   avg(CASE WHEN p.is_ad THEN (i.day - p.created_day < {NEW_AD_DAYS})::INT END) AS new_ad_share
            FROM impressions i JOIN pins p USING (pin_id)
            GROUP BY 1 ORDER BY 1""").fetchall()
    finally:
        con.close()
    cols = ("impressions", "repin_rate", "click_rate", "hide_rate", "fresh_share", "new_ad_share")
    counts = world.meta.get("counts") or {
        "pins": world.scan("pins").select(pl.len()).collect().item(),
        ADS_TABLE: world.table(ADS_TABLE).height, "users": world.scan("users").select(pl.len()).collect().item(),
        "boards": world.scan("boards").select(pl.len()).collect().item(),
        "pin_board": world.scan("pin_board").select(pl.len()).collect().item(),
        "impressions": sum(r[1] for r in rows)}
    return {"preset": world.meta.get("preset"), "seed": world.meta.get("seed"),
            "generator_version": world.generator_version, "counts": counts,
            "surfaces": {r[0]: dict(zip(cols, r[1:])) for r in rows}}


def world_summary(workdir: Path | str) -> str:
    """The summary as a printable table."""
    s = world_stats(workdir)
    c = s["counts"]
    lines = [f"pinworld {s['generator_version']}  preset={s['preset']} seed={s['seed']}  ({workdir})",
             f"  pins {c['pins']:,} (ads {c[ADS_TABLE]:,})  users {c['users']:,}  boards {c['boards']:,}  "
             f"pin-board edges {c['pin_board']:,}  impressions {c['impressions']:,}",
             f"  {'surface':<10}{'impr.':>11}" + "".join(f"{a:>8}" for a in ACTIONS) + f"{'fresh':>8}{'new ad':>8}"]
    for name, r in s["surfaces"].items():
        new_ad = "" if r["new_ad_share"] is None else f"{r['new_ad_share']:.1%}"
        lines.append(f"  {name:<10}{r['impressions']:>11,}{r['repin_rate']:>8.1%}{r['click_rate']:>8.1%}"
                     f"{r['hide_rate']:>8.2%}{r['fresh_share']:>8.1%}{new_ad:>8}")
    return "\n".join(lines)

"""As-of-day views leak nothing from day T onward."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

T = 20


@pytest.fixture(scope="module")
def pins_before(tiny_world):
    return tiny_world.pins(as_of=T)


def test_pins_as_of_exclude_later_pins(tiny_world, pins_before):
    all_pins = tiny_world.table("pins")
    assert pins_before["created_day"].max() < T
    assert pins_before.height == (all_pins["created_day"] < T).sum() < all_pins.height


def test_text_sources_as_of_only_hold_earlier_rows(tiny_world, pins_before):
    q = tiny_world.table("pin_search_queries")
    ann = tiny_world.table("pin_annotations")
    n_queries = pins_before["search_queries"].list.len().fill_null(0).sum()
    n_ann = pins_before["annotations"].list.len().fill_null(0).sum()
    assert n_queries == (q["day"] < T).sum() < q.height
    known = set(pins_before["pin_id"].to_list())
    assert n_ann == ann.filter((ann["day"] < T) & ann["pin_id"].is_in(list(known))).height
    assert n_ann < ann.height
    # a pin whose queries straddle T keeps only the earlier ones
    late = q.filter(q["day"] >= T)["pin_id"]
    straddling = set(q.filter(q["day"] < T)["pin_id"].to_list()) & set(late.to_list())
    pid = min(straddling)
    row = pins_before.filter(pins_before["pin_id"] == pid)["search_queries"][0].to_list()
    assert row == q.filter((q["pin_id"] == pid) & (q["day"] < T)).sort("day")["query"].to_list()


def test_behaviour_tables_as_of(tiny_world):
    for table, col in (("pin_board", "day"), ("boards", "created_day"), ("impressions", "day")):
        full = tiny_world.table(table)
        cut = tiny_world.table(table, as_of=T)
        assert cut[col].max() < T and cut.height == (full[col] < T).sum() < full.height, table
    imp = tiny_world.impressions(as_of=T, since=T - 5, surfaces=["ads"])
    assert set(imp["surface"].unique()) == {"ads"}
    assert imp["day"].min() >= T - 5 and imp["day"].max() < T


def test_pin_board_edges_never_predate_their_pin(tiny_world):
    edges = tiny_world.table("pin_board")
    created = tiny_world.truth.pins.created_day[edges["pin_id"].to_numpy()]
    assert (edges["day"].to_numpy() >= created).all()
    boards = tiny_world.table("boards")
    first = edges.group_by("board_id").agg(pl.col("day").min().alias("d"))
    joined = boards.join(first, on="board_id")
    assert (joined["created_day"] == joined["d"]).all()
    assert np.all(tiny_world.table("pin_search_queries")["day"].to_numpy()
                  >= tiny_world.truth.pins.created_day[tiny_world.table("pin_search_queries")["pin_id"].to_numpy()])

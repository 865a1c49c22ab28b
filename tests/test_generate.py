"""Generation: determinism, schemas, sizes, text shares, fresh/new-ad volume, CLI behaviour."""

from __future__ import annotations

import itertools
import json

import numpy as np
import polars as pl
import pytest

from pinworld import cli
from pinlift.core.clock import FRESH_DAYS, NEW_AD_DAYS
from pinworld.config import GENERATOR_VERSION, preset
from pinworld.generate import CATCH_ALL_BOARD, generate_world, style_annotation
from pinworld.latents import SAME_TOPIC_OBJECT, topic_popularity, topic_posterior
from pinworld.render import STYLES
from pinworld.taxonomy import load_taxonomy
from pinworld.text import ATTRIBUTE_WORDS
from pinworld.validate import validate_workdir
from pinworld.world import World

MICRO = dict(n_pins=600, n_users=80, days=12, n_advertisers=5)


def test_same_seed_same_tables_different_seed_differs(tmp_path):
    a = generate_world(preset("tiny", 7, **MICRO), tmp_path / "a", progress=False)
    b = generate_world(preset("tiny", 7, **MICRO), tmp_path / "b", progress=False)
    c = generate_world(preset("tiny", 8, **MICRO), tmp_path / "c", progress=False)
    assert a["checksums"] == b["checksums"]
    assert len(a["checksums"]) > 10
    differing = [k for k in a["checksums"] if a["checksums"][k] != c["checksums"].get(k)]
    assert "world/pins.parquet" in differing and "world/images/shard-00000.npy" in differing


def test_world_json_records_seed_preset_version(tiny_world):
    meta = tiny_world.meta
    assert (meta["seed"], meta["preset"], meta["generator_version"]) == (0, "tiny", GENERATOR_VERSION)
    assert meta["counts"]["pins"] == 3000 and meta["counts"]["impressions"] > 50_000


def test_generated_tables_pass_validation(tiny_workdir):
    assert validate_workdir(tiny_workdir) == []


def test_images_are_rendered_scenes(tiny_world):
    imgs = tiny_world.images(range(50))
    assert imgs.shape == (50, 64, 64, 3) and imgs.dtype == np.uint8
    # scenes differ from each other and are not blank
    assert imgs.reshape(50, -1).std(1).min() > 5
    assert len({im.tobytes() for im in imgs}) == 50


def test_text_sources_have_gaps_noise_and_languages(tiny_world):
    pins = tiny_world.table("pins")
    truth = tiny_world.truth
    lacking = pins["title"].is_null().mean()
    degraded = (truth.pins.text_quality != 0).mean()
    assert 0.15 < lacking < 0.3
    assert 0.25 < degraded < 0.35          # ~30% lack title/description or carry noisy/irrelevant text
    assert pins["caption"].is_null().sum() == 0
    langs = pins["language"].value_counts()
    assert set(langs["language"]) >= {"en", "es", "fr", "de"}
    assert 0.15 < (pins["language"] != "en").mean() < 0.4
    assert tiny_world.table("pin_search_queries").height > 100
    assert tiny_world.table("pin_annotations").height > 3 * pins.height


def test_fresh_content_and_new_ads_have_volume(tiny_world):
    imp = tiny_world.impressions()
    pins = tiny_world.table("pins").select("pin_id", "created_day", "is_ad")
    j = imp.join(pins, on="pin_id")
    age = j["day"] - j["created_day"]
    assert (age >= 0).all()                # nothing is shown before it exists
    organic = ~j["is_ad"]
    assert (age.filter(organic) < FRESH_DAYS).mean() > 0.2
    ads = j.filter(j["is_ad"])
    assert ads.height > 1000
    assert ((ads["day"] - ads["created_day"]) < NEW_AD_DAYS).mean() > 0.1
    assert set(imp["surface"].unique()) == {"homefeed", "related", "ads"}
    assert imp.filter(imp["surface"] == "related")["query_pin_id"].null_count() == 0
    assert imp.filter(imp["surface"] != "related")["query_pin_id"].null_count() == imp.filter(imp["surface"] != "related").height


def test_boards_are_topic_coherent(tiny_world):
    edges = tiny_world.table("pin_board")
    topic = tiny_world.truth.pins.topic[edges["pin_id"].to_numpy()]
    board = edges["board_id"].to_numpy()
    # share of edges whose pin has its board's majority topic
    order = np.lexsort((topic, board))
    b, t = board[order], topic[order]
    _, start = np.unique(b, return_index=True)
    majority_hits = 0
    for lo, hi in zip(start, list(start[1:]) + [len(b)]):
        majority_hits += np.bincount(t[lo:hi]).max()
    assert majority_hits / len(b) > 0.8
    assert edges.group_by("board_id").len()["len"].max() > 3


def test_curated_boards_share_one_style_or_attribute(tmp_path):
    """With every user curating, each topic board holds pins of one visual style or of one described
    attribute, and its name says which."""
    generate_world(preset("tiny", 7, **MICRO, curated_board_share=1.0), tmp_path / "c", progress=False)
    w = World(tmp_path / "c")
    edges = w.table("pin_board").join(w.table("boards").select("board_id", "name"), on="board_id")
    edges = edges.filter(~edges["name"].is_in(list(CATCH_ALL_BOARD.values())))
    pins = edges["pin_id"].to_numpy()
    boards = edges.with_columns(style=w.truth.pins.style[pins], attr=w.truth.pins.attr[pins]).group_by(
        "board_id", "name").agg(pl.col("style").n_unique().alias("styles"), pl.col("attr").n_unique().alias("attrs"),
                                pl.col("style").first(), pl.col("attr").first(), pl.len().alias("pins"))
    assert boards.height > 20 and boards["pins"].max() > 3
    assert ((boards["styles"] == 1) | (boards["attrs"] == 1)).all()
    for name, styles, style, attr in boards.select("name", "styles", "style", "attr").iter_rows():
        words = [STYLES[style]] if styles == 1 else []
        words += [ws[attr] for ws in ATTRIBUTE_WORDS.values()]
        assert any(name.startswith(x + " ") for x in words), name


def test_style_annotations_name_the_true_style_and_leave_the_rest(tmp_path):
    """A ``style_annotation_share`` of pins also gets its visual style as an annotation, on the day of its
    other annotations; every other annotation is the one a world without them has."""
    worlds = {}
    for share in (0.0, 0.5):
        generate_world(preset("tiny", 7, **MICRO, style_annotation_share=share), tmp_path / str(share), progress=False)
        worlds[share] = World(tmp_path / str(share))
    plain, styled = (w.table("pin_annotations") for w in (worlds[0.0], worlds[0.5]))
    names = [style_annotation(s) for s in range(len(STYLES))]
    extra = styled.filter(pl.col("annotation").is_in(names))
    assert plain.filter(pl.col("annotation").is_in(names)).height == 0
    assert styled.filter(~pl.col("annotation").is_in(names)).equals(plain)
    pins = extra["pin_id"].to_numpy()
    assert len(np.unique(pins)) == len(pins) and 0.4 < len(pins) / plain["pin_id"].n_unique() < 0.6
    assert extra["annotation"].to_list() == [names[s] for s in worlds[0.5].truth.pins.style[pins]]
    first_day = plain.group_by("pin_id").agg(pl.col("day").min())
    assert extra.join(first_day, on="pin_id", suffix="_other").filter(pl.col("day") != pl.col("day_other")).height == 0


def test_visible_quality_shows_in_images_annotations_and_oracle(tmp_path):
    """A ``visible_quality_share`` of the quality variance becomes visible: poor pins are drawn blurred and
    dull, graded pins are annotated by their quality, the oracle knows the visible part; the other
    latents, and the images of a world without it, are unchanged."""
    from pinworld.generate import QUALITY_TERMS
    from pinworld.oracle import oracle_embeddings, oracle_features

    worlds = {}
    for share in (0.0, 0.6):
        generate_world(preset("tiny", 7, **MICRO, style_annotation_share=0.5, visible_quality_share=share),
                       tmp_path / str(share), progress=False)
        worlds[share] = World(tmp_path / str(share))
    plain, shown = worlds[0.0].truth.pins, worlds[0.6].truth.pins
    assert (plain.visual_quality == 0).all()
    for name in ("topic", "style", "attr", "objects", "created_day", "colour"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(shown, name))
    vq = shown.visual_quality
    assert 0.7 < np.corrcoef(vq, shown.quality)[0, 1] < 0.85 and 0.5 < vq.var() < 0.7   # sqrt(0.6), 0.6
    ids = np.arange(len(vq))
    img = {s: w.images(ids, 64).astype(np.float32) for s, w in worlds.items()}
    sharp = np.abs(np.diff(img[0.6], axis=1)).mean((1, 2, 3)) / (np.abs(np.diff(img[0.0], axis=1)).mean((1, 2, 3)) + 1e-6)
    z = vq / np.sqrt(0.6)
    assert sharp[z < -1].mean() < 0.85 and sharp[z > 1].mean() > 1.03   # blurred and dull vs crisp and bright
    assert img[0.6][z > 1].mean() > img[0.0][z > 1].mean() and img[0.6][z < -1].mean() < img[0.0][z < -1].mean()
    ann = worlds[0.6].table("pin_annotations").filter(pl.col("annotation").is_in(list(QUALITY_TERMS)))
    graded = ann["pin_id"].to_numpy()
    assert len(graded) > 20 and (np.abs(z[graded]) > 0.8).all()
    assert ann["annotation"].to_list() == [QUALITY_TERMS[int(v > 0)] for v in z[graded]]
    styled = worlds[0.6].table("pin_annotations").filter(pl.col("annotation").str.ends_with(" style"))["pin_id"]
    assert set(graded) <= set(styled.to_list())
    assert worlds[0.0].table("pin_annotations").filter(pl.col("annotation").is_in(list(QUALITY_TERMS))).height == 0
    np.testing.assert_array_equal(oracle_features(worlds[0.6], ids)[:, -1], vq)
    emb = oracle_embeddings(worlds[0.6], ids)
    assert np.corrcoef(emb["fusion"][:, -1], vq)[0, 1] > 0.95 and (emb["text"][:, -1] == 0).all()
    assert np.allclose(np.linalg.norm(emb["fusion"], axis=1), 1, atol=1e-5) and np.abs(emb["fusion"]).max() <= 0.5


def test_cli_generate_skips_same_world_and_refuses_other(tiny_workdir, capsys):
    assert cli.main(["generate", "--workdir", str(tiny_workdir), "--preset", "tiny", "--seed", "0"]) == 0
    assert "skipping" in capsys.readouterr().out
    assert cli.main(["generate", "--workdir", str(tiny_workdir), "--preset", "small", "--seed", "0"]) == 2
    assert "--force" in capsys.readouterr().err


def test_cli_summary_prints_surfaces(tiny_workdir, capsys):
    assert cli.main(["summary", "--workdir", str(tiny_workdir)]) == 0
    out = capsys.readouterr().out
    for s in ("homefeed", "related", "ads"):
        assert s in out


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


def test_config_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match=r"field 'style_annotation_share': expected a share in \[0, 1\], found 1.5"):
        preset("tiny", style_annotation_share=1.5)
    with pytest.raises(ValueError, match="expected shares summing to at most 1, found 1.08"):
        preset("tiny", text_missing_share=0.9)
    with pytest.raises(ValueError, match="field 'n_pins': expected a positive integer, found 0"):
        preset("tiny", n_pins=0)


def test_oracle_export_roundtrip(tiny_world, tmp_path):
    import pyarrow.parquet as pq

    from pinworld.oracle import export_oracle, oracle_features, topic_one_hot

    f = oracle_features(tiny_world, [0, 1, 2])
    assert f.shape[1] == tiny_world.truth.n_topics + 6 + 8 + 1
    assert (f[:, :-1].sum(1) == 3).all() and (f[:, -1] == 0).all()   # tiny images show no quality
    assert (topic_one_hot(tiny_world, [0, 1, 2]).argmax(1) == tiny_world.truth.pins.topic[:3]).all()
    out = export_oracle(tiny_world, tmp_path / "oracle.parquet")
    t = pq.read_table(out)
    assert t.num_rows == 3000
    np.testing.assert_array_equal(np.asarray(t.column("features")[1].as_py(), np.float32), f[1])
    assert json.loads(json.dumps(tiny_world.meta["counts"]))["pins"] == 3000


def test_topic_posterior_inverts_the_pin_sampler(tiny_world):
    """P(topic | objects) against a by-hand sum over the orders of each pin's objects; one object is certain."""
    tx, pins = load_taxonomy(), tiny_world.truth.pins
    post = topic_posterior(tiny_world.config, tx, pins.objects)
    np.testing.assert_allclose(post.sum(1), 1)
    obj_topic = tx.object_topic()
    one = np.flatnonzero((pins.objects >= 0).sum(1) == 1)
    np.testing.assert_allclose(post[one, np.asarray(obj_topic)[pins.objects[one, 0]]], 1)
    in_category = {t.topic_id: [u.topic_id for u in tx.topics if u.category == t.category] for t in tx.topics}
    size = [len(t.object_ids) for t in tx.topics]

    def likelihood(objs, t):
        total = 0.0
        for order in itertools.permutations(objs):
            p = (obj_topic[order[0]] == t) / size[t]
            for o in order[1:]:
                u = obj_topic[o]
                p *= (SAME_TOPIC_OBJECT * (u == t) / size[t]
                      + (1 - SAME_TOPIC_OBJECT) * (u in in_category[t]) / (len(in_category[t]) * size[u]))
            total += p
        return total

    prior = topic_popularity(tiny_world.config, tx.n_topics)
    for i in np.flatnonzero((pins.objects >= 0).sum(1) > 1)[:40]:
        objs = [int(o) for o in pins.objects[i] if o >= 0]
        ref = np.array([prior[t] * likelihood(objs, t) for t in range(tx.n_topics)])
        np.testing.assert_allclose(post[i], ref / ref.sum(), rtol=1e-9, atol=1e-12)
    assert 0.9 < (post.argmax(1) == pins.topic).mean() < 1

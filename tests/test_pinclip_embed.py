"""Embedding new content with a trained run (`pinclip embed`): image files and new pins get the run's own
vectors, transparency reaches the model as white, bad input is one line; new pins publish incrementally."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pinclip import cli
from pinclip.data.dataset import normalize_images
from pinclip.embed import ImageFiles, read_texts
from pinclip.embedder import Embedder, pin_texts
from pinclip.embeddings import open_embeddings
from pinclip.loading import load_run
from pinclip.quantization import quantize_unit
from pinlift.core.errors import InputError
from pinlift.core.schema import arrow_schema
from pinworld.world import World

PREFIXES = (64, 128, 256)


def _rgba_png(path):
    """48x32 RGBA: a red square on a transparent black ground, a half-opaque band at the top."""
    a = np.zeros((32, 48, 4), np.uint8)
    a[8:24, 16:32] = (200, 30, 30, 255)
    a[:4, :, 3] = 128
    Image.fromarray(a, "RGBA").save(path)
    return path


def _jpeg(path):
    y, x = np.mgrid[:90, :70]
    Image.fromarray(np.stack([x * 3, y * 2, (x + y) % 256], -1).astype(np.uint8)).save(path, quality=90)
    return path


def _palette_png(path):
    """A P-mode PNG whose palette index 0 (black) is transparent."""
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, 20, 120, 60] + [0] * 762)
    im.paste(1, (10, 10, 30, 30))
    im.save(path, transparency=0)
    return path


def _pins_table(path, rows):
    """A pins-schema table of ``rows`` (pin_id, image_uri, title, description)."""
    n = len(rows)
    cols = {"pin_id": [r[0] for r in rows], "created_day": [0] * n, "image_uri": [r[1] for r in rows],
            "title": [r[2] for r in rows], "description": [r[3] for r in rows], "caption": [None] * n,
            "language": ["en"] * n, "is_ad": [False] * n, "advertiser_id": [None] * n}
    pq.write_table(pa.table(cols, schema=arrow_schema("pins")), path)
    return path


@pytest.fixture(scope="module")
def image_workdir(tmp_path_factory, tiny_workdir, tiny_pinclip_run):
    """A workspace whose pins are image files (a transparent PNG, a JPEG, a palette PNG without text),
    with the tiny run linked in."""
    w = tmp_path_factory.mktemp("image_world")
    (w / "world/img").mkdir(parents=True)
    _rgba_png(w / "world/img/a_lamp.png")
    _jpeg(w / "world/img/b_chair.jpg")
    _palette_png(w / "world/img/c_leaf.png")
    _pins_table(w / "world/pins.parquet", [(1, "img/a_lamp.png", "a red lamp", None),
                                            (2, "img/b_chair.jpg", None, "blue chair by the window"),
                                            (3, "img/c_leaf.png", None, None)])
    (w / "pinclip/runs").mkdir(parents=True)
    (w / "pinclip/runs" / tiny_pinclip_run).symlink_to(tiny_workdir / "pinclip/runs" / tiny_pinclip_run)
    return w


@pytest.fixture(scope="module")
def own_vectors(image_workdir, tiny_pinclip_run):
    """What the run gives the workspace's pins (``Embedder.embed_pins``, as publish_run and eval embed them)."""
    model, tok, _ = load_run(image_workdir, tiny_pinclip_run)
    texts = pin_texts(World(image_workdir).pins())
    return Embedder(model, tok, World(image_workdir), progress=False).embed_pins(
        texts["pin_id"].to_numpy(), texts["text"].to_list())


def _embed(w, run, *args) -> int:
    return cli.main(["embed", "--workdir", str(w), "--run", run, "--quiet", *args])


def _column(table: pa.Table, name: str) -> np.ndarray:
    return np.stack(table.column(name).to_pylist())


def test_embed_pins_and_image_files_give_the_runs_own_vectors(image_workdir, tiny_pinclip_run, own_vectors,
                                                              tmp_path, capsys):
    w = image_workdir
    assert _embed(w, tiny_pinclip_run, "--pins", str(w / "world/pins.parquet"), "--out", str(tmp_path / "p.parquet"),
                  "--int8") == 0
    got = pq.read_table(tmp_path / "p.parquet")
    assert got.column("pin_id").to_pylist() == [1, 2, 3] and got.column("has_text").to_pylist() == [True, True, False]
    for kind in ("fusion", "image"):
        for k in PREFIXES:
            assert got.schema.field(f"{kind}_{k}").type == pa.list_(pa.float32(), k)
            np.testing.assert_allclose(_column(got, f"{kind}_{k}"), own_vectors.vectors[kind][k], atol=1e-5)
        np.testing.assert_array_equal(_column(got, f"{kind}_64_int8"), quantize_unit(own_vectors.vectors[kind][64]))
    assert got.column("text_64").to_pylist()[2] is None      # no text: no text vector, an image-only fusion
    np.testing.assert_allclose(_column(got.slice(0, 2), "text_256"), own_vectors.vectors["text"][256][:2], atol=1e-5)

    # the same images as files (a folder), texts from a JSON-lines file beside them
    (w / "world/texts.jsonl").write_text(json.dumps({"file": "img/a_lamp.png", "text": "a red lamp"}) + "\n"
                                         + json.dumps({"file": "img/b_chair.jpg", "text": "blue chair by the window"}))
    assert _embed(w, tiny_pinclip_run, "--images", str(w / "world/img"), "--texts", str(w / "world/texts.jsonl"),
                  "--out", str(tmp_path / "f.parquet")) == 0
    files = pq.read_table(tmp_path / "f.parquet")
    assert [p.rsplit("/", 1)[1] for p in files.column("file").to_pylist()] == ["a_lamp.png", "b_chair.jpg", "c_leaf.png"]
    assert "fusion_64_int8" not in files.column_names
    for kind in ("fusion", "image"):
        for k in PREFIXES:
            np.testing.assert_allclose(_column(files, f"{kind}_{k}"), own_vectors.vectors[kind][k], atol=1e-5)
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "p.parquet"), str(tmp_path / "f.parquet")]


def test_transparency_reaches_the_model_white(tmp_path):
    white = normalize_images(np.full((1, 64, 64, 3), 255, np.uint8))
    for mode in ("RGBA", "LA", "P"):
        im = Image.new(mode, (50, 30), 0)       # every pixel transparent, black beneath
        path = tmp_path / f"clear_{mode}.png"
        im.save(path, **({"transparency": 0} if mode == "P" else {}))
        assert Image.open(path).mode == mode
        np.testing.assert_array_equal(normalize_images(ImageFiles([path]).images([0], 64)), white, err_msg=mode)
    # the pins' PNG: its transparent ground (black beneath) is white, its red square red
    lamp = ImageFiles([_rgba_png(tmp_path / "lamp.png")]).images([0], 48)[0]
    assert (lamp[40, 2] == 255).all() and tuple(lamp[24, 24]) == (200, 30, 30)


def test_unreadable_image_is_one_line(image_workdir, tiny_pinclip_run, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    good = image_workdir / "world/img/a_lamp.png"
    assert _embed(image_workdir, tiny_pinclip_run, "--images", str(good), str(bad), "--out",
                  str(tmp_path / "o.parquet")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "unreadable file" in err[0]
    assert not list(tmp_path.glob("*o.parquet*"))
    assert _embed(image_workdir, tiny_pinclip_run, "--images", str(tmp_path / "nope.png"), "--out",
                  str(tmp_path / "o.parquet")) == 2
    assert "nope.png: images: expected an image file or a folder of them" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["../secret.png", "/etc/passwd", "img/../../secret.png", "../x.npy#0"])
def test_escaping_image_path_in_new_pins_refused(image_workdir, tiny_pinclip_run, tmp_path, capsys, uri):
    (tmp_path / "new").mkdir()
    _rgba_png(tmp_path / "secret.png")
    table = _pins_table(tmp_path / "new/pins.parquet", [(10, "ok.png", "t", None), (11, uri, "t", None)])
    assert _embed(image_workdir, tiny_pinclip_run, "--pins", str(table), "--out", str(tmp_path / "o.parquet")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"image_uri: expected a path inside {tmp_path / 'new'}, found {uri!r} at pin_id 11" in err[0]
    assert cli.main(["publish", "--workdir", str(image_workdir), "--run", tiny_pinclip_run, "--pins", str(table),
                     "--name", "nothing", "--quiet"]) == 2
    assert "at pin_id 11" in capsys.readouterr().err and not (image_workdir / "embeddings/nothing").exists()


def test_new_pins_publish_as_an_incremental_version(image_workdir, tiny_pinclip_run, tmp_path, capsys):
    from pinclip.run_source import publish_run

    w, run = image_workdir, tiny_pinclip_run
    publish_run(w, run, "pc", progress=False)
    (tmp_path / "new/img").mkdir(parents=True)
    _jpeg(tmp_path / "new/img/n.jpg")
    _rgba_png(tmp_path / "new/n.png")
    table = _pins_table(tmp_path / "new/pins.parquet", [(11, "img/n.jpg", None, None), (10, "n.png", "a new lamp", None)])
    publish = ["publish", "--workdir", str(w), "--source", "run", "--run", run, "--name", "pc", "--quiet"]
    assert cli.main([*publish, "--pins", str(table)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["version"], out["parent"], out["rows"]) == ("v0002", "v0001", 5)
    e = open_embeddings(w, "pc")
    assert e.manifest["source"]["pins"]["file"] == "pins.parquet" and e.manifest["source"]["run"] == run
    assert [p["reused_from"] for p in e.manifest["parts"]] == ["v0001", None]
    # the published rows are what `pinclip embed --pins ... --int8` gives the same pins
    assert _embed(w, run, "--pins", str(table), "--out", str(tmp_path / "n.parquet"), "--int8") == 0
    emb = pq.read_table(tmp_path / "n.parquet")
    for kind in ("fusion", "image"):
        np.testing.assert_array_equal(e.lookup([10, 11], kind).values, _column(emb, f"{kind}_64_int8"))
    assert e.lookup([10, 11], "text").found.tolist() == [True, False]
    capsys.readouterr()
    assert cli.main([*publish, "--pins", str(table)]) == 2             # already published: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "found 2 already published, e.g. pin_id 10" in err[0]
    assert cli.main([*publish, "--pins", str(table), "--since-day", "3"]) == 2
    assert "expected no --as-of-day or --since-day" in capsys.readouterr().err
    assert open_embeddings(w, "pc").version == "v0002"


def test_read_texts(tmp_path):
    files = [tmp_path / "a.png", tmp_path / "sub/b.png"]
    (tmp_path / "t.txt").write_text("a lamp\n\n")
    assert read_texts(tmp_path / "t.txt", files) == ["a lamp", None]
    (tmp_path / "t.csv").write_text("file,text\nsub/b.png,a chair\n")
    assert read_texts(tmp_path / "t.csv", files) == [None, "a chair"]
    (tmp_path / "short.txt").write_text("one\n")
    with pytest.raises(InputError, match=r"texts: expected one line per image \(2\), found 1 lines"):
        read_texts(tmp_path / "short.txt", files)
    (tmp_path / "other.csv").write_text("file,text\nc.png,x\n")
    with pytest.raises(InputError, match="file: expected one of the images embedded, found 'c.png'"):
        read_texts(tmp_path / "other.csv", files)
    with pytest.raises(InputError, match="expected a .txt, .csv, .jsonl file"):
        read_texts(tmp_path / "t.tsv", files)

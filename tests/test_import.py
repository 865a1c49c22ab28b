"""`pinworld import`: a folder of images (the shipped Open Clip Art sample) or the Open Clip Art Library
becomes a valid catalog workspace; bad input is one line and leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from pinworld import cli
from pinworld.validate import validate_workdir
from pinworld.world import World

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "openclipart"


def _import(*args) -> int:
    return cli.main(["import", *map(str, args), "--quiet"])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_the_shipped_sample_is_small_and_has_pairs():
    rows = [json.loads(line) for line in (SAMPLE / "items.jsonl").read_text().splitlines()]
    per_category = pl.DataFrame(rows)["category"].value_counts()
    assert len(rows) == 300 and (per_category["count"] >= 2).sum() >= 100
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 3_000_000
    assert "public domain" in (SAMPLE / "NOTICE.md").read_text().lower()
    with Image.open(SAMPLE / rows[0]["file"]) as im:
        assert max(im.size) <= 96 and im.mode == "RGBA"


def test_folder_import_of_the_shipped_sample(tmp_path):
    work = tmp_path / "w"
    assert _import("folder", SAMPLE, "--texts", SAMPLE / "items.jsonl", "--workdir", work) == 0
    assert validate_workdir(work) == []
    rows = sorted((json.loads(line) for line in (SAMPLE / "items.jsonl").read_text().splitlines()),
                  key=lambda r: r["file"])
    world = World(work)
    pins = world.pins()
    assert pins["pin_id"].to_list() == list(range(len(rows)))          # in path order
    assert pins["image_uri"].to_list() == [f"images/{r['file']}" for r in rows]
    assert pins["title"].to_list() == [r["title"] for r in rows]
    assert pins["title"].null_count() > 0 and pins["created_day"].unique().to_list() == [0]
    assert (work / "world" / pins["image_uri"][5]).read_bytes() == (SAMPLE / rows[5]["file"]).read_bytes()
    boards, edges = world.table("boards"), world.table("pin_board")
    assert sorted(boards["name"]) == sorted({r["category"] for r in rows})
    assert boards["user_id"].null_count() == boards.height
    named = edges.join(boards, on="board_id").sort("pin_id")
    assert named["pin_id"].to_list() == pins["pin_id"].to_list()
    assert named["name"].to_list() == [r["category"] for r in rows]
    ann = world.table("pin_annotations")
    assert ann.height == sum(len(r["keywords"]) for r in rows) and "unsorted" not in ann["annotation"].to_list()
    assert not world.has("users") and not world.has("impressions")
    assert world.default_cutoff() == 1 and world.pins(as_of=world.cutoff()).height == len(rows)


def _image(path: Path, size=(24, 16), colour=(200, 30, 30, 128)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", size, colour).save(path)


def test_folder_import_with_a_csv_sidecar(tmp_path, monkeypatch):
    src = tmp_path / "photos"
    for name in ("cats/a.png", "cats/b.png", "dogs/c.png", "top.png", "huge/d.png"):
        _image(src / name, (64, 64) if name.startswith("huge") else (24, 16))
    (src / "notes.txt").write_text("not an image")
    texts = tmp_path / "texts.csv"
    texts.write_text("file,title,description,keywords,category\n"
                     "cats/a.png,A cat,  ,cat; pet;;cat,\n"
                     "dogs/c.png,,a dog,,pets/dogs\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # d.png is over twice the limit: no stage reads it
    work = tmp_path / "w"
    assert _import("folder", src, "--texts", texts, "--workdir", work) == 0
    assert validate_workdir(work) == []
    world = World(work)
    pins = world.pins()
    assert pins["image_uri"].to_list() == ["images/cats/a.png", "images/cats/b.png", "images/dogs/c.png",
                                           "images/top.png"]
    assert pins["title"].to_list() == ["A cat", None, None, None]
    assert pins["description"].to_list() == [None, None, "a dog", None]    # blank is null
    assert world.table("pin_annotations")["annotation"].to_list() == ["cat", "pet"]
    names = world.table("pin_board").join(world.table("boards"), on="board_id").sort("pin_id")
    assert names["name"].to_list() == ["cats", "cats", "pets/dogs"]       # top.png has no category
    assert json.loads((work / "world/import.json").read_text())["counts"]["too_large"] == ["huge/d.png"]


SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title><dc:description>{description}</dc:description>
    <dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>Someone</dc:title></cc:Agent></dc:creator>{language}
  </cc:Work></rdf:RDF></metadata>
  <rect width="10" height="10"/>
</svg>
"""


def _library(root: Path) -> Path:
    """Three PNG+SVG pairs laid out as Debian installs them, in nested categories."""
    lib = root / "usr/share/openclipart"
    for rel, title, description, keywords, language in [
            ("animals/birds/crow_01", "crow", "", ["unsorted", "bird", " ", "bird"], "EN"),
            ("animals/cat_02", "Gato", "un gato", ["animal"], "es-ES"),
            ("science/medicine/pill", " ", "", ["unsorted"], None)]:
        _image(lib / "png" / f"{rel}.png")
        svg = lib / "svg" / f"{rel}.svg"
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(SVG.format(title=title, description=description,
                                  keywords="".join(f"<rdf:li>{k}</rdf:li>" for k in keywords),
                                  language=f"<dc:language>{language}</dc:language>" if language else ""))
    return lib


def test_openclipart_import_from_a_debian_shaped_tree(tmp_path):
    lib = _library(tmp_path / "root")
    work = tmp_path / "w"
    assert _import("openclipart", "--from", tmp_path / "root", "--workdir", work) == 0
    assert validate_workdir(work) == []
    world = World(work)
    pins = world.pins()
    assert pins["image_uri"].to_list() == ["images/animals/birds/crow_01.png", "images/animals/cat_02.png",
                                           "images/science/medicine/pill.png"]
    assert pins["title"].to_list() == ["crow", "Gato", None]
    assert pins["description"].to_list() == [None, "un gato", None]
    assert pins["language"].to_list() == ["en", "es", None]
    ann = world.table("pin_annotations").sort("pin_id")
    assert list(zip(ann["pin_id"], ann["annotation"])) == [(0, "bird"), (1, "animal")]   # `unsorted` dropped
    assert sorted(world.table("boards")["name"]) == ["animals", "animals/birds", "science/medicine"]
    assert (work / "world/images/animals/cat_02.png").read_bytes() == (lib / "png/animals/cat_02.png").read_bytes()


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_openclipart_import_from_deb_files(tmp_path):
    lib = _library(tmp_path / "root")
    debs = []
    for kind in ("png", "svg"):
        pkg = tmp_path / f"openclipart-{kind}"
        shutil.copytree(lib / kind, pkg / "usr/share/openclipart" / kind)
        (pkg / "DEBIAN").mkdir()
        (pkg / "DEBIAN/control").write_text(f"Package: openclipart-{kind}\nVersion: 1:0.18\nArchitecture: all\n"
                                            "Maintainer: test <t@example.org>\nDescription: test\n")
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(pkg) + ".deb"],
                       check=True, capture_output=True)
        debs += ["--deb", f"{pkg}.deb"]
    assert _import("openclipart", *debs, "--workdir", tmp_path / "w") == 0
    assert World(tmp_path / "w").pins()["title"].to_list() == ["crow", "Gato", None]


def test_missing_library_says_how_to_get_it(tmp_path, capsys):
    assert _import("openclipart", "--from", tmp_path, "--workdir", tmp_path / "w") == 2
    line = _one_error_line(capsys)
    assert "apt-get download openclipart-png openclipart-svg" in line and "found no png/ and svg/" in line
    assert not (tmp_path / "w").exists()


def test_an_existing_world_is_refused_without_force(tmp_path, capsys):
    _library(tmp_path / "root")
    work = tmp_path / "w"
    assert _import("openclipart", "--from", tmp_path / "root", "--workdir", work) == 0
    (work / "logs").mkdir()
    (work / "logs/old.parquet").write_text("from another world")
    before = (work / "world/pins.parquet").stat().st_mtime_ns
    assert _import("folder", SAMPLE, "--workdir", work) == 2
    assert "world exists and is not empty; use --force" in _one_error_line(capsys)
    assert (work / "world/pins.parquet").stat().st_mtime_ns == before
    assert _import("folder", SAMPLE, "--workdir", work, "--force") == 0
    assert World(work).pins().height == 300 and not (work / "logs").exists()
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []     # no temporary folder left


@pytest.mark.parametrize("sidecar, expected", [
    ('{"file": "a.png", "title": "ok"}\n{"file": "b.png", "title": \n',
     "texts.jsonl:2: row: expected a JSON object, found invalid JSON"),
    ('{"file": "a.png"}\n\n{"file": "gone.png", "title": "x"}\n', "texts.jsonl:3: file: expected an image file under"),
    ('{"file": "a.png", "keywords": 3}\n', "texts.jsonl:1: keywords: expected a list of strings"),
    ('{"file": "a.png"}\n{"file": "a.png"}\n', "texts.jsonl:2: file: expected each file once"),
    ('{"file": "../outside.png"}\n', "texts.jsonl:1: file: expected an image file under"),
])
def test_bad_sidecar_is_one_line_naming_the_row(tmp_path, capsys, sidecar, expected):
    src = tmp_path / "photos"
    _image(src / "a.png")
    _image(tmp_path / "outside.png")
    (tmp_path / "texts.jsonl").write_text(sidecar)
    assert _import("folder", src, "--texts", tmp_path / "texts.jsonl", "--workdir", tmp_path / "w") == 2
    line = _one_error_line(capsys)
    assert line.startswith("pinworld import folder: ") and expected in line, line
    assert not (tmp_path / "w").exists()


def test_unreadable_image_is_one_line_naming_it(tmp_path, capsys):
    src = tmp_path / "photos"
    _image(src / "a.png")
    (src / "broken.png").write_bytes(b"not a png at all")
    work = tmp_path / "w"
    assert _import("folder", src, "--workdir", work) == 2
    line = _one_error_line(capsys)
    assert "broken.png: image: expected an image file Pillow can open" in line
    assert not (work / "world").exists() and list(work.iterdir()) == []

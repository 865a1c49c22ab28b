"""benchmarks/openclipart: the committed split is deterministic and 80/10/10; the open_clip baseline's size
stays within ±20% of PinCLIP tiny's; the harness runs end to end on a tiny library (2 steps a row), reuses
finished rows, and writes the JSON and the marked docs section without duplicating it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from openclipart import report, rows, split  # noqa: E402
from openclipart import run as bench_run  # noqa: E402

SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/"
     xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<metadata><rdf:RDF><cc:Work rdf:about="">
<dc:title>{title}</dc:title><dc:description></dc:description>
<dc:subject><rdf:Bag><rdf:li>{keyword}</rdf:li></rdf:Bag></dc:subject>
</cc:Work></rdf:RDF></metadata></svg>
"""


def test_split_of_the_library_is_deterministic_and_80_10_10():
    committed = split.read_split()
    files = {item.file: item.split for item in committed.values()}
    assert len(committed) == 8121 and len(files) == 6900
    shares = {s: list(files.values()).count(s) / len(files) for s in split.SPLITS}
    assert abs(shares["train"] - 0.8) < 0.001 and abs(shares["validation"] - 0.1) < 0.001
    # copies of one image (symbolic links) share a split
    assert all(committed[p].split == files[item.file] for p, item in committed.items())
    # regenerating from the paths gives the same file, whatever order they come in
    mapping = {p: item.file for p, item in committed.items()}
    again = split.to_csv(split.make_split(dict(reversed(list(mapping.items())))))
    assert again == split.SPLIT_CSV.read_text()


def test_split_is_stratified_and_independent_of_other_seeds():
    paths = [f"cat{c}/img{i:02d}.png" for c in range(7) for i in range(10 + 3 * c)]
    a, b = split.make_split(paths), split.make_split(list(reversed(paths)))
    assert a == b
    for c in range(7):
        mine = [a[p].split for p in paths if p.startswith(f"cat{c}/")]
        for s, share, slack in (("train", 0.8, 2), ("validation", 0.1, 1), ("test", 0.1, 1)):
            assert abs(mine.count(s) - share * len(mine)) < slack
    assert split.make_split(paths, seed=1) != a


def test_baseline_size_is_within_20_percent_of_pinclip_tiny():
    counts = report.parameter_counts(rows.OPENCLIP["model_config"])
    assert 0.8 <= counts["baseline_over_pinclip_image_text"] <= 1.2, counts
    assert 0.8 <= counts["baseline_over_pinclip_total"] <= 1.2, counts


def _library(root: Path) -> Path:
    """A library of 3 categories x 20 drawings (RGBA, P and LA PNGs of several sizes) and one linked copy."""
    rng = np.random.default_rng(0)
    names = {"animals/birds": "owl", "food": "apple", "tools": "hammer"}
    for c, (cat, word) in enumerate(names.items()):
        for i in range(20):
            png = root / "png" / cat / f"{word}_{i:02d}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            side = int(rng.integers(40, 90))
            arr = np.zeros((side, side + 7 * (i % 3), 4), np.uint8)
            arr[..., c] = 200
            arr[side // 4: 3 * side // 4, :, 3] = 255
            im = Image.fromarray(arr, "RGBA")
            (im.convert("P") if i % 5 == 0 else im.convert("LA") if i % 7 == 0 else im).save(png)
            svg = (root / "svg" / cat / png.name).with_suffix(".svg")
            svg.parent.mkdir(parents=True, exist_ok=True)
            title = f"{word} number {i}" if i % 6 else ""
            svg.write_text(SVG.format(title=title, keyword=word))
    link = root / "png" / "food" / "owl_copy.png"
    link.symlink_to("../animals/birds/owl_03.png")
    (root / "svg" / "food" / "owl_copy.svg").write_text(SVG.format(title="owl copy", keyword="owl"))
    return root


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openclipart")
    lib = _library(tmp / "lib")
    split_csv = tmp / "split.csv"
    split_csv.write_text(split.to_csv(split.make_split(split.item_files(lib))))
    docs = tmp / "results.md"
    docs.write_text("# results\n\n## Other section\n\nkept\n")
    args = ["--workdir", str(tmp / "work"), "--from", str(lib), "--split", str(split_csv), "--out",
            str(tmp / "out.json"), "--docs", str(docs), "--steps-cap", "2", "--batch-size", "8", "--quiet"]
    return tmp, args


def test_harness_end_to_end(bench):
    tmp, args = bench
    assert bench_run.main([*args, "--write-docs"]) == 0
    doc = json.loads((tmp / "out.json").read_text())
    main_rows = [r.name for r in rows.MAIN]
    assert set(main_rows) <= set(doc["rows"])
    for name, row in doc["rows"].items():
        assert row["seeds"] == list(rows.ROWS[name].seeds)
        assert row["split"] == rows.ROWS[name].split
        for task in ("image_text", "image_image"):
            assert row["mean"][task]["queries"] > 0
            assert all(0 <= row["mean"][task][f"R@{k}"] <= 1 for k in (1, 5, 10))
        assert len(row["per_seed"]) == len(row["seeds"])
        assert row["per_seed"][0]["machine"]["torch_threads"] == 1
    assert doc["rows"]["pinclip_init"]["steps"] == 0
    assert doc["rows"]["pinclip"]["steps"] == 2 and doc["rows"]["pinclip"]["pairs"] == 16
    assert doc["rows"]["pinclip_boards"]["settings"]["pin_pin"] is True
    assert "validation" in doc["rows"]["openclip"]["lr_chosen_by"]
    # evaluation is by image file: the linked copy is one item with the categories of both paths
    files = {item.file for p, item in split.read_split(tmp / "split.csv").items() if item.split == "test"}
    assert doc["rows"]["pinclip"]["eval_items"] == len(files)
    text = (tmp / "results.md").read_text()
    assert text.count(report.BEGIN) == 1 and text.count(report.HEADING) == 1 and "kept" in text
    assert "`pinclip_boards`" in text and "hyp_no_augment" in text


def test_harness_reuses_finished_rows_and_replaces_the_docs_section(bench):
    tmp, args = bench
    before = {p: p.stat().st_mtime_ns for p in (tmp / "work" / "benchmark" / "results").rglob("*.json")}
    assert before
    assert bench_run.main([*args, "--only", "pinclip,openclip", "--write-docs"]) == 0
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before
    text = (tmp / "results.md").read_text()
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1 and text.count(report.HEADING) == 1


def test_custom_hypothesis_row(bench):
    tmp, args = bench
    assert bench_run.main([*args, "--only", "hyp_flip", "augment_flip=0.5"]) == 0
    row = json.loads((tmp / "out.json").read_text())["rows"]["hyp_flip"]
    assert row["split"] == "validation" and row["settings"]["augment_flip"] == 0.5


def test_retrain_trains_a_row_afresh(bench):
    tmp, args = bench
    result = tmp / "work" / "benchmark" / "results" / "pinclip_init" / "s0.json"
    before = result.stat().st_mtime_ns
    assert bench_run.main([*args, "--only", "pinclip_init", "--retrain"]) == 0
    assert result.stat().st_mtime_ns != before

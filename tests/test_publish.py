"""Publishing: int8 contract, atomic versions, incremental parts, verification, bad input, kill midway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from pinclip import publish as publish_mod
from pinclip.embeddings import EmbeddingError, open_embeddings
from pinclip.publish import EmbeddingBatch, PublishError, latest_version, publish, versions
from pinclip.quantization import SCALE, clamped_share, dequantize, l2_normalize, quantize

SOURCE = {"kind": "test"}


def _batch(ids, seed=0, kinds=("fusion",)):
    rng = np.random.default_rng(seed)
    return EmbeddingBatch(np.asarray(ids, np.int64), {k: rng.normal(size=(len(ids), 64)) for k in kinds})


def test_quantize_dequantize_round_trip():
    rng = np.random.default_rng(0)
    x = l2_normalize(rng.normal(size=(1000, 64)))
    back = dequantize(quantize(x))
    inside = np.abs(x) <= 0.5
    assert np.abs(back - x)[inside].max() <= SCALE / 2 + 1e-7
    np.testing.assert_allclose(np.abs(back[~inside]), 0.5)        # the rare large components clamp at 0.5
    assert clamped_share(x) == pytest.approx((~inside).mean()) and clamped_share(x) < 1e-3
    spike = np.zeros((1, 64), np.float32)
    spike[0, 0] = 1.0
    assert quantize(spike)[0, 0] == 127 and dequantize(quantize(spike))[0, 0] == pytest.approx(0.5)
    assert clamped_share(spike) == pytest.approx(1 / 64)
    assert quantize(-spike)[0, 0] == -127


def test_publish_and_read_back(tmp_path):
    b = _batch([5, 3, 9, 1], kinds=("fusion", "image"))
    m = publish(tmp_path, "emb", b, source=SOURCE)
    assert (m["version"], latest_version(tmp_path, "emb"), m["dim"], m["dtype"]) == ("v0001", "v0001", 64, "int8")
    assert m["quantization"] == {"scheme": "global_affine", "scale": 0.5 / 127, "zero_point": 0, "clamp": [-127, 127]}
    e = open_embeddings(tmp_path, "emb")
    assert e.ref == "emb@v0001" and list(e.pin_ids) == [1, 3, 5, 9]
    look = e.lookup([9, 5, 9], "image")
    expected = quantize(l2_normalize(b.vectors["image"]))[[2, 0, 2]]
    np.testing.assert_array_equal(look.values, expected)
    assert look.found.all() and look.values.dtype == np.int8
    deq = e.lookup([1], dequantize_values=True).values
    np.testing.assert_allclose(np.linalg.norm(deq), 1.0, atol=0.02)


def test_missing_pins_are_flagged_not_silent(tmp_path):
    b = EmbeddingBatch(np.arange(4), {"fusion": np.ones((4, 64)), "text": np.ones((4, 64))},
                       present={"text": np.array([True, False, True, True])})
    publish(tmp_path, "emb", b, source=SOURCE)
    e = open_embeddings(tmp_path, "emb")
    look = e.lookup([0, 1, 77], "text")
    assert list(look.found) == [True, False, False] and look.missing == 2
    assert (look.values[1:] == 0).all()
    assert e.coverage([0, 1, 2, 77]) == {"requested": 4, "found": 3, "missing": 1, "coverage": 0.75}


@pytest.mark.parametrize("bad,message", [
    ("nan", "expected finite values, found nan at pin_id 2"),
    ("inf", "expected finite values, found inf at pin_id 2"),
    ("huge", "expected finite values, found a row whose norm overflows float64 at pin_id 2"),
    ("zero", "expected non-zero vectors, found zero at pin_id 2"),
    ("dim", "expected shape (4, 64), found (4, 32)"),
    ("dup", "expected unique ids"),
])
def test_bad_embeddings_refused_nothing_written(tmp_path, bad, message):
    publish(tmp_path, "emb", _batch(range(4)), source=SOURCE)
    b = _batch(range(4), seed=1)
    if bad == "nan":
        b.vectors["fusion"][2, 5] = np.nan
    elif bad == "inf":
        b.vectors["fusion"][2, 5] = np.inf
    elif bad == "huge":
        b.vectors["fusion"][2, 5] = 1e200
    elif bad == "zero":
        b.vectors["fusion"][2] = 0
    elif bad == "dim":
        b.vectors["fusion"] = b.vectors["fusion"][:, :32]
    else:
        b.pin_ids[1] = 0
    with pytest.raises(PublishError, match=message.replace("(", r"\(").replace(")", r"\)")):
        publish(tmp_path, "emb", b, source=SOURCE)
    assert versions(tmp_path, "emb") == ["v0001"] and latest_version(tmp_path, "emb") == "v0001"
    assert sorted(p.name for p in (tmp_path / "embeddings/emb").iterdir()) == ["LATEST", "v0001"]


def test_incremental_reuses_parts(tmp_path):
    publish(tmp_path, "emb", _batch(range(100)), source=SOURCE)
    m = publish(tmp_path, "emb", _batch(range(100, 150), seed=2), source=SOURCE, incremental=True)
    assert m["version"] == "v0002" and m["parent"] == "v0001" and m["rows"] == 150
    assert [p["reused_from"] for p in m["parts"]] == ["v0001", None]
    root = tmp_path / "embeddings/emb"
    assert os.stat(root / "v0001/part-00000.parquet").st_ino == os.stat(root / "v0002/part-00000.parquet").st_ino
    e = open_embeddings(tmp_path, "emb")
    assert e.coverage(range(150))["coverage"] == 1.0
    assert open_embeddings(tmp_path, "emb@v0001").coverage(range(150))["found"] == 100
    with pytest.raises(PublishError, match="found 1 already published, e.g. pin_id 120"):
        publish(tmp_path, "emb", _batch([120, 151]), source=SOURCE, incremental=True)
    assert latest_version(tmp_path, "emb") == "v0002"


def test_reader_detects_corruption(tmp_path):
    publish(tmp_path, "emb", _batch(range(50)), source=SOURCE)
    part = tmp_path / "embeddings/emb/v0001/part-00000.parquet"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    with pytest.raises(EmbeddingError, match="part-00000.parquet: sha256: expected"):
        open_embeddings(tmp_path, "emb")
    with pytest.raises(EmbeddingError, match="expected readable Parquet"):
        open_embeddings(tmp_path, "emb", verify=False)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    part.write_bytes(bytes(flipped))
    with pytest.raises(EmbeddingError, match="sha256"):
        open_embeddings(tmp_path, "emb")
    part.write_bytes(data)
    manifest = tmp_path / "embeddings/emb/v0001/manifest.json"
    m = json.loads(manifest.read_text())
    m["dim"] = 128
    manifest.write_text(json.dumps(m))
    with pytest.raises(EmbeddingError, match="manifest.json: dim: expected 64, found 128"):
        open_embeddings(tmp_path, "emb")
    del m["as_of_day"]
    m["dim"] = 64
    manifest.write_text(json.dumps(m))
    with pytest.raises(EmbeddingError, match="manifest.json: as_of_day: expected a int .*, found no such field"):
        open_embeddings(tmp_path, "emb")


def test_the_manifest_and_parts_follow_the_schema(tmp_path):
    """What publish writes is what pinlift.core.schema (and so docs/data.md) says, field for field."""
    import pyarrow.parquet as pq

    from pinlift.core.schema import EMBEDDING_TABLES

    m = publish(tmp_path, "emb", _batch(range(5), kinds=("fusion", "image", "text")), source=SOURCE)
    assert list(m) == [c.name for c in EMBEDDING_TABLES["manifest"].columns]
    names = pq.read_schema(tmp_path / "embeddings/emb/v0001/part-00000.parquet").names
    assert names == [c.name for c in EMBEDDING_TABLES["embedding_parts"].columns]


def test_unknown_name_and_version(tmp_path):
    with pytest.raises(EmbeddingError, match="nothing published under 'nope'"):
        open_embeddings(tmp_path, "nope")
    publish(tmp_path, "emb", _batch(range(3)), source=SOURCE)
    with pytest.raises(EmbeddingError, match="no version 'v0042'"):
        open_embeddings(tmp_path, "emb@v0042")
    with pytest.raises(ValueError, match="name '../x'"):
        publish(tmp_path, "../x", _batch(range(3)), source=SOURCE)


def test_publish_killed_midway_leaves_previous_version(tmp_path):
    publish(tmp_path, "emb", _batch(range(40)), source=SOURCE)
    marker = tmp_path / "first-part-written"
    child = textwrap.dedent(f"""
        import time, numpy as np
        from pinclip import publish as P
        P.PART_ROWS = 10
        batch = P.EmbeddingBatch(np.arange(100, 160), {{"fusion": np.ones((60, 64))}})
        def on_part(i, n):
            open({str(marker)!r}, "w").close()
            time.sleep(60)
        P.publish({str(tmp_path)!r}, "emb", batch, source={{"kind": "test"}}, on_part=on_part)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert latest_version(tmp_path, "emb") == "v0001" and versions(tmp_path, "emb") == ["v0001"]
    assert open_embeddings(tmp_path, "emb").coverage(range(40))["coverage"] == 1.0
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "embeddings/emb").iterdir())
    m = publish(tmp_path, "emb", _batch(range(10)), source=SOURCE)       # the next publish cleans up
    assert m["version"] == "v0002"
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "embeddings/emb").iterdir())


def test_part_rows_split(tmp_path, monkeypatch):
    monkeypatch.setattr(publish_mod, "PART_ROWS", 7)
    m = publish(tmp_path, "emb", _batch(range(20)), source=SOURCE)
    assert [p["rows"] for p in m["parts"]] == [7, 7, 6]
    assert len(open_embeddings(tmp_path, "emb")) == 20


# ---- your own vectors: `pinclip publish --source parquet` through the same checks -------------------------

def _vector_file(path, ids, vectors, type_=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    v = np.asarray(vectors)
    values = pa.array(v.reshape(-1), type_ or pa.from_numpy_dtype(v.dtype))
    column = pa.FixedSizeListArray.from_arrays(values, v.shape[1]) if type_ is None else \
        pa.ListArray.from_arrays(pa.array(np.arange(0, v.size + 1, v.shape[1]), pa.int32()), values)
    pq.write_table(pa.table({"pin_id": pa.array(ids, pa.int64()), "vec": column}), path)
    return path


def _publish_cli(tmp_path, *args):
    from pinclip import cli

    return cli.main(["publish", "--workdir", str(tmp_path), "--source", "parquet", "--quiet", *args])


def test_clamping_vector_file_refused_with_counts_then_rotated_publishes_and_indexes(tmp_path, capsys):
    from scipy.stats import ortho_group

    from pinclip import cli
    from pinclip.quantization import max_clamped

    rng = np.random.default_rng(0)
    one_hot = np.eye(64)[rng.integers(0, 64, 200)] + 0.01 * rng.normal(size=(200, 64))   # one-hot-like
    path = _vector_file(tmp_path / "mine.parquet", np.arange(200), one_hot)
    assert _publish_cli(tmp_path, "--vectors", str(path), "--name", "mine") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "found 200 of 12,800 (1.6%) in 200 of 200 rows" in err
    assert "rotation" in err and "ortho_group" in err
    assert not (tmp_path / "embeddings/mine").exists() or versions(tmp_path, "mine") == []
    # 0.1%, and in a small sample what chance adds to it, pass (a few new pins with one clamped component)
    assert max_clamped(12_800) == 33 and max_clamped(64) == 3 and max_clamped(64_000_000) < 1.02 * 64_000
    batch = EmbeddingBatch(np.arange(20), {"fusion": l2_normalize(rng.normal(size=(20, 64)))})
    batch.vectors["fusion"][:9, 0] = 3.0
    assert clamped_share(l2_normalize(batch.vectors["fusion"])) * 1280 == 9 == max_clamped(1280)
    publish(tmp_path, "few", batch, source=SOURCE)
    batch.vectors["fusion"][9, 0] = 3.0
    with pytest.raises(PublishError, match=r"found 10 of 1,280 \(0.8%\) in 10 of 20 rows"):
        publish(tmp_path, "few", batch, source=SOURCE)
    # the same vectors rotated: the norm is spread over every axis, nothing clamps, cosines are kept
    rotated = one_hot @ ortho_group.rvs(64, random_state=0)
    path = _vector_file(tmp_path / "rotated.parquet", np.arange(200), rotated.astype(np.float32))
    assert _publish_cli(tmp_path, "--vectors", str(path), "--name", "mine") == 0
    e = open_embeddings(tmp_path, "mine")
    assert e.manifest["source"]["kind"] == "parquet" and e.manifest["source"]["file"] == "rotated.parquet"
    assert e.manifest["source"]["sha256"] == publish_mod.sha256(path)
    got = e.lookup(np.arange(200), dequantize_values=True).values
    np.testing.assert_allclose(got @ got.T, l2_normalize(one_hot) @ l2_normalize(one_hot).T, atol=0.02)
    capsys.readouterr()
    assert cli.main(["index", "build", "--workdir", str(tmp_path), "--embeddings", "mine", "--m", "8"]) == 0
    assert cli.main(["index", "query", "--workdir", str(tmp_path), "--embeddings", "mine", "--pin-id", "3",
                     "--k", "5"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()[1:]]
    same_axis = set(np.flatnonzero(np.argmax(one_hot, 1) == np.argmax(one_hot[3]))) - {3}   # near-duplicates of 3
    assert 0 < len(same_axis) < 5 and set(rows[0]["candidates"][:len(same_axis)]) == same_axis


def test_int8_vector_file_checked_for_unit_norm(tmp_path, capsys):
    rng = np.random.default_rng(1)
    good = quantize(l2_normalize(rng.normal(size=(30, 64))))
    assert _publish_cli(tmp_path, "--vectors", str(_vector_file(tmp_path / "q.parquet", np.arange(30), good)),
                        "--name", "q") == 0
    np.testing.assert_array_equal(open_embeddings(tmp_path, "q").lookup(np.arange(30)).values, good)
    norm4 = good.copy()
    norm4[7] = np.where(rng.random(64) < 0.5, -127, 127)          # every component at 0.5: norm 4
    path = _vector_file(tmp_path / "q4.parquet", np.arange(30), norm4)
    assert _publish_cli(tmp_path, "--vectors", str(path), "--name", "q") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unit norm" in err and "found norm 4.000 at pin_id 7" in err
    short = good.copy()
    short[4] //= 2                                                 # norm 0.5, nothing clamped: refused too
    with pytest.raises(PublishError, match="found norm 0.50. at pin_id 4"):
        publish(tmp_path, "q", EmbeddingBatch(np.arange(30), {"fusion": short}), source=SOURCE)
    assert versions(tmp_path, "q") == ["v0001"]


@pytest.mark.parametrize("bad,message", [
    ("dim", "expected shape (3, 64), found (3, 32)"),
    ("ragged", "vec: expected 64 values in every row, found 63 at pin_id 2"),
    ("ints", "vec: expected a list of floats or of int8 codes, found list<element: int64>"),
    ("columns", "columns: expected pin_id and one vector column, found pin_id, vec, other"),
    ("missing", "vectors: expected a readable Parquet file, found no such file"),
])
def test_bad_vector_files_refused(tmp_path, capsys, bad, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    path = tmp_path / "v.parquet"
    if bad == "dim":
        _vector_file(path, [0, 1, 2], rng.normal(size=(3, 32)))
    elif bad in ("ragged", "ints", "columns"):
        rows = [list(rng.normal(size=64)) for _ in range(3)]
        if bad == "ragged":
            rows[2] = rows[2][:63]
        cols = {"pin_id": [0, 1, 2], "vec": [[1] * 64] * 3 if bad == "ints" else rows}
        pq.write_table(pa.table({**cols, **({"other": [1, 2, 3]} if bad == "columns" else {})}), path)
    assert _publish_cli(tmp_path, "--vectors", str(path), "--name", "v") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert versions(tmp_path, "v") == []


def test_list_of_float_vectors_publish(tmp_path):
    import pyarrow as pa

    from pinclip.vector_source import publish_vectors

    v = np.random.default_rng(3).normal(size=(10, 64))
    m = publish_vectors(tmp_path, _vector_file(tmp_path / "l.parquet", np.arange(10, 20), v, pa.float64()), "l")
    assert m["rows"] == 10 and m["kinds"] == ["fusion"] and m["l2_normalized"]
    np.testing.assert_array_equal(open_embeddings(tmp_path, "l").lookup(np.arange(10, 20)).values,
                                  quantize(l2_normalize(v)))

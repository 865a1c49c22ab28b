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

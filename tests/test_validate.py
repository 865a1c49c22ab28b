"""`pinworld validate` catches each kind of bad table with one clear line, exit 2, nothing written."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pinworld import cli
from pinworld.validate import validate_workdir


@pytest.fixture()
def user_workdir(tiny_workdir, tmp_path):
    """A copy of the tiny world's tables, as a user would supply them (no ground truth)."""
    dst = tmp_path / "mine"
    shutil.copytree(tiny_workdir / "world", dst / "world", ignore=shutil.ignore_patterns("truth", "world.json"))
    shutil.copytree(tiny_workdir / "logs", dst / "logs")
    return dst


def _rewrite(path, fn):
    pq.write_table(fn(pq.read_table(path)), path)


def _snapshot(d):
    return sorted((str(p), p.stat().st_size) for p in d.rglob("*"))


def _only_problem(workdir, capsys) -> str:
    before = _snapshot(workdir)
    assert cli.main(["validate", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert _snapshot(workdir) == before     # nothing written
    assert len(err) == 1, err
    return err[0]


def test_valid_copy_passes(user_workdir, capsys):
    assert cli.main(["validate", "--workdir", str(user_workdir)]) == 0
    assert "all tables valid" in capsys.readouterr().out


def test_missing_column(user_workdir, capsys):
    _rewrite(user_workdir / "world/pins.parquet", lambda t: t.drop_columns(["created_day"]))
    line = _only_problem(user_workdir, capsys)
    assert line == "pinworld validate: world/pins.parquet: column 'created_day': expected a int column, found no such column"


def test_wrong_type(user_workdir, capsys):
    def to_string(t):
        i = t.schema.get_field_index("signup_day")
        return t.set_column(i, "signup_day", pc.cast(t.column("signup_day"), pa.string()))
    _rewrite(user_workdir / "world/users.parquet", to_string)
    line = _only_problem(user_workdir, capsys)
    assert line == "pinworld validate: world/users.parquet: column 'signup_day': expected int, found string"


def test_duplicate_ids(user_workdir, capsys):
    _rewrite(user_workdir / "world/users.parquet", lambda t: pa.concat_tables([t, t.slice(5, 1)]))
    line = _only_problem(user_workdir, capsys)
    assert line.startswith("pinworld validate: world/users.parquet: column 'user_id': expected unique values, found 1 duplicated, e.g. 5")


def test_dangling_foreign_key(user_workdir, capsys):
    def dangle(t):
        ids = t.column("board_id").to_pylist()
        ids[0] = 10**9
        return t.set_column(t.schema.get_field_index("board_id"), "board_id", pa.array(ids, pa.int64()))
    _rewrite(user_workdir / "world/pin_board.parquet", dangle)
    line = _only_problem(user_workdir, capsys)
    assert line == ("pinworld validate: world/pin_board.parquet: column 'board_id': "
                    "expected values present in boards.board_id, found 1 dangling, e.g. 1000000000")


def test_missing_table_and_images(user_workdir):
    (user_workdir / "world/boards.parquet").unlink()
    shutil.rmtree(user_workdir / "world/images")
    lines = [str(p) for p in validate_workdir(user_workdir)]
    assert "pinworld validate: world/boards.parquet: expected a Parquet table, found nothing" in lines
    assert any(line.startswith("pinworld validate: world/pins.parquet: column 'image_uri': expected an image file")
               for line in lines)


def test_image_files_by_path_are_accepted(user_workdir):
    from PIL import Image

    from pinworld.world import World

    (user_workdir / "world/photos").mkdir()
    Image.new("RGB", (80, 60), (200, 10, 10)).save(user_workdir / "world/photos/a.png")

    def repoint(t):
        uris = t.column("image_uri").to_pylist()
        uris[0] = "photos/a.png"
        return t.set_column(t.schema.get_field_index("image_uri"), "image_uri", pa.array(uris))
    _rewrite(user_workdir / "world/pins.parquet", repoint)
    assert validate_workdir(user_workdir) == []
    out = World(user_workdir).images([0, 1], size=64)
    assert out.shape == (2, 64, 64, 3) and tuple(out[0, 30, 30]) == (200, 10, 10)


def test_own_world_reads_and_summarises(user_workdir, capsys):
    from pinworld.world import World

    (user_workdir / "world/pin_annotations.parquet").unlink()    # optional tables may be absent
    world = World(user_workdir)
    assert world.generator_version == "external"
    pins = world.pins(as_of=10)
    assert pins.height > 0 and pins["annotations"].null_count() == pins.height
    assert cli.main(["catalog", "--workdir", str(user_workdir)]) == 0
    assert cli.main(["summary", "--workdir", str(user_workdir)]) == 0
    assert "homefeed" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="truth"):
        world.truth


def test_missing_surfaces_declaration(user_workdir, capsys):
    (user_workdir / "world/surfaces.yaml").unlink()
    line = _only_problem(user_workdir, capsys)
    assert "world/surfaces.yaml" in line and "expected the workspace's surfaces" in line and "found no file" in line


def test_invalid_surface_kind(user_workdir, capsys):
    path = user_workdir / "world/surfaces.yaml"
    path.write_text(path.read_text().replace("kind: related", "kind: carousel"))
    line = _only_problem(user_workdir, capsys)
    assert "surfaces.yaml:" in line and "kind" in line and "carousel" in line


def test_undeclared_surface_in_logs(user_workdir, capsys):
    path = user_workdir / "world/surfaces.yaml"
    path.write_text(path.read_text().replace("name: related", "name: similar"))
    line = _only_problem(user_workdir, capsys)
    assert "impressions" in line and "homefeed | similar | ads" in line and "'related'" in line

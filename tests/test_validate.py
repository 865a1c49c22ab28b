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
    assert any(line.startswith("pinworld validate: world/boards.parquet: expected a Parquet table (")
               and line.endswith("rows of pin_board.board_id refer to it), found nothing") for line in lines)
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


def test_an_optional_table_rows_refer_to_is_needed(user_workdir, capsys):
    (user_workdir / "world/users.parquet").unlink()    # boards and impressions name users
    line = _only_problem(user_workdir, capsys)
    assert line.startswith("pinworld validate: world/users.parquet: expected a Parquet table (")
    assert line.endswith("rows of boards.user_id refer to it), found nothing")


def _pins_only(tmp_path, created_day=(0, 0, 0), **columns):
    """A catalog: pin_id, created_day, image_uri and title only, image files under world/photos/."""
    from PIL import Image

    work = tmp_path / "catalog"
    (work / "world/photos").mkdir(parents=True)
    n = len(created_day)
    for k in range(n):
        Image.new("RGBA", (20, 10), (0, 0, 255, 100)).save(work / f"world/photos/{k}.png")
    pq.write_table(pa.table({"pin_id": pa.array(range(n), pa.int32()), "created_day": list(created_day),
                             "image_uri": [f"photos/{k}.png" for k in range(n)],
                             "title": [f"pin {k}" for k in range(n)], **columns}), work / "world/pins.parquet")
    return work


def test_a_pins_only_catalog_validates_and_reads_whole(tmp_path, capsys):
    from pinlift.core.schema import TABLES
    from pinworld.world import World

    work = _pins_only(tmp_path, description=pa.nulls(3))        # all-null: Arrow type null
    assert pq.read_schema(work / "world/pins.parquet").field("description").type == pa.null()
    assert cli.main(["validate", "--workdir", str(work)]) == 0     # no users, boards, logs or surfaces.yaml
    pins = World(work).pins()
    assert [c.name for c in TABLES["pins"].columns if c.name not in pins.columns] == []
    assert {c: str(pins[c].dtype) for c in ("description", "caption", "language", "is_ad", "advertiser_id")} == \
        {"description": "String", "caption": "String", "language": "String", "is_ad": "Boolean",
         "advertiser_id": "Int64"}
    assert pins["is_ad"].to_list() == [False] * 3 and pins["description"].null_count() == 3
    assert cli.main(["catalog", "--workdir", str(work)]) == 0
    assert cli.main(["summary", "--workdir", str(work)]) == 0
    assert "pins 3 (ads 0)  users 0" in capsys.readouterr().out


def test_a_catalogs_cutoff_comes_from_its_pins(tmp_path, tiny_world):
    from pinworld.world import World
    from pinlift.core.errors import InputError

    world = World(_pins_only(tmp_path, created_day=(-3, 0, 5)))
    assert world.is_catalog and not tiny_world.is_catalog
    assert world.log_window == (-3, 6) and world.default_cutoff() == 6    # every pin known
    assert world.pins(as_of=world.cutoff()).height == 3 and world.cutoff(1) == 1
    for day in (-3, 7):
        with pytest.raises(InputError, match=r"cutoff_day: expected a day inside the catalog's days \(-2 to 6\)"):
            world.cutoff(day)
    assert tiny_world.default_cutoff() == 26          # a generated world keeps its log window's


def test_a_column_with_no_default_may_not_be_all_null(tmp_path, capsys):
    work = _pins_only(tmp_path)
    _rewrite(work / "world/pins.parquet", lambda t: t.set_column(1, "created_day", pa.nulls(3)))
    line = _only_problem(work, capsys)
    assert line == "pinworld validate: world/pins.parquet: column 'created_day': expected int, found null"


@pytest.mark.parametrize("uri", ["../../../../etc/passwd", "/etc/passwd", "photos/link.png"])
def test_an_escaping_image_uri_names_the_pin(tmp_path, capsys, uri):
    work = _pins_only(tmp_path)
    outside = tmp_path / "outside.png"
    outside.write_bytes((work / "world/photos/0.png").read_bytes())
    (work / "world/photos/link.png").symlink_to(outside)

    def repoint(t):
        return t.set_column(2, "image_uri", pa.array(["photos/0.png", uri, "photos/2.png"]))
    _rewrite(work / "world/pins.parquet", repoint)
    line = _only_problem(work, capsys)
    assert line == ("pinworld validate: world/pins.parquet: column 'image_uri': expected a path inside world/, "
                    f"found 1 escaping it, e.g. pin 1: {uri!r}")


@pytest.mark.parametrize("uri", ["../outside.npy#0", "../outside.png"])
def test_the_image_store_never_reads_outside_world(tmp_path, uri):
    """Shard rows and files alike: a path leaving world/ is refused where images are read, not only by validate."""
    import numpy as np

    from pinlift.core.errors import InputError
    from pinworld.images import ImageStore

    (tmp_path / "world").mkdir()
    np.save(tmp_path / "outside.npy", np.zeros((1, 4, 4, 3), np.uint8))
    (tmp_path / "outside.png").write_bytes(b"")
    with pytest.raises(InputError, match="expected a path inside world/"):
        ImageStore(tmp_path / "world").load([uri])


def test_null_image_uri_is_a_pin_without_an_image(user_workdir):
    def unset(t):
        uris = t.column("image_uri").to_pylist()
        uris[:10] = [None] * 10                   # text- or ID-only pins
        return t.set_column(t.schema.get_field_index("image_uri"), "image_uri", pa.array(uris, pa.string()))
    _rewrite(user_workdir / "world/pins.parquet", unset)
    assert validate_workdir(user_workdir) == []


def test_surface_column_is_checked_not_the_folder_name(user_workdir, capsys):
    part = sorted((user_workdir / "logs/impressions").rglob("*.parquet"))[0]
    assert "surface=" in str(part)                 # a declared surface's folder ...
    _rewrite(part, lambda t: t.set_column(t.schema.get_field_index("surface"), "surface",
                                          pa.array(["movielens"] * t.num_rows, pa.string())))
    line = _only_problem(user_workdir, capsys)     # ... whose rows name another surface
    assert "column 'surface'" in line and "'movielens'" in line

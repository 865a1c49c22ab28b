"""The DuckDB catalog: views over the world, the published embeddings and the experiments."""

import json

import pyarrow.parquet as pq

from pinworld.catalog import connect


def _rows(paths) -> int:
    return sum(pq.read_metadata(p).num_rows for p in paths)


def test_catalog_has_views_over_embeddings_and_experiments(loop_workdir):
    # `pinclip publish` and `abtest simulate` (run by the loop) refresh the catalog themselves
    con = connect(loop_workdir)
    versions = con.execute("SELECT name, version, count(*) FROM embeddings GROUP BY ALL ORDER BY ALL").fetchall()
    manifest = json.loads((loop_workdir / "embeddings/pinclip/v0001/manifest.json").read_text())
    assert ("pinclip", "v0001", manifest["rows"]) in versions
    exp = loop_workdir / "experiments" / "pinclip_ranking"
    exposures = con.execute("SELECT experiment, variant, count(*) FROM experiment_exposures GROUP BY ALL").fetchall()
    assert {e for e, _, _ in exposures} == {"pinclip_ranking"} and {v for _, v, _ in exposures} == {"control", "treatment"}
    assert sum(n for _, _, n in exposures) == _rows(exp.glob("exposures/*.parquet"))
    # events are tagged with their experiment and join to the exposures' variant
    by_variant = dict(con.execute("""
        SELECT x.variant, count(*) FROM experiment_events e
        JOIN experiment_exposures x USING (experiment, user_id) GROUP BY ALL""").fetchall())
    for variant in ("control", "treatment"):
        assert by_variant[variant] == _rows(exp.glob(f"events/day=*/part-{variant}.parquet"))

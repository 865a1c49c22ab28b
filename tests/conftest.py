"""Session-wide tiny worlds, built once and shared by every test."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from scipy.stats import ortho_group

from pinworld.config import preset
from pinworld.generate import generate_world
from pinworld.world import World

RENAMED = {"homefeed": "search", "ads": "shop"}     # pinworld's surfaces as another team names them


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """A generated `tiny` world (seed 0). Tests never change world/ or logs/; derived outputs
    (embeddings/, ranking/) are shared between tests like in a real workspace."""
    workdir = tmp_path_factory.mktemp("tiny_world")
    generate_world(preset("tiny", seed=0), workdir, progress=False)
    return workdir


@pytest.fixture(scope="session")
def renamed_workdir(tmp_path_factory):
    """A generated `tiny` world (seed 0) whose feed surface is called `search` and ads surface `shop`."""
    workdir = tmp_path_factory.mktemp("renamed_world")
    generate_world(dataclasses.replace(preset("tiny", seed=0), surface_names=RENAMED), workdir, progress=False)
    return workdir


@pytest.fixture(scope="session")
def tiny_world(tiny_workdir) -> World:
    return World(tiny_workdir)


@pytest.fixture(scope="session")
def tiny_oracle(tiny_workdir):
    """Oracle embeddings published once into the tiny workspace as `oracle@v0001` (all pins)."""
    from pinclip.embeddings import open_embeddings
    from pinclip.oracle_source import publish_oracle

    publish_oracle(tiny_workdir, "oracle")
    return open_embeddings(tiny_workdir, "oracle@v0001")


@pytest.fixture(scope="session")
def tiny_pinclip_run(tiny_workdir):
    """A briefly trained tiny PinCLIP run `tiny_run` in the tiny workspace (name of the run)."""
    from pinclip.settings import TrainConfig
    from pinclip.training.train import Trainer

    Trainer(TrainConfig(workdir=str(tiny_workdir), run="tiny_run", steps=8, batch_size=32, warmup_steps=2,
                        vocab_size=2000, checkpoint_every=8), progress=False).fit()
    return "tiny_run"


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pinclip_ranking.yaml"


@pytest.fixture(scope="session")
def loop_workdir(tmp_path_factory):
    """A tiny workspace of its own, taken through every stage once (the stages write their files)."""
    from abtest import cli as abtest_cli
    from pinclip import cli as pinclip_cli
    from pinworld import cli as pinworld_cli
    from ranking import compare

    w = tmp_path_factory.mktemp("loop")
    W = str(w)
    assert pinworld_cli.main(["generate", "--workdir", W, "--preset", "tiny", "--seed", "0", "--quiet"]) == 0
    assert pinclip_cli.main(["pretrain-image", "--workdir", W, "--steps", "20", "--batch-size", "32", "--quiet"]) == 0
    assert pinclip_cli.main(["pretrain-text", "--workdir", W, "--steps", "20", "--batch-size", "32", "--vocab-size", "2000",
                             "--quiet"]) == 0
    assert pinclip_cli.main(["train", "demo", "steps=20", "batch_size=32", "neighbor_batch_size=0", "vocab_size=2000",
                             "--workdir", W, "--run", "tiny", "--quiet"]) == 0
    assert pinclip_cli.main(["eval", "--workdir", W, "--run", "tiny", "--max-queries", "200", "--distractors", "1000",
                             "--quiet"]) == 0
    assert pinclip_cli.main(["publish", "--workdir", W, "--source", "run", "--run", "tiny", "--name", "pinclip",
                             "--quiet"]) == 0
    assert compare.main(["--workdir", W, "--arms", "ids,pinclip", "--seeds", "0", "--epochs", "1",
                         "--results", ""]) == 0
    exp = yaml.safe_load(EXAMPLE.read_text())
    exp.update(days={"start": 28, "count": 3}, pre_period_days=7, users={"count": 300})   # tiny: cutoff day 26
    exp_path = w / "exp.yaml"
    exp_path.write_text(yaml.safe_dump(exp))
    assert abtest_cli.main(["simulate", str(exp_path), "--workdir", W, "--analyze", "--quiet"]) == 0
    return w


TEAM_SURFACES = "surfaces:\n  - {name: discover, kind: feed, tasks: [click]}\n"


def write_team_logs(workdir: Path, seed: int = 0, users: int = 120, topics: int = 6, pins: int = 900,
                    days: int = 36, requests: int = 100, slate: int = 8) -> None:
    """pins (pin_id, created_day), users (user_id), surfaces.yaml and clicks-only impressions on one surface;
    and beside them, ``vectors.parquet``: the team's 64-d vectors (topic and quality, noisy, rotated)."""
    rng = np.random.default_rng(seed)
    (workdir / "world").mkdir(parents=True)
    (workdir / "world/surfaces.yaml").write_text(TEAM_SURFACES)
    created = np.sort(rng.integers(-30, days, pins))
    topic, quality = rng.integers(0, topics, pins), rng.normal(0, 1, pins)
    taste = rng.integers(0, topics, users)
    pl.DataFrame({"pin_id": np.arange(pins), "created_day": created}).write_parquet(workdir / "world/pins.parquet")
    pl.DataFrame({"user_id": np.arange(users)}).write_parquet(workdir / "world/users.parquet")
    rows = []
    for day in range(days):
        live = np.flatnonzero(created <= day)
        recent = live[created[live] > day - 28]
        for r in range(requests):
            user = int(rng.integers(users))
            shown = np.concatenate([rng.choice(live, slate // 2, replace=False), rng.choice(recent, slate // 2, replace=False)])
            logit = -2.0 + 2.0 * (topic[shown] == taste[user]) + 1.0 * quality[shown]
            rows.append(pl.DataFrame({"request_id": day * requests + r, "day": day, "surface": "discover",
                                      "user_id": user, "pin_id": shown, "position": np.arange(slate),
                                      "click": rng.random(slate) < 1 / (1 + np.exp(-logit))}))
    logs = workdir / "logs/impressions"
    logs.mkdir(parents=True)
    pl.concat(rows).write_parquet(logs / "part-0.parquet")
    signal = np.zeros((pins, 64))
    signal[np.arange(pins), topic] = 1.0
    signal[:, topics] = quality
    vectors = (signal + rng.normal(0, 0.2, (pins, 64))) @ ortho_group.rvs(64, random_state=seed)
    pl.DataFrame({"pin_id": np.arange(pins), "vector": vectors.astype(np.float32)}).write_parquet(workdir / "vectors.parquet")


@pytest.fixture(scope="session")
def team_workdir(tmp_path_factory) -> Path:
    """A team's own workspace (``write_team_logs``, seed 0) with its vectors published as ``teamvec@v0001``."""
    from pinclip.vector_source import publish_vectors

    workdir = tmp_path_factory.mktemp("team")
    write_team_logs(workdir)
    publish_vectors(workdir, workdir / "vectors.parquet", "teamvec")
    return workdir

"""Session-wide tiny worlds, built once and shared by every test."""

from __future__ import annotations

import pytest

from pinworld.config import preset
from pinworld.generate import generate_world
from pinworld.world import World


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """A generated `tiny` world (seed 0). Tests never change world/ or logs/; derived outputs
    (embeddings/, ranking/) are shared between tests like in a real workspace."""
    workdir = tmp_path_factory.mktemp("tiny_world")
    generate_world(preset("tiny", seed=0), workdir, progress=False)
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
    from pinclip.train import TrainConfig, Trainer

    Trainer(TrainConfig(workdir=str(tiny_workdir), run="tiny_run", steps=8, batch_size=32, warmup_steps=2,
                        vocab_size=2000, checkpoint_every=8), progress=False).fit(resume=False)
    return "tiny_run"

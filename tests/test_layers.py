"""The layer contracts (pyproject.toml, import-linter) hold, and re-adding either former import cycle breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pinlift", "pinworld", "pinclip", "ranking", "abtest")
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True)


def test_layer_contracts_hold():
    out = lint(ROOT)
    assert out.returncode == 0 and "BROKEN" not in out.stdout, out.stdout + out.stderr


@pytest.fixture()
def copy(tmp_path) -> Path:
    """The packages' sources and pyproject.toml, to patch one import into."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, added, contract", [
    # the former cycles: abtest's validation called the CLI's error wrapper; PinCLIP's alignment read runs through
    # the evaluator, which read them through the trainer
    ("abtest/validation.py", "import abtest.cli", "abtest: the CLI above everything"),
    ("pinclip/loading.py", "import pinclip.training.train", "PinCLIP: the library imports no training program"),
    ("pinlift/core/config.py", "import pinworld.world", "The stages in their order"),
    ("ranking/features.py", "import pinclip.publish", "ranking reads only PinCLIP's published-embedding reader"),
])
def test_a_patched_import_breaks_its_contract(copy, module, added, contract):
    path = copy / module
    path.write_text(path.read_text() + f"\n{added}  # patched in by the test\n")
    out = lint(copy)
    assert out.returncode != 0
    broken = out.stdout.split("Broken contracts")[-1]
    assert contract in broken and added.split()[-1] in broken

"""The PinCLIP library never imports its training program: publishing and serving a run load no trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# What publishing (run_source) and serving (abtest's publishers, through run_source) import.
LIBRARY = ("pinclip.run_source", "pinclip.embeddings", "pinclip.loading", "pinclip.embedder")

# Imports the modules named on the command line in a fresh interpreter and prints what of the training
# program came with them: pinclip.training and timm.optim (Lion) in sys.modules, and any pinclip module
# binding something of torch.nn.parallel (DDP). torch.nn.parallel.distributed itself is in sys.modules
# as soon as torch is (torch.nn imports it to re-export DataParallel), so its presence tells nothing.
PROBE = """
import json, sys, types

def origin(value):
    if isinstance(value, types.ModuleType):
        return value.__name__
    if isinstance(value, type) or callable(value):
        return getattr(value, "__module__", None)
    return type(value).__module__

for name in sys.argv[1:]:
    __import__(name)
found = sorted(m for m in sys.modules if m.split(".")[:2] in (["pinclip", "training"], ["timm", "optim"]))
for mod_name, mod in sorted(sys.modules.items()):
    if mod_name.split(".")[0] == "pinclip":
        found += [f"{mod_name}.{attr} from {origin(value)}" for attr, value in vars(mod).items()
                  if str(origin(value)).split(".")[:3] == ["torch", "nn", "parallel"]]
print(json.dumps(found))
"""


def _training_imports(*modules: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *modules], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_publishing_and_serving_import_no_trainer():
    assert _training_imports(*LIBRARY) == []


def test_the_probe_sees_a_trainer():
    """The same probe on the training program finds all three, so the test above can fail."""
    found = _training_imports("pinclip.training.train")
    assert "pinclip.training" in found and "timm.optim" in found
    assert "pinclip.training.train.DistributedDataParallel from torch.nn.parallel.distributed" in found

"""The environment's installed packages agree with each other (`pip check`): on a CPU machine torchrec's
`fbgemm-gpu` is the metadata package scripts/fbgemm_gpu_shim, which depends on the CPU build."""

from __future__ import annotations

import subprocess
import sys


def test_pip_check_is_clean():
    done = subprocess.run([sys.executable, "-m", "pip", "check", "--disable-pip-version-check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

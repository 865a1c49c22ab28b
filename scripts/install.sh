#!/usr/bin/env bash
# Create or reuse .venv and install pinlift with the CPU or CUDA recipe.
# Idempotent: a stamp holding the hash of this script and pyproject.toml skips a
# reinstall when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH="torch==2.14.1 torchvision==0.29.1"
TORCHREC="torchrec==1.9.2"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  FBGEMM="fbgemm-gpu==1.9.0"      # CUDA machine: the real kernels
else
  FBGEMM="fbgemm-gpu-cpu==1.9.0"  # no GPU: the CPU build (the CUDA one does not load)
fi
stamp="$VENV/.pinlift-install"
SHIM=scripts/fbgemm_gpu_shim   # `fbgemm-gpu` by name, satisfied by the CPU build: `pip check` passes
want=$(cat "$0" pyproject.toml $SHIM/pyproject.toml | sha256sum | cut -d' ' -f1)-$FBGEMM
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
pip install -q $TORCH
if [ "$FBGEMM" = "fbgemm-gpu==1.9.0" ] && pip show -q fbgemm-gpu-cpu 2>/dev/null; then
  # a venv first made without CUDA: its shim would stand in for the real kernels, which share the CPU build's files
  pip uninstall -q -y fbgemm-gpu fbgemm-gpu-cpu
fi
pip install -q "$FBGEMM"
[ "$FBGEMM" = "fbgemm-gpu==1.9.0" ] || pip install -q "./$SHIM"
pip install -q --no-deps "$TORCHREC"
pip install -q -e ".[dev]"
echo "$want" > "$stamp"
echo "pinlift: installed into $VENV ($FBGEMM)"

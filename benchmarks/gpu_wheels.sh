#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels the GPU image lacks into .whl/ (git-ignored), for the
# device call to carry (carry: [".whl"]); gpu_check.sh installs them with --no-index --no-deps.
# The image already has torch, timm, pluggy, rich, typer, tabulate, scikit-learn, matplotlib, scipy,
# pyyaml, cython and tqdm; kdbench's only other runtime import is torchdistill (PKT's loss).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip download -q --no-deps --only-binary=:all: -d .whl "torchdistill==1.1.5"
ls -l .whl

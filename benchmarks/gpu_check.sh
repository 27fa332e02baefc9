#!/usr/bin/env bash
# The GPU checks of kdbench in one script (NVIDIA H100/H200, single GPU, < 8 minutes):
#   speed.py     (a) distiller step / vanilla step, (b) cached vs online teacher, (c) host-fed vs
#                resident frames, (d) compiled vs eager, (e) peak memory -- at 299 px, batch 64
#   rotation_cost.py  TOKD's leader update alone per option (riemannian, expm, cayley), d = 256..2048
# JSON goes to $OUT (or ./gpu-check-out). `--tiny` runs the same scripts on CPU at a tiny size (tests).
#
# The GPU image has torch, timm, pluggy, rich, typer, tabulate and scikit-learn but no network: carry
# anything else as wheels in .whl/ (torchdistill, pyyaml, scipy, matplotlib if missing), e.g. here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl torchdistill==1.1.5
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ "${1:-}" = "--tiny" ]; then
  SPEED=(--quick); ROT=(--quick)
else
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/kdbench-site .whl/*.whl
    export PYTHONPATH=/tmp/kdbench-site:${PYTHONPATH:-}
  fi
  # kdbench itself, without its pins (the image's torch is used as is); entry points register the plugins
  $PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
  SPEED=(--device cuda --size 299 --batch 64 --steps 20)
  ROT=(--device cuda --sizes 256 1024 2048 --repeat 10)
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
start=$(date +%s)
$PY benchmarks/speed.py "${SPEED[@]}" --json "$OUT/speed.json" 2>&1 | tee "$OUT/speed.txt"
$PY benchmarks/rotation_cost.py "${ROT[@]}" --json "$OUT/rotation_cost.json" 2>&1 | tee "$OUT/rotation_cost.txt"
echo "gpu_check: done in $(( $(date +%s) - start )) s; JSON in $OUT"

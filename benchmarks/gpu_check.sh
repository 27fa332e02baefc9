#!/usr/bin/env bash
# The GPU checks of kdbench in one script (NVIDIA H100/H200, single GPU, < 8 minutes):
#   tests/test_gpu.py  the GPU path against the CPU path (same numbers within tolerance, placement
#                tiers, pinned/streamed feeder, deferred NaN check); its result goes in the JSON dir
#   speed.py     (a) distiller step / vanilla step (and its arithmetic ceiling), (b) cached vs online
#                teacher (whole and truncated), (c) host-fed vs resident frames, (d) compiled (default
#                and reduce-overhead modes) vs eager, (e) peak memory -- at 299 px, batch 64
#   profile_step.py (128) each student's vanilla step at the gpu128 grid's 128 px, batch 256: is one grid
#                process enough to fill the GPU?
#   rotation_cost.py  TOKD's leader update alone per option (riemannian, expm, cayley), d = 256..2048
#   loss_kernels.py   VID's likelihood and AT's energy: fused reductions vs the elementwise formulas
#   profile_step.py   res18t's step profiled: kernel launches, GPU busy fraction, TOKD's leader step, the
#                compiled step's kernels (why compile and TOKD cost what they cost)
# The stages run in that order of importance, within CHECK_BUDGET seconds (default 450: the 8 minutes less
# the install and a margin). A stage gets only the seconds left (it is stopped at the budget; speed.py has
# saved its JSON after each student by then) and is skipped when under MIN_STAGE s (default 30) are left;
# stages.txt says which.
# JSON goes to $OUT (or ./gpu-check-out). `--tiny` runs the same scripts on CPU at a tiny size (tests).
# To fit a shorter device call: CHECK_BUDGET=300; GPU_TESTS=0 skips the tests;
# SPEED_EXTRA="--students res18t --sections a,d" is appended to speed.py's arguments.
#
# The GPU image has torch, timm, pluggy, rich, typer, tabulate and scikit-learn but no network: carry
# anything else as wheels in .whl/: `benchmarks/gpu_wheels.sh` fetches them (torchdistill), and the
# device call carries them (carry: [".whl"]). Rehearsed on CPU in a venv holding only the image's
# packages: the install lines below, speed.py and a smoke run all worked.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ "${1:-}" = "--tiny" ]; then
  SPEED=(--quick); ROT=(--quick); LOSS=(--batch 1 --repeat 1); PROF=(--quick); budget=${CHECK_BUDGET:-1800}
else
  source benchmarks/gpu_env.sh
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
  SPEED=(--device cuda --size 299 --batch 64 --steps 20)
  ROT=(--device cuda --sizes 256 1024 2048 --repeat 10)
  LOSS=(--device cuda --repeat 10)
  PROF=(--device cuda --students res18t --methods vanilla,tokd --compile-modes default)
  PROF128=(--device cuda --size 128 --batch 256 --students res18t,res34t,xception --methods vanilla)
fi
read -ra EXTRA <<< "${SPEED_EXTRA:-}"
SPEED+=("${EXTRA[@]}")
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
start=$(date +%s)
budget=${budget:-${CHECK_BUDGET:-450}}
status=0  # a failing stage is reported and the next still runs; the exit status says one failed
stage() {  # stage NAME CAP COMMAND...: output to $OUT/NAME.txt, its seconds to $OUT/stages.txt; at most
  local t0 left code  # CAP seconds (0: no cap) and never past the budget
  t0=$(date +%s)
  left=$(( budget - (t0 - start) ))
  [ "$2" -gt 0 ] && [ "$2" -lt "$left" ] && left=$2
  if [ "$left" -lt "${MIN_STAGE:-30}" ]; then
    echo "$1: skipped, ${left} s of the ${budget} s budget left" | tee -a "$OUT/stages.txt"
    status=1
    return
  fi
  set +e
  timeout --signal=TERM --kill-after=10 "$left" "${@:3}" 2>&1 | tee "$OUT/$1.txt"
  code=${PIPESTATUS[0]}
  set -e
  local note=""
  [ "$code" -eq 124 ] && note=", stopped after ${left} s"
  [ "$code" -ne 0 ] && { status=1; note="$note, exit $code"; }
  echo "$1: $(( $(date +%s) - t0 )) s${note}" | tee -a "$OUT/stages.txt"
}
: > "$OUT/stages.txt"
if [ "${1:-}" != "--tiny" ] && [ "${GPU_TESTS:-1}" != 0 ]; then  # a failing check is reported, and the figures are still taken
  stage gpu_tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py
  status=0
fi
stage speed 0 $PY benchmarks/speed.py "${SPEED[@]}" --json "$OUT/speed.json"
if [ -n "${PROF128+x}" ]; then  # the gpu128 grid's steps: does one process keep the GPU busy (gpu_grid.sh's shards)?
  stage profile_step_128 0 $PY benchmarks/profile_step.py "${PROF128[@]}" --json "$OUT/profile_step_128.json"
fi
stage rotation_cost 0 $PY benchmarks/rotation_cost.py "${ROT[@]}" --json "$OUT/rotation_cost.json"
stage loss_kernels 0 $PY benchmarks/loss_kernels.py "${LOSS[@]}" --json "$OUT/loss_kernels.json"
stage profile_step 0 $PY benchmarks/profile_step.py "${PROF[@]}" --json "$OUT/profile_step.json"
echo "gpu_check: done in $(( $(date +%s) - start )) s; JSON in $OUT"
exit $status

#!/usr/bin/env bash
# The synthetic table3 grid at 128 px on one GPU (3 students x 13 runs, one seed), timed.
# Target (GPU issue): <= 10 minutes on one H100/H200. Writes the log, the wall time and the
# rendered Table 3 to $OUT (default ./gpu-grid-out). Installs like gpu_check.sh (benchmarks/gpu_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-grid-out}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
export KDBENCH_HOME=${KDBENCH_HOME:-/tmp/kdbench-gpu128} COLUMNS=160
start=$(date +%s)
$PY -m kdbench.cli grid table3 --profile gpu128 --seeds 0 2>&1 | tee "$OUT/grid.log" || true
wall=$(( $(date +%s) - start ))
echo "{\"grid\": \"table3\", \"profile\": \"gpu128\", \"cells\": 39, \"wall_s\": $wall}" | tee "$OUT/grid_wall.json"
$PY -m kdbench.cli table 3 --profile gpu128 --format markdown > "$OUT/table3.md"
$PY -m kdbench.cli results --format csv > "$OUT/runs.csv"

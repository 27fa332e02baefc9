#!/usr/bin/env bash
# The synthetic table3 grid at 128 px through Ray on one GPU with fractional GPUs, timed: the Ray
# counterpart of gpu_grid.sh's three `--shard` processes (compare the two grid_wall.json). Writes the
# log, the wall time, the runs (with each run's phase times) and the rendered Table 3 to $OUT (default
# ./ray-grid-out). Installs like gpu_check.sh (benchmarks/gpu_env.sh) for the gpu128 profile; Ray itself
# must be importable (pip install 'kdbench[ray]'; its wheel, 79 MB, is larger than a device call carries).
# GRID_GPUS=F (default 0.25) GPUs per run: 1/F runs share the GPU at once (gpu_grid.sh's shards, done by
#   Ray's scheduler; cells wait for their teacher's task). 0 runs on CPUs only.
# GRID_LIMIT=S stops the driver (SIGINT: the tasks in flight are cancelled and keep their last epoch's
#   checkpoint) after S seconds; rerunning resumes the grid when KDBENCH_HOME persists.
# GRID_PROFILE=smoke rehearses the script on CPU; GRID_ARGS="--students res18t" is appended to the grid
#   command. RAY_ADDRESS joins a running Ray instead of starting a local one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-ray-grid-out}
mkdir -p "$OUT"
if [ "${GRID_PROFILE:-gpu128}" = gpu128 ]; then
  source benchmarks/gpu_env.sh
else
  PY=${PYTHON:-python3}
fi
export KDBENCH_HOME=${KDBENCH_HOME:-/tmp/kdbench-ray128} COLUMNS=160 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
limit=${GRID_LIMIT:-0} profile=${GRID_PROFILE:-gpu128} gpus=${GRID_GPUS:-0.25}
read -ra extra <<< "${GRID_ARGS:-}"
grid=($PY -m kdbench.cli grid table3 --profile "$profile" --seeds 0 "${extra[@]}")
cells=$("${grid[@]}" --dry-run | sed -n 's/^\([0-9]*\) cells, .*/\1/p')
start=$(date +%s)
rc=0
if [ "$limit" -gt 0 ]; then
  timeout --signal=INT --kill-after=60 "$limit" "${grid[@]}" --executor ray --gpus-per-run "$gpus" \
    > "$OUT/grid.log" 2>&1 || rc=$?
else
  "${grid[@]}" --executor ray --gpus-per-run "$gpus" > "$OUT/grid.log" 2>&1 || rc=$?
fi
wall=$(( $(date +%s) - start ))
tail -n 3 "$OUT/grid.log"
$PY -m kdbench.cli results --format csv > "$OUT/runs.csv"
done_runs=$(grep -c ",$profile,0,done," "$OUT/runs.csv" || true)
echo "{\"grid\": \"table3\", \"profile\": \"$profile\", \"cells\": $cells, \"done\": $done_runs, \"executor\": \"ray\", \"gpus_per_run\": $gpus, \"exit\": $rc, \"wall_s\": $wall, \"limit_s\": $limit}" | tee "$OUT/grid_wall.json"
$PY -m kdbench.cli table 3 --profile "$profile" --format markdown > "$OUT/table3.md"
exit $rc

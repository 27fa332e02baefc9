#!/usr/bin/env bash
# The synthetic table3 grid at 128 px on one GPU (3 students x 13 runs, one seed), timed.
# Target (GPU issue): <= 10 minutes on one H100/H200. Writes the logs, the wall time, the runs (with
# each run's phase times) and the rendered Table 3 to $OUT (default ./gpu-grid-out). Installs like
# gpu_check.sh (benchmarks/gpu_env.sh) for the gpu128 profile.
# GRID_SHARDS=N (default 3) runs the grid as N `--shard i/N` processes at once on the one GPU: a thin
#   student at 128 px leaves the GPU idle between its kernels, which another process's kernels fill.
#   The shards share the teacher (trained once, under the cache's lock), its feature files and the
#   results store. GRID_SHARDS=1 runs the grid in one process.
# GRID_LIMIT=S stops the grid (SIGTERM: the run in flight is recorded as interrupted) after S
#   seconds, so a device call with a hard time limit still returns the wall time, table and runs;
#   rerunning the script resumes the grid (finished cells are skipped) when KDBENCH_HOME persists.
# GRID_PROFILE=smoke rehearses the script on CPU in seconds per run; GRID_ARGS="--students res18t"
#   is appended to the grid command (a smaller rehearsal).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-grid-out}
mkdir -p "$OUT"
if [ "${GRID_PROFILE:-gpu128}" = gpu128 ]; then
  source benchmarks/gpu_env.sh
else
  PY=${PYTHON:-python3}
fi
export KDBENCH_HOME=${KDBENCH_HOME:-/tmp/kdbench-gpu128} COLUMNS=160 PYTHONUNBUFFERED=1
limit=${GRID_LIMIT:-0} profile=${GRID_PROFILE:-gpu128} shards=${GRID_SHARDS:-3}
read -ra extra <<< "${GRID_ARGS:-}"
grid=($PY -m kdbench.cli grid table3 --profile "$profile" --seeds 0 "${extra[@]}")
cells=$("${grid[@]}" --dry-run | sed -n 's/^\([0-9]*\) cells, .*/\1/p')
start=$(date +%s)
pids=()
for i in $(seq 1 "$shards"); do
  shard=(); [ "$shards" -gt 1 ] && shard=(--shard "$i/$shards")
  if [ "$limit" -gt 0 ]; then
    timeout --signal=TERM --kill-after=30 "$limit" "${grid[@]}" "${shard[@]}" > "$OUT/grid-$i.log" 2>&1 &
  else
    "${grid[@]}" "${shard[@]}" > "$OUT/grid-$i.log" 2>&1 &
  fi
  pids+=($!)
done
rc=0
for i in "${!pids[@]}"; do
  code=0; wait "${pids[$i]}" || code=$?
  [ "$code" -ne 0 ] && rc=$code
  echo "shard $((i + 1))/$shards: exit $code at $(( $(date +%s) - start )) s"
done
wall=$(( $(date +%s) - start ))
tail -n 3 "$OUT"/grid-*.log
$PY -m kdbench.cli results --format csv > "$OUT/runs.csv"
done_runs=$(grep -c ",$profile,0,done," "$OUT/runs.csv" || true)
echo "{\"grid\": \"table3\", \"profile\": \"$profile\", \"cells\": $cells, \"done\": $done_runs, \"shards\": $shards, \"exit\": $rc, \"wall_s\": $wall, \"limit_s\": $limit}" | tee "$OUT/grid_wall.json"
$PY -m kdbench.cli table 3 --profile "$profile" --format markdown > "$OUT/table3.md"
exit $rc

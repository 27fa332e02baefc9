#!/usr/bin/env bash
# Extended Table 3 (every built-in distiller in each of its modes) on the embedded synthetic data,
# cpu profile, res18t, seeds 0,1,2, as two shard processes at once (one per core, one intra-op
# thread each, as the table3 reference run). Starts from the table3 reference run's store (cells
# with the same configuration have the same hash and are reused, not rerun); resumable:
# re-running finishes missing cells only. Seed 0 of every cell first, so a run cut short has them.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/table3x-synthetic-cpu
export KDBENCH_HOME=${KDBENCH_HOME:-.kdbench-ref} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$KDBENCH_HOME"
[ -f "$KDBENCH_HOME/results.sqlite" ] || cp results/table3-synthetic-cpu/results.sqlite "$KDBENCH_HOME/"
for seeds in 0 0,1,2; do
  for i in 1 2; do
    .venv/bin/kdbench grid table3x --profile cpu --students res18t --seeds $seeds --shard "$i/2" &
  done
  wait
done
for fmt in markdown latex csv; do
  ext=$([ $fmt = markdown ] && echo md || ([ $fmt = latex ] && echo tex || echo csv))
  .venv/bin/kdbench table 3 --spec table3x --profile cpu --students res18t --format $fmt > "$out/table3x.$ext"
done
.venv/bin/kdbench grid table3x --profile cpu --students res18t --seeds 0,1,2 --dry-run > "$out/cells.txt"

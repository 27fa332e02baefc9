#!/usr/bin/env bash
# The resolvers grid (the Both mode of every feature and relational distiller x none, pcgrad,
# cagrad) on the embedded synthetic data, cpu profile, res18t, seeds 0,1,2; two shard processes
# at once, one intra-op thread each. Shares the store and the teacher of the table3x reference
# run (its Both cells are this grid's `none` cells: same configuration, same hash); resumable.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/resolvers-synthetic-cpu
export KDBENCH_HOME=${KDBENCH_HOME:-.kdbench-ref} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$KDBENCH_HOME"
[ -f "$KDBENCH_HOME/results.sqlite" ] || cp results/table3-synthetic-cpu/results.sqlite "$KDBENCH_HOME/"
for seeds in 0 0,1,2; do
  for i in 1 2; do
    .venv/bin/kdbench grid resolvers --profile cpu --seeds $seeds --shard "$i/2" &
  done
  wait
done
for fmt in markdown latex csv; do
  ext=$([ $fmt = markdown ] && echo md || ([ $fmt = latex ] && echo tex || echo csv))
  .venv/bin/kdbench table resolvers --profile cpu --format $fmt > "$out/resolvers.$ext"
done
.venv/bin/kdbench grid resolvers --profile cpu --seeds 0,1,2 --dry-run > "$out/cells.txt"

#!/usr/bin/env bash
# shards.sh GRID OPTIONS...: `kdbench grid GRID OPTIONS` for seed 0 of every cell, then for seeds 0,1,2,
# each time as two shard processes at once (one per core, one intra-op thread each: two OpenMP
# threads per process on a 2-core machine are far slower). The reference runs' run.sh share it, and
# a store and teacher: $KDBENCH_HOME (default .kdbench-ref), started from the table3 reference
# run's store (cells of the same configuration have the same hash and are reused). Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
export KDBENCH_HOME=${KDBENCH_HOME:-.kdbench-ref} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$KDBENCH_HOME"
[ -f "$KDBENCH_HOME/results.sqlite" ] || cp results/table3-synthetic-cpu/results.sqlite "$KDBENCH_HOME/"
for seeds in 0 0,1,2; do
  for i in 1 2; do
    .venv/bin/kdbench grid "$@" --seeds "$seeds" --shard "$i/2" &
  done
  wait
done

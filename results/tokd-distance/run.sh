#!/usr/bin/env bash
# TOKD's two distances under Fig. 3's alpha sweep (spec.toml) on the embedded synthetic data,
# cpu profile, res18t, seeds 0,1,2; two shard processes at once, one intra-op thread each.
# Shares the store and the teacher of the other reference runs; resumable.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/tokd-distance
export KDBENCH_HOME=${KDBENCH_HOME:-.kdbench-ref} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$KDBENCH_HOME"
[ -f "$KDBENCH_HOME/results.sqlite" ] || cp results/table3-synthetic-cpu/results.sqlite "$KDBENCH_HOME/"
for seeds in 0 0,1,2; do
  for i in 1 2; do
    .venv/bin/kdbench grid $out/spec.toml --profile cpu --seeds $seeds --shard "$i/2" &
  done
  wait
done
for fmt in markdown csv; do
  ext=$([ $fmt = markdown ] && echo md || echo csv)
  .venv/bin/kdbench table cells --spec $out/spec.toml --profile cpu --format $fmt > "$out/sweep.$ext"
done
.venv/bin/kdbench table balance --profile cpu --format markdown > "$out/balance.md"
.venv/bin/kdbench grid $out/spec.toml --profile cpu --seeds 0,1,2 --dry-run > "$out/cells.txt"

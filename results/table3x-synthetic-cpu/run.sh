#!/usr/bin/env bash
# Extended Table 3 (every built-in distiller in each of its modes) on the embedded synthetic data,
# cpu profile, res18t, seeds 0,1,2 (results/shards.sh: two shards, seed 0 first, resumable).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/table3x-synthetic-cpu
export KDBENCH_HOME=${KDBENCH_HOME:-.kdbench-ref}
results/shards.sh table3x --profile cpu --students res18t
for fmt in markdown latex csv; do
  ext=$([ $fmt = markdown ] && echo md || ([ $fmt = latex ] && echo tex || echo csv))
  .venv/bin/kdbench table 3 --spec table3x --profile cpu --students res18t --format $fmt > "$out/table3x.$ext"
done
.venv/bin/kdbench table 3 --spec table3x --profile cpu --students res18t --metric auc --format markdown > "$out/table3x-auc.md"
.venv/bin/kdbench table balance --profile cpu --format markdown > "$out/balance.md"
.venv/bin/kdbench grid table3x --profile cpu --students res18t --seeds 0,1,2 --dry-run > "$out/cells.txt"
cp "$KDBENCH_HOME/results.sqlite" "$out/results.sqlite"   # re-render: kdbench table 3 ... --workdir $out

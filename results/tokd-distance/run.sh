#!/usr/bin/env bash
# TOKD's two distances under Fig. 3's alpha sweep (spec.toml) on the embedded synthetic data,
# cpu profile, res18t, seeds 0,1,2 (results/shards.sh: two shards, seed 0 first, resumable).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/tokd-distance
export KDBENCH_HOME=${KDBENCH_HOME:-.kdbench-ref}
results/shards.sh $out/spec.toml --profile cpu
for fmt in markdown csv; do
  ext=$([ $fmt = markdown ] && echo md || echo csv)
  .venv/bin/kdbench table cells --spec $out/spec.toml --profile cpu --format $fmt > "$out/sweep.$ext"
done
.venv/bin/kdbench table balance --profile cpu --format markdown > "$out/balance.md"
.venv/bin/kdbench grid $out/spec.toml --profile cpu --seeds 0,1,2 --dry-run > "$out/cells.txt"
cp "$KDBENCH_HOME/results.sqlite" "$out/results.sqlite"   # re-render: kdbench table cells ... --workdir $out

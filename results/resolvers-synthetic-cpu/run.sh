#!/usr/bin/env bash
# The resolvers grid (the Both mode of every feature and relational distiller x none, pcgrad,
# cagrad) on the embedded synthetic data, cpu profile, res18t, seeds 0,1,2 (results/shards.sh).
# Its `none` cells are table3x's Both cells: same configuration, same hash, one run.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/resolvers-synthetic-cpu
export KDBENCH_HOME=${KDBENCH_HOME:-.kdbench-ref}
results/shards.sh resolvers --profile cpu
for fmt in markdown latex csv; do
  ext=$([ $fmt = markdown ] && echo md || ([ $fmt = latex ] && echo tex || echo csv))
  .venv/bin/kdbench table resolvers --profile cpu --format $fmt > "$out/resolvers.$ext"
done
.venv/bin/kdbench table resolvers --profile cpu --metric cos --format markdown > "$out/resolvers-cos.md"
.venv/bin/kdbench grid resolvers --profile cpu --seeds 0,1,2 --dry-run > "$out/cells.txt"
cp "$KDBENCH_HOME/results.sqlite" "$out/results.sqlite"   # re-render: kdbench table resolvers ... --workdir $out

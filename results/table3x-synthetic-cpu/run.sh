#!/usr/bin/env bash
# Extended Table 3 (every built-in distiller in each of its modes) on the embedded synthetic data,
# cpu profile, res18t, seeds 0,1,2. Starts from the table3 reference run's store (its 13 cells are
# the same configurations, same hashes, so they are reused, not rerun); resumable: re-running
# finishes missing cells only. One intra-op thread per process, as the table3 reference run.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/table3x-synthetic-cpu
export KDBENCH_HOME=${KDBENCH_HOME:-.kdbench-t3x} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$KDBENCH_HOME"
[ -f "$KDBENCH_HOME/results.sqlite" ] || cp results/table3-synthetic-cpu/results.sqlite "$KDBENCH_HOME/"
.venv/bin/kdbench grid table3x --profile cpu --students res18t --seeds 0 --workdir "$KDBENCH_HOME"      # one seed of every cell first
.venv/bin/kdbench grid table3x --profile cpu --students res18t --seeds 0,1,2 --workdir "$KDBENCH_HOME"
for fmt in markdown latex csv; do
  ext=$([ $fmt = markdown ] && echo md || ([ $fmt = latex ] && echo tex || echo csv))
  .venv/bin/kdbench table 3 --spec table3x --profile cpu --students res18t --format $fmt --workdir "$KDBENCH_HOME" > "$out/table3x.$ext"
done
cp "$KDBENCH_HOME/results.sqlite" "$out/results.sqlite"

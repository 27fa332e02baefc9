# Sourced by gpu_check.sh and gpu_grid.sh on the GPU machine: the image's torch as is, the
# wheels carried in .whl/ (benchmarks/gpu_wheels.sh) and kdbench itself without its pins
# (entry points register the built-in plugins).
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/kdbench-site .whl/*.whl
  export PYTHONPATH=/tmp/kdbench-site:${PYTHONPATH:-}
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

"""The benchmark scripts run end to end at a tiny size on CPU (the GPU figures need a GPU)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": str(Path(os.sys.executable))}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    speed = json.loads((tmp_path / "speed.json").read_text())
    ratios = {r["method"]: r["ratio_to_vanilla"] for r in speed["results"]["a_distillers"]}
    assert set(ratios) == {"at", "pkt", "sp", "fitnet", "vid", "tokd"} and all(r > 0 for r in ratios.values())
    assert speed["results"]["b_cached_vs_online"][0]["speedup"] > 0
    assert speed["results"]["c_host_vs_resident"][0]["ratio"] > 0
    assert json.loads((tmp_path / "rotation_cost.json").read_text())
    profiled = json.loads((tmp_path / "profile_step.json").read_text())["rows"]
    assert [r["method"] for r in profiled] == ["vanilla", "tokd"] and all(r["aten_calls"] > 0 for r in profiled)
    assert profiled[1]["leader_cpu_ms"] > 0 and profiled[0]["leader_cpu_ms"] is None  # TOKD's leader step, named
    kernels = json.loads((tmp_path / "loss_kernels.json").read_text())["rows"]
    assert {r["loss"] for r in kernels} == {"vid_nll", "at_energy"} and all(r["speedup"] > 0 for r in kernels)
    assert "ratio_to_vanilla" in proc.stdout and "gpu_check: done" in proc.stdout


@pytest.mark.slow
def test_gpu_check_keeps_to_its_budget(tmp_path):
    """A stage that would outrun the budget is stopped at it, the stages after it are skipped, and
    stages.txt and the exit status say so (the issue's 8 minutes hold whatever a stage does)."""
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nexec sleep 120\n")
    slow.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(slow), "CHECK_BUDGET": "4",
           "MIN_STAGE": "2"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    stages = (tmp_path / "out" / "stages.txt").read_text().splitlines()
    assert stages[0].startswith("speed: ") and stages[0].endswith("stopped after 4 s, exit 124"), stages
    assert [line.split(":")[0] for line in stages[1:]] == ["rotation_cost", "loss_kernels", "profile_step"]
    assert all("skipped" in line for line in stages[1:]), stages


@pytest.mark.slow
def test_checkpoint_cost_runs(tmp_path):
    proc = subprocess.run([os.sys.executable, str(ROOT / "benchmarks" / "checkpoint_cost.py"), "--student", "res18t",
                           "--repeat", "1", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BackgroundSaver.save returns after" in proc.stdout and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_gpu_grid_rehearsal_in_two_shards(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": os.sys.executable, "KDBENCH_HOME": str(tmp_path),
           "GRID_PROFILE": "smoke", "GRID_SHARDS": "2", "GRID_ARGS": "--students res18t --methods vanilla,at",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_grid.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wall = json.loads((tmp_path / "out" / "grid_wall.json").read_text())
    assert wall["cells"] == 3 and wall["done"] == 3 and wall["shards"] == 2 and wall["exit"] == 0
    assert len(list((tmp_path / "teachers").iterdir())) == 1  # the shards shared one teacher
    runs = (tmp_path / "out" / "runs.csv").read_text()
    assert "time_train" in runs.splitlines()[0]
    assert "Res18-T" in (tmp_path / "out" / "table3.md").read_text()

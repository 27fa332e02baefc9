"""torchrun with 2 CPU processes (gloo) follows the same optimisation as 1 process."""
import os
import subprocess
import sys

from kdbench.store import ResultsStore

ARGS = ["run", "--method", "fitnet", "--mode", "both", "--profile", "smoke", "--epochs", "3",
        "--data", "difficulty=0.05", "--no-progress"]


def launch(home, nproc):
    env = {**os.environ, "KDBENCH_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "kdbench.cli", *ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (rec,) = [r for r in ResultsStore(home / "results.sqlite").query() if r.method == "fitnet"]
    return rec


def test_two_processes_match_one(tmp_path):
    one, two = launch(tmp_path / "one", 1), launch(tmp_path / "two", 2)
    assert one.hash == two.hash and two.status == "done"
    assert two.history["runtime"]["world"] == 2 and one.history["runtime"]["world"] == 1
    for a, b in zip(one.history["epochs"], two.history["epochs"]):
        # same global batches and averaged gradients; only BatchNorm batch statistics are per process on CPU
        assert abs(a["loss_ce"] - b["loss_ce"]) <= 0.1 * a["loss_ce"] + 0.02
    assert abs(one.metrics["test"]["acc"] - two.metrics["test"]["acc"]) <= 5.0
    for rec in (one, two):  # both optimise: the CE falls over the epochs
        assert rec.history["epochs"][-1]["loss_ce"] < rec.history["epochs"][0]["loss_ce"]

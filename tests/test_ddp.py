"""torchrun with 2 CPU processes (gloo) follows the same optimisation as 1 process."""
import os
import subprocess
import sys

import pytest

from kdbench.store import ResultsStore

ARGS = ["run", "--method", "fitnet", "--mode", "both", "--profile", "smoke", "--epochs", "3",
        "--data", "difficulty=0.05", "--no-progress"]


def launch(home, nproc):
    env = {**os.environ, "KDBENCH_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "kdbench.cli", *ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (rec,) = [r for r in ResultsStore(home / "results.sqlite").query() if r.method == "fitnet"]
    return rec


@pytest.mark.slow
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


RANKS_AGREE = """
import torch, torch.distributed as dist
from kdbench.rotation import Rotation, taylor_radius
dist.init_process_group("gloo")
rank = dist.get_rank()
g = torch.Generator().manual_seed(rank)
rows = 3 + rank  # 3 and 4 rows: a global batch of 7
lr = taylor_radius(4) / (1.01 * 3.6)  # a bound from a rank's own rows would pick degree 4 on one, 8 on the other
rot = Rotation((4, 2, 2), 16)
if LOCAL:
    rot._step_bound = lambda lr, rows, loss, global_rows=None: lr * 1.01 * rows
for _ in range(5):
    gr = torch.randn(rows, 16, generator=g)
    rot.leader_step([gr, -gr + 0.5 * torch.randn(rows, 16, generator=g)], lr, global_rows=7)
Rs = [torch.empty_like(rot.R) for _ in range(2)]
dist.all_gather(Rs, rot.R)
if rank == 0:  # both ranks gathered the same pair
    print("ranks agree" if torch.equal(*Rs) else "ranks differ", int(rot.leader_steps))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ranks_with_unequal_shares_keep_identical_rotations(tmp_path):
    """Ranks holding 3 and 4 rows bound the averaged leader step from the global batch, so both pick
    the same exponential and keep bit-identical rotations; bounds from their own rows would not."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for local, expected in ((False, "ranks agree 5"), (True, "ranks differ 5")):
        script = tmp_path / f"agree_{local}.py"
        script.write_text(f"LOCAL = {local}\n" + RANKS_AGREE)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert expected in proc.stdout, proc.stdout

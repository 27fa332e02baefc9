"""The grid on a real, local Ray (no cluster, nothing downloaded), through benchmarks/ray_grid.sh and the
CLI: its records equal a local grid's, hash for hash and metric for metric, and a worker killed mid-run
is retried and resumes from its checkpoint. Skipped when Ray is not installed (``pip install 'kdbench[ray]'``).

One test, one Ray start: the CLI starts a local Ray on this machine's CPUs
and shuts it down at the end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdbench.cli import app
from kdbench.data.registry import DatasetCache
from kdbench.grid import expand, run_grid
from kdbench.grid_ray import RaySettings, run_grid_ray
from kdbench.store import ResultsStore
from kdbench.train.runner import Workspace, run
from kdbench.train.runtime import make_runtime
from kdbench.train.teacher_cache import TeacherCache

ROOT = Path(__file__).resolve().parents[1]

DATA = {"n_train": 64, "n_val": 32, "n_test": 32}  # the smoke profile on a quarter of its frames

# A logger plugin, on the Python path of the grid's processes only: it notes every finished epoch (run, epoch,
# process) and, while the flag file exists, kills its own process once, right after the first
# epoch's checkpoint is on disk: a worker lost mid-run, as a node failure would lose it.
CRASH_PLUGIN = '''
import os, time
from pathlib import Path
import kdbench

_run = {}


@kdbench.hookimpl
def kdbench_on_event(event, run, payload):
    if event == "run_start":
        _run["hash"] = payload["hash"]
    if event != "epoch_end":
        return
    with open(os.environ["KDBENCH_EPOCH_LOG"], "a") as fh:
        fh.write(f"{_run['hash']} {payload['epoch']} {os.getpid()}\\n")
    try:
        os.unlink(os.environ["KDBENCH_CRASH_ONCE"])  # only one worker wins the flag
    except FileNotFoundError:
        return
    state = Path(os.environ["KDBENCH_CRASH_HOME"]) / "runs" / _run["hash"] / "state.pt"
    while not state.exists():  # the checkpoint is written on a background thread
        time.sleep(0.05)
    os._exit(1)
'''


def crash_plugin_site(path: Path) -> Path:
    """CRASH_PLUGIN as an installed distribution (entry point in group ``kdbench``) under ``path``."""
    info = path / "kdbench_crash_once-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdbench-crash-once\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[kdbench]\ncrash_once = kdbench_crash_once\n")
    (path / "kdbench_crash_once.py").write_text(CRASH_PLUGIN)
    return path


def comparable(rec):
    """A record without what differs between two executors or attempts (times, the teacher's
    training seconds)."""
    history = {**rec.history}
    history.pop("runtime")
    history["epochs"] = [{k: v for k, v in e.items() if not k.endswith("time") and k != "img_per_s"}
                         for e in history["epochs"]]
    metrics = {**rec.metrics, "teacher": {k: v for k, v in rec.metrics["teacher"].items() if k != "train_s"}}
    return (rec.hash, rec.cell, rec.status, rec.spec, rec.teacher, rec.config, metrics, history, rec.device)


def local_grid(cells, root: Path):
    """The same cells with the local executor, in this process, on one thread (a Ray task's
    threads are its whole CPUs: --cpus-per-run 1)."""
    ws = Workspace(root)
    store = ResultsStore(ws.store_path)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rt, datasets, teachers = make_runtime("cpu"), DatasetCache(), TeacherCache()
        report = run_grid(cells, lambda cell: run(cell.cfg, ws, store, rt, spec=cell.spec, log=lambda m: None,
                                                  progress=False, datasets=datasets, teachers=teachers),
                          lambda cell: False, log=lambda m: None)
    finally:
        torch.set_num_threads(old)
    assert len(report.ran) == len(cells)
    return store


@pytest.mark.parametrize("args,needle", [
    (["--gpus-per-run", "0.5"], "--gpus-per-run needs --executor ray"),
    (["--executor", "dask"], "unknown executor 'dask'; choose one of: local, ray"),
    (["--executor", "ray", "--gpus-per-run", "2"], "--gpus-per-run must be between 0 and 1"),
    (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be positive, got 0"),
    (["--executor", "ray", "--device", "cpu"], "with --executor ray the device follows --gpus-per-run"),
])
def test_bad_executor_options_are_one_line_exit_2(tmp_path, args, needle):
    res = CliRunner().invoke(app, ["grid", "table3", "--profile", "smoke", "--workdir", str(tmp_path), "--dry-run",
                                   *args], env={"COLUMNS": "400"})  # checked before the dry run lists the cells
    assert res.exit_code == 2, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_without_ray_the_executor_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    res = CliRunner().invoke(app, ["grid", "table3", "--profile", "smoke", "--workdir", str(tmp_path), "--dry-run",
                                   "--executor", "ray"], env={"COLUMNS": "400"})
    assert res.exit_code == 2, res.output
    assert res.output.strip() == "error: --executor ray needs Ray, which is not installed: pip install 'kdbench[ray]'"


@pytest.mark.slow
def test_ray_grid_equals_the_local_grid_and_resumes_a_killed_worker(tmp_path):
    pytest.importorskip("ray")
    home = tmp_path / "ray-home"
    site = crash_plugin_site(tmp_path / "site")
    (tmp_path / "crash-once").write_text("")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "KDBENCH_HOME": str(home),
           "GRID_PROFILE": "smoke", "GRID_GPUS": "0", "OMP_NUM_THREADS": "1",
           "GRID_ARGS": "--students res18t --methods at " + " ".join(f"--data {k}={v}" for k, v in DATA.items()),
           "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p),
           "KDBENCH_EPOCH_LOG": str(tmp_path / "epochs.log"), "KDBENCH_CRASH_ONCE": str(tmp_path / "crash-once"),
           "KDBENCH_CRASH_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "ray_grid.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    log = (tmp_path / "out" / "grid.log").read_text() if (tmp_path / "out" / "grid.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + log[-3000:]
    wall = json.loads((tmp_path / "out" / "grid_wall.json").read_text())
    assert wall == {**wall, "cells": 2, "done": 2, "executor": "ray", "gpus_per_run": 0, "exit": 0}
    assert "2 ran, 0 already done, 0 failed" in log and "Res18-T" in (tmp_path / "out" / "table3.md").read_text()
    assert not (tmp_path / "crash-once").exists()  # a worker was killed mid-run ...

    # ... and its run went on from the checkpoint in another process: epoch 0 once, then epoch 1
    epochs = [line.split() for line in (tmp_path / "epochs.log").read_text().splitlines()]
    runs = {h: [(int(e), pid) for r, e, pid in epochs if r == h] for h in {r for r, _, _ in epochs}}
    cells = expand("table3", profile="smoke", students=["res18t"], methods=["at"], data=DATA)
    assert sorted(runs) == sorted(c.cfg.hash for c in cells)
    assert all([e for e, _ in seen] == [0, 1] for seen in runs.values()), runs
    assert sum(seen[0][1] != seen[1][1] for seen in runs.values()) == 1, runs
    assert len(list((home / "teachers").iterdir())) == 1  # one teacher task for both cells
    assert not list((home / "runs").glob("*/state.pt"))  # finished runs keep no resume state

    store = ResultsStore(home / "results.sqlite")
    reference = local_grid(cells, tmp_path / "local")
    assert {r.hash: comparable(r) for r in store.query()} == {r.hash: comparable(r) for r in reference.query()}

    # the driver started again: every cell is done, nothing is submitted (Ray is not even started)
    again = run_grid_ray(cells, Workspace(home), store, RaySettings(cpus_per_run=1), log=lambda m: None)
    assert len(again.done_before) == 2 and not again.ran and not again.failed

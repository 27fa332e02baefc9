"""A run killed with SIGKILL resumes from its last finished epoch and ends with the same numbers."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdbench.io import BackgroundSaver, safe_load
from kdbench.store import ResultsStore

ARGS = ["run", "--method", "fitnet", "--mode", "both", "--student", "res18t", "--profile", "smoke", "--epochs", "4"]


def start(home):
    env = {**os.environ, "KDBENCH_HOME": str(home), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "kdbench.cli", *ARGS], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def only_record(home):
    (rec,) = [r for r in ResultsStore(home / "results.sqlite").query() if r.method == "fitnet"]
    return rec


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    straight = start(tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    killed_home = tmp_path / "killed"
    proc = start(killed_home)
    deadline = time.time() + 300
    while not list((killed_home / "runs").glob("*/state.pt")) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert only_record(killed_home).status == "interrupted"  # killed: its process is gone (stored "running")
    resumed = start(killed_home)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    a, b = only_record(tmp_path / "straight"), only_record(killed_home)
    assert b.status == "done"
    assert a.metrics["test"] == b.metrics["test"] and a.metrics["best_epoch"] == b.metrics["best_epoch"]
    assert [e["loss_ce"] for e in a.history["epochs"]] == [e["loss_ce"] for e in b.history["epochs"]]


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_records_interruption(tmp_path):
    proc = start(tmp_path)
    deadline = time.time() + 300
    while not list((tmp_path / "runs").glob("*/state.pt")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert "re-run the same command to resume" in proc.stderr.read()
    assert only_record(tmp_path).status == "interrupted"


@pytest.mark.slow
def test_grid_killed_at_several_points_finishes_with_the_same_results(tmp_path):
    spec = tmp_path / "g.toml"
    spec.write_text('students = ["res18t"]\n[[group]]\nmethods = ["vanilla", "fitnet"]\nmodes = ["rgb"]\n')

    def grid(home):
        env = {**os.environ, "KDBENCH_HOME": str(home), "COLUMNS": "200"}
        return subprocess.Popen([sys.executable, "-m", "kdbench.cli", "grid", str(spec), "--profile", "smoke"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    assert grid(tmp_path / "straight").wait(timeout=600) == 0
    home = tmp_path / "killed"
    for _ in range(2):  # kill right after an epoch checkpoint is written, twice
        started = time.time()
        proc = grid(home)
        deadline = started + 300
        while time.time() < deadline and not any(
                p.stat().st_mtime > started for p in (home / "runs").glob("*/state.pt")):
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    final = grid(home)
    assert final.wait(timeout=600) == 0, final.stderr.read()
    straight = {r.hash: r.metrics["test"] for r in ResultsStore(tmp_path / "straight" / "results.sqlite").query()}
    killed = {r.hash: r.metrics["test"] for r in ResultsStore(home / "results.sqlite").query()}
    assert straight == killed and len(killed) == 2


def test_background_saver_writes_the_state_as_it_was_at_save_time(tmp_path):
    """Training goes on mutating the weights while the checkpoint is written; the file must hold
    the values of the moment ``save`` was called, containers included."""
    w = torch.zeros(1000)
    history = {"epochs": [1.0]}
    with BackgroundSaver() as saver:
        saver.save({"w": w, "history": history}, tmp_path / "a.pt")
        w.add_(1.0)
        history["epochs"].append(2.0)
        saver.save({"w": w, "history": history}, tmp_path / "b.pt")  # waits for the first write
        w.add_(1.0)
    a, b = safe_load(tmp_path / "a.pt"), safe_load(tmp_path / "b.pt")
    assert torch.equal(a["w"], torch.zeros(1000)) and a["history"] == {"epochs": [1.0]}
    assert torch.equal(b["w"], torch.ones(1000)) and b["history"] == {"epochs": [1.0, 2.0]}
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary file left behind


def test_background_saver_reports_a_failed_write(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    saver = BackgroundSaver()
    saver.save({"w": torch.zeros(3)}, tmp_path / "file" / "state.pt")
    with pytest.raises(OSError):
        saver.wait()
    saver.wait()  # reported once; the saver is usable again
    saver.save({"w": torch.zeros(3)}, tmp_path / "ok.pt")
    saver.wait()
    assert (tmp_path / "ok.pt").is_file()

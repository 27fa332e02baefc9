"""A run killed with SIGKILL resumes from its last finished epoch and ends with the same numbers."""
import os
import signal
import subprocess
import sys
import time

from kdbench.store import ResultsStore

ARGS = ["run", "--method", "fitnet", "--mode", "both", "--student", "res18t", "--profile", "smoke", "--epochs", "4"]


def start(home):
    env = {**os.environ, "KDBENCH_HOME": str(home), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "kdbench.cli", *ARGS], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def only_record(home):
    (rec,) = [r for r in ResultsStore(home / "results.sqlite").query() if r.method == "fitnet"]
    return rec


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
    assert only_record(killed_home).status == "running"  # killed: no clean exit was possible
    resumed = start(killed_home)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    a, b = only_record(tmp_path / "straight"), only_record(killed_home)
    assert b.status == "done"
    assert a.metrics["test"] == b.metrics["test"] and a.metrics["best_epoch"] == b.metrics["best_epoch"]
    assert [e["loss_ce"] for e in a.history["epochs"]] == [e["loss_ce"] for e in b.history["epochs"]]


def test_sigterm_stops_cleanly_and_records_interruption(tmp_path):
    proc = start(tmp_path)
    deadline = time.time() + 300
    while not list((tmp_path / "runs").glob("*/state.pt")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert "re-run the same command to resume" in proc.stderr.read()
    assert only_record(tmp_path).status == "interrupted"

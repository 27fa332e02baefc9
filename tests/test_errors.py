"""Bad inputs end in one line and a non-zero exit, and nothing already computed is lost."""
import os
import sqlite3
import subprocess
import sys

from test_plugins import install_fake

from kdbench.store import ResultsStore

NAN_PLUGIN = '''
import torch
from kdbench import Distiller, hookimpl

class NaNLoss(Distiller):
    name = "nanloss"
    modes = ("rgb",)
    defaults = {}
    def student_taps(self):
        return ["pooled"]
    def forward(self, student, teacher, labels):
        return {"kd_rgb": student["pooled"].sum() * float("nan")}

@hookimpl
def kdbench_distillers():
    return [NaNLoss]
'''


def kdbench(*args, home, extra_env=None):
    env = {**os.environ, "KDBENCH_HOME": str(home), "COLUMNS": "200", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "kdbench.cli", *args], capture_output=True, text=True, env=env)


def one_line_error(proc, needle, code):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert lines and needle in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_config_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 2\n")
    one_line_error(kdbench("run", "--config", str(bad), home=tmp_path), "malformed config file", 2)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nepochz = 2\n")
    one_line_error(kdbench("run", "--config", str(unknown), home=tmp_path), "unknown train setting epochz", 2)


def test_missing_teacher_weights(tmp_path):
    proc = kdbench("run", "--profile", "smoke", "--teacher-weights", str(tmp_path / "none.pth"), home=tmp_path)
    one_line_error(proc, "teacher weights file not found", 2)


def test_rotation_dim_larger_than_latent(tmp_path):
    proc = kdbench("run", "--method", "tokd", "--profile", "smoke", "--rotation-dim", "999999", home=tmp_path)
    one_line_error(proc, "exceeds the student latent size D=C*H*W=256*2*2=1024", 2)


def test_nan_loss_fails_the_run_and_the_grid_goes_on(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install_fake(site, "kdb-nanloss", "kdbtest_nanloss", NAN_PLUGIN)
    env = {"PYTHONPATH": str(site)}
    run = kdbench("run", "--method", "nanloss", "--profile", "smoke", home=tmp_path, extra_env=env)
    one_line_error(run, "non-finite loss at epoch 0 step 0: term 'kd_rgb'", 1)
    spec = tmp_path / "g.toml"
    spec.write_text('students = ["res18t"]\n[[group]]\nmethods = ["nanloss", "vanilla"]\n')
    grid = kdbench("grid", str(spec), "--profile", "smoke", home=tmp_path, extra_env=env)
    assert grid.returncode == 1 and "1 ran, 0 already done, 1 failed" in grid.stdout
    status = {r.method: r.status for r in ResultsStore(tmp_path / "results.sqlite").query()}
    assert status == {"nanloss": "failed", "vanilla": "done"}
    (failed,) = [r for r in ResultsStore(tmp_path / "results.sqlite").query() if r.method == "nanloss"]
    assert "term 'kd_rgb'" in failed.error


def test_locked_results_store(tmp_path):
    ResultsStore(tmp_path / "results.sqlite")
    holder = sqlite3.connect(tmp_path / "results.sqlite")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = kdbench("results", "--delete", "0123", home=tmp_path, extra_env={"KDBENCH_DB_TIMEOUT": "0.5"})
    finally:
        holder.rollback()
        holder.close()
    one_line_error(proc, "database is locked", 1)

"""The command line as a user runs it (subprocesses, real exit codes)."""
import csv
import io
import os
import subprocess
import sys

import pytest


def kdbench(*args, home):
    env = {**os.environ, "KDBENCH_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "kdbench.cli", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args,needle", [
    (["--method", "nosuch"], "unknown method 'nosuch'; choose one of: "),
    (["--student", "nosuch"], "unknown student 'nosuch'; choose one of: res18t, res34t, xception"),
    (["--method", "vanilla", "--mode", "both"], "has no mode 'both'; choose one of: rgb"),
    (["--profile", "nosuch"], "unknown profile 'nosuch'; choose one of: smoke, cpu, paper"),
    (["--method", "fitnet", "--hp", "nosuch=1"], "unknown hyper-parameter nosuch for 'fitnet'; valid: "),
    (["--dataset", "nosuch"], "unknown dataset 'nosuch'; choose one of: "),
    (["--method", "fitnet", "--hp", "beta=abc"], "hyper-parameter beta='abc' is not a valid float"),
    (["--data-root", "/no/such/dir"], "dataset root not found: /no/such/dir"),
])
def test_bad_choices_are_one_line_exit_2(tmp_path, args, needle):
    proc = kdbench("run", *args, home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_then_cached_teacher_then_results(tmp_path):
    first = kdbench("run", "--method", "fitnet", "--mode", "both", "--student", "res18t", "--profile", "smoke",
                    home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "teacher: training" in first.stderr
    assert "test ACC %" in first.stdout and "test AUC %" in first.stdout and "test EER %" in first.stdout
    second = kdbench("run", "--method", "vanilla", "--student", "res18t", "--profile", "smoke", home=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "teacher: cached" in second.stderr and "teacher: training" not in second.stderr
    teacher = kdbench("teacher", "train", "--profile", "smoke", home=tmp_path)
    assert teacher.returncode == 0 and '"cached": true' in teacher.stdout, teacher.stderr
    listing = kdbench("results", "--format", "csv", home=tmp_path)
    assert listing.returncode == 0
    rows = listing.stdout.strip().splitlines()
    assert len(rows) == 3 and "fitnet,both,res18t" in listing.stdout and "vanilla,rgb,res18t" in listing.stdout
    runs = list(csv.DictReader(io.StringIO(listing.stdout)))
    fitnet = next(r for r in runs if r["method"] == "fitnet")
    phases = {k: float(fitnet[f"time_{k}"]) for k in ("setup", "data", "teacher", "features", "train", "save")}
    assert phases["teacher"] > 0 and phases["train"] > 0  # this run trained the teacher
    assert sum(phases.values()) <= float(fitnet["wall_time"]) + 0.1
    assert "done in" in first.stderr and "train " in first.stderr

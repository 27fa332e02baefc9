"""The example third-party package, installed with pip, used through the CLI only."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT / "examples" / "kdbench-nst")], check=True)
    return target


def kdbench(*args, site, home):
    env = {**os.environ, "PYTHONPATH": str(site), "KDBENCH_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "kdbench.cli", *args], capture_output=True, text=True, env=env)


def test_installed_plugin_is_listed_checked_run_and_gridded(site, tmp_path):
    listing = kdbench("plugins", site=site, home=tmp_path)
    assert "nst" in listing.stdout and "kdbench-nst" in listing.stdout
    check = kdbench("plugins", "check", "nst", "--students", "res18t", site=site, home=tmp_path)
    assert check.returncode == 0 and "nst: 14 passed, 0 failed" in check.stdout, check.stdout
    run = kdbench("run", "--method", "nst", "--mode", "both", "--profile", "smoke", site=site, home=tmp_path)
    assert run.returncode == 0, run.stderr
    spec = tmp_path / "nst-grid.toml"
    spec.write_text('students = ["res18t"]\n[[group]]\nmethods = ["vanilla", "nst"]\nmodes = ["rgb"]\n')
    grid = kdbench("grid", str(spec), "--profile", "smoke", site=site, home=tmp_path)
    assert grid.returncode == 0, grid.stderr
    assert "2 ran, 0 already done, 0 failed" in grid.stdout

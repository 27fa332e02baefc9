"""Shared fixtures: the two ways a test launches the command line, the smoke workspace, one thread.

``kdbench`` runs the CLI as a user does (a subprocess: real exit codes, stdout and stderr apart,
plugins found through entry points and ``site`` as an extra path); ``cli`` runs it in this process
through typer's test runner (no interpreter start, no torch import per call: the fast choice when
the exit code and the output are all a test reads)."""
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Inductor compiles in this process: its pool of compile workers, started in each of pytest -n's
# workers, made a test's first torch.compile 5-8x slower on the 2-core VM (measured)
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest
import torch


def threads_per_process() -> int:
    """Under ``pytest -n N`` (pytest-xdist) N workers share the cores: each takes its share of
    intra-op threads, and so do the subprocesses it launches (``OMP_NUM_THREADS``), since two
    OpenMP pools contending for one core run 10-50x slower; alone, up to two threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, (os.cpu_count() or 1) // workers)) if workers > 1 else min(2, torch.get_num_threads())


torch.set_num_threads(threads_per_process())
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())


def launch(*args, home=None, site=None, extra_env=None, timeout=None) -> subprocess.CompletedProcess:
    """``kdbench ARGS`` in a subprocess, with ``KDBENCH_HOME=home`` and ``site`` on PYTHONPATH
    (a ``pip install --target`` folder: a third-party plugin installed as a user would)."""
    env = {**os.environ, "COLUMNS": "200", **({"KDBENCH_HOME": str(home)} if home is not None else {}),
           **({"PYTHONPATH": str(site)} if site is not None else {}), **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "kdbench.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def invoke(*args, home=None, columns=200, extra_env=None):
    """``kdbench ARGS`` in this process (typer's CliRunner): ``.exit_code``, ``.output``, ``.stdout``."""
    from typer.testing import CliRunner

    from kdbench.cli import app

    env = {"COLUMNS": str(columns), **({"KDBENCH_HOME": str(home)} if home is not None else {}), **(extra_env or {})}
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_line_error(proc, needle, code):
    """A subprocess's failure as a user sees it: exit ``code``, ``needle`` in stderr's last line, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert lines and needle in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def in_process_error(result, needle, code):
    """The same for an in-process ``cli(...)`` result: exit ``code``, ``needle`` in the last line, and
    the command ended by its own exit (no exception escaped it)."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert lines and needle in lines[-1], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def pip_install_target(package: Path, target: Path) -> Path:
    """``pip install --target`` of a local package (the examples' third-party plugins)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(package)], check=True)
    return target


@pytest.fixture
def kdbench():
    """The CLI as a subprocess: ``kdbench("run", "--profile", "smoke", home=tmp_path)``."""
    return launch


@pytest.fixture
def cli():
    """The CLI in this process: ``cli("table", 3, "--workdir", root)``."""
    return invoke


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory):
    """One workspace per test session: the smoke teacher is trained once and shared."""
    from kdbench.train.runner import Workspace

    return Workspace(tmp_path_factory.mktemp("kdbench"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny tensors: on a shared 2-core machine two
    OpenMP threads under contention made a step 10-50x slower (measured); restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

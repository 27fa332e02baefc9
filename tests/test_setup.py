"""The README's set-up is what CI installs, and it gives `kdbench prepare` its default detector offline."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    setup = ROOT.joinpath("README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", setup, re.S)]


def test_ci_runs_exactly_the_readme_set_up():
    install, tests = readme_commands()[:2]
    assert install.startswith("bash install.sh &&")  # the rest of that line runs the main job
    ci = [line.strip() for line in ROOT.joinpath(".ci/run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    assert ci == [install, tests]
    assert tests.split(" && ")[:2] == [".venv/bin/ruff check .", ".venv/bin/mypy"]  # style and types, then pytest
    script = ROOT.joinpath("install.sh").read_text()
    assert "--no-deps facenet-pytorch==" in script  # prepare's default detector (its deps pin an old torch)


def test_the_default_detector_loads_offline_with_its_weights_in_the_package():
    """MTCNN builds with the network cut: its weights come from inside facenet-pytorch."""
    code = ("import socket\n"
            "def refuse(*a, **k): raise OSError('network refused in this test')\n"
            "socket.socket.connect = refuse\n"
            "from kdbench.data.prepare import make_detector\n"
            "make_detector('mtcnn', 'cpu')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr

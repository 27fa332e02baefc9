"""The example third-party package, installed with pip, used through the CLI only."""
from pathlib import Path

import pytest
from conftest import pip_install_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return pip_install_target(ROOT / "examples" / "kdbench-nst", tmp_path_factory.mktemp("site"))


@pytest.mark.slow
def test_installed_plugin_is_listed_checked_run_and_gridded(kdbench, site, tmp_path):
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


THIRD_PARTY = '''
"""Written from docs/plugins.md alone: plain-value defaults, no __init__, no teacher_taps."""
import torch.nn.functional as F

from kdbench import Distiller, HParam, hookimpl
from kdbench.connectors import map_shape, resize


class PooledL2(Distiller):
    name = "pooledl2"
    description = "MSE between channel-pooled stage maps."
    defaults = {"beta": 5.0, "tap": HParam("stage3", "any stage", choices=("stage3", "stage4"))}

    def setup(self):
        map_shape(self.student_shapes, self.hp["tap"], "student")
        self.sizes = {b: map_shape(self.teacher_shapes, f"{b}.{self.hp['tap']}", "teacher")[1:]
                      for b in self.branches}

    def student_taps(self):
        return [self.hp["tap"]]

    def forward(self, student, teacher, labels):
        tap = self.hp["tap"]
        s = student[tap].mean(1, keepdim=True)
        return {f"kd_{b}": self.hp["beta"] * F.mse_loss(resize(s, self.sizes[b]), teacher[f"{b}.{tap}"].mean(1, keepdim=True))
                for b in self.branches}


@hookimpl
def kdbench_distillers():
    return [PooledL2]
'''

MALFORMED = {  # entry-point name -> module body: each is broken in its own way
    "outside": 'class D(Distiller):\n    name = "outside"\n    defaults = {"p": HParam(0, low=1)}\n',
    "notadict": 'class D(Distiller):\n    name = "notadict"\n    defaults = [("beta", 1.0)]\n',
    "badmodes": 'class D(Distiller):\n    name = "badmodes"\n    modes = ("rgb", "gray")\n',
}


@pytest.fixture(scope="module")
def third_party_site(tmp_path_factory):
    """One distribution with a well-formed distiller and three malformed ones, pip-installed."""
    src = tmp_path_factory.mktemp("third-party-src")
    (src / "pooledl2.py").write_text(THIRD_PARTY)
    for name, body in MALFORMED.items():
        (src / f"bad_{name}.py").write_text("from kdbench import Distiller, HParam, hookimpl\n\n" + body +
                                            "\n\n@hookimpl\ndef kdbench_distillers():\n    return [D]\n")
    modules = ["pooledl2", *(f"bad_{n}" for n in MALFORMED)]
    entry_points = "\n".join(f'{m.removeprefix("bad_")} = "{m}"' for m in modules)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "kdbench-third-party"\nversion = "0.1"\ndependencies = ["kdbench"]\n'
        f'[project.entry-points.kdbench]\n{entry_points}\n[tool.setuptools]\npy-modules = {modules!r}\n'.replace("'", '"'))
    return pip_install_target(src, tmp_path_factory.mktemp("third-party-site"))


@pytest.mark.slow
def test_plain_defaults_listed_and_malformed_named_in_one_line(kdbench, third_party_site, tmp_path):
    listing = kdbench("plugins", site=third_party_site, home=tmp_path)
    assert listing.returncode == 0 and "Traceback" not in listing.stdout + listing.stderr, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "pooledl2" in line)
    assert "beta=5.0" in row and "tap=stage3" in row and "kdbench-third-party" in row
    assert "tokd" in listing.stdout and "fitnet" in listing.stdout  # the others are listed as usual
    broken = {line.split()[2].rstrip(":"): line for line in listing.stdout.splitlines()
              if line.startswith("broken plugin")}
    assert set(broken) == set(MALFORMED), listing.stdout
    assert "p=0 must be >= 1" in broken["outside"]
    assert "defaults must be a dict" in broken["notadict"]
    assert "modes" in broken["badmodes"]

    check = kdbench("plugins", "check", "pooledl2", "--students", "res18t", site=third_party_site, home=tmp_path)
    assert check.returncode == 0 and "pooledl2: 14 passed, 0 failed" in check.stdout, check.stdout
    bad = kdbench("plugins", "check", "notadict", site=third_party_site, home=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    said = bad.stdout + bad.stderr  # the error line goes to stderr, as every CLI error does
    assert "is broken" in said and "defaults must be a dict" in said, said


@pytest.mark.slow
def test_hparam_choices_and_ranges_refused_in_one_line(kdbench, third_party_site, tmp_path):
    run = kdbench("run", "--method", "pooledl2", "--hp", "tap=stage1", "--profile", "smoke",
                  site=third_party_site, home=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "tap='stage1'" in run.stderr and "choose one of: stage3, stage4" in run.stderr, run.stderr

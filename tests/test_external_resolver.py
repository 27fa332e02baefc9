"""The example third-party resolver package, installed with pip, used through the CLI."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pip_install_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return pip_install_target(ROOT / "examples" / "kdbench-mgda", tmp_path_factory.mktemp("site"))


def test_installed_mgda_is_the_min_norm_point_of_the_hull(site, monkeypatch):
    """Against a brute-force search over the segment between the two gradients."""
    monkeypatch.syspath_prepend(str(site))
    from kdbench_mgda import MGDA

    rng = np.random.default_rng(0)
    xs = np.linspace(0, 1, 100001)[:, None]
    for _ in range(20):
        a, b = rng.normal(size=5), rng.normal(size=5)
        best = (xs * a + (1 - xs) * b)[np.linalg.norm(xs * a + (1 - xs) * b, axis=1).argmin()]
        rows = MGDA(scale="convex").resolve(torch.tensor(np.stack([a, b]))).numpy()
        assert np.allclose(rows.sum(0), best, atol=1e-4)


@pytest.mark.slow
def test_installed_resolver_is_listed_checked_and_run(kdbench, site, smoke_workspace):
    home = smoke_workspace.root  # the session's smoke teacher
    listing = kdbench("plugins", site=site, home=home)
    assert "mgda" in listing.stdout and "kdbench-mgda" in listing.stdout
    check = kdbench("plugins", "check", "mgda", site=site, home=home)
    assert check.returncode == 0 and "mgda: 5 passed, 0 failed" in check.stdout, check.stdout
    run = kdbench("run", "--method", "sp", "--mode", "both", "--resolver", "mgda", "--profile", "smoke",
                  "--no-progress", site=site, home=home)
    assert run.returncode == 0, run.stderr
    assert "sp/both + mgda" in run.stderr

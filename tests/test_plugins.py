"""Entry-point discovery with throwaway plugins installed into a temporary path."""
import subprocess
import sys
import textwrap

import pytest

from kdbench.plugins import build_registry

GOOD = '''
from kdbench import Distiller, HParam, hookimpl

class Echo(Distiller):
    name = "echo"
    modes = ("rgb",)
    defaults = {"beta": HParam(1.0, "test")}

@hookimpl
def kdbench_distillers():
    return [Echo]
'''


def install_fake(tmp_path, dist, module, source, group="kdbench"):
    """A minimal installed distribution: a module plus a .dist-info with entry points."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"  # dist-info names use _ for -
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{module.split('_', 1)[-1]} = {module}\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_discovers_third_party_plugin(fake_site):
    install_fake(fake_site, "kdb-echo", "kdbtest_echo", GOOD)
    reg = build_registry()
    assert "echo" in reg.distillers
    assert reg.providers["echo"] == "kdb-echo"
    assert "vanilla" in reg.distillers  # built-ins come through the same group


def test_broken_plugins_are_isolated(fake_site):
    install_fake(fake_site, "kdb-broken", "kdbtest_broken", "raise ImportError('no such dependency: foo')")
    install_fake(fake_site, "kdb-notdist", "kdbtest_notdist",
                 "from kdbench import hookimpl\n@hookimpl\ndef kdbench_distillers():\n    return [object]\n")
    install_fake(fake_site, "kdb-raises", "kdbtest_raises",
                 "from kdbench import hookimpl\n@hookimpl\ndef kdbench_distillers():\n    raise RuntimeError('boom')\n")
    reg = build_registry()
    assert "no such dependency: foo" in reg.errors["broken"]
    assert "not a kdbench.Distiller" in reg.errors["notdist"]
    assert "boom" in reg.errors["raises"]
    assert "vanilla" in reg.distillers


def test_cli_lists_plugins_and_broken_ones(fake_site):
    install_fake(fake_site, "kdb-echo", "kdbtest_echo", GOOD)
    install_fake(fake_site, "kdb-broken", "kdbtest_broken", "raise ImportError('no such dependency: foo')")
    env_path = f"{fake_site}"
    proc = subprocess.run([sys.executable, "-m", "kdbench.cli", "plugins"], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": env_path, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "echo" in proc.stdout and "kdb-echo" in proc.stdout
    assert "vanilla" in proc.stdout
    assert "broken plugin" in proc.stdout and "no such dependency: foo" in proc.stdout

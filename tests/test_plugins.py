"""Entry-point discovery with throwaway plugins installed into a temporary path."""
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


def test_cli_lists_plugins_and_broken_ones(fake_site, kdbench):
    install_fake(fake_site, "kdb-echo", "kdbtest_echo", GOOD)
    install_fake(fake_site, "kdb-broken", "kdbtest_broken", "raise ImportError('no such dependency: foo')")
    proc = kdbench("plugins", site=fake_site)
    assert proc.returncode == 0, proc.stderr
    assert "echo" in proc.stdout and "kdb-echo" in proc.stdout
    assert "vanilla" in proc.stdout
    assert "broken plugin" in proc.stdout and "no such dependency: foo" in proc.stdout


BAD_HOOKS = '''
from kdbench import hookimpl

@hookimpl
def kdbench_students():
    raise RuntimeError("students boom")
'''
BAD_DATASETS = "from kdbench import hookimpl\n@hookimpl\ndef kdbench_datasets():\n    return ['not', 'a', 'dict']\n"
BAD_LOGGER = "from kdbench import hookimpl\n@hookimpl\ndef kdbench_on_event(event, run, payload):\n    raise KeyError(event)\n"


def test_every_hook_is_isolated_and_named(fake_site):
    """students/datasets/events hooks that fail, and a plugin exiting on import, are each named
    once (a warning and ``errors``); everything else keeps working."""
    from kdbench.plugins import PluginWarning, _call

    install_fake(fake_site, "kdb-students", "kdbtest_students", BAD_HOOKS)
    install_fake(fake_site, "kdb-datasets", "kdbtest_datasets", BAD_DATASETS)
    install_fake(fake_site, "kdb-logger", "kdbtest_logger", BAD_LOGGER)
    install_fake(fake_site, "kdb-exits", "kdbtest_exits", "import sys\nsys.exit(3)\n")
    install_fake(fake_site, "kdb-echo", "kdbtest_echo", GOOD)
    with pytest.warns(PluginWarning) as caught:
        reg = build_registry()
        _call(reg, "kdbench_on_event", {"event": "run_start", "run": {}, "payload": {}})
        _call(reg, "kdbench_on_event", {"event": "run_end", "run": {}, "payload": {}})
    assert reg.errors["students"] == "kdbench_students: RuntimeError: students boom"
    assert reg.errors["datasets"] == "kdbench_datasets returned list, not Mapping"
    assert reg.errors["logger"] == "kdbench_on_event: KeyError: 'run_start'"
    assert reg.errors["exits"] == "called sys.exit(3)"
    assert sorted(str(w.message).split()[1] for w in caught) == ["datasets", "exits", "logger", "students"]
    assert "echo" in reg.distillers and "vanilla" in reg.distillers


@pytest.mark.slow
def test_cli_survives_plugins_that_exit_or_raise(fake_site, kdbench):
    """`kdbench plugins` names them, and a command that builds students still runs (one line each)."""
    install_fake(fake_site, "kdb-students", "kdbtest_students", BAD_HOOKS)
    install_fake(fake_site, "kdb-exits", "kdbtest_exits", "import sys\nsys.exit(3)\n")
    proc = kdbench("plugins", site=fake_site)
    assert proc.returncode == 0, proc.stderr
    assert "broken plugin exits: called sys.exit(3)" in proc.stdout
    assert "broken plugin students: kdbench_students: RuntimeError: students boom" in proc.stdout
    assert "warning: plugin exits is broken and skipped: called sys.exit(3)" in proc.stderr
    assert "Traceback" not in proc.stderr
    run = kdbench("run", "--student", "nosuch", site=fake_site)  # asks every plugin for its students
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "warning: plugin students is broken" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: unknown student 'nosuch'; choose one of: res18t")

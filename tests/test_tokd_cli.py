"""TOKD's switches on the command line (issue: the smoke profile runs every one), in this process."""
import re

import pytest

from kdbench.store import ResultsStore

SWITCHES = [["--mode", "rgb"], ["--mode", "both"], ["--no-rotation"], ["--no-projector"], ["--rotation-dim", "128"],
            ["--alpha", "200"]]


@pytest.mark.slow
@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: " ".join(s))
def test_tokd_switch_runs_in_smoke_profile(smoke_workspace, cli, switch):
    result = cli("run", "--method", "tokd", "--student", "res18t", "--profile", "smoke", "--epochs", "1", *switch,
                 home=smoke_workspace.root)
    assert result.exit_code == 0, result.output[-1500:]
    # this run's record by the hash it printed (another test may have stored the same config first)
    run_hash = re.search(r"(?:record|run) ([0-9a-f]+) (?:stored|already done)", result.output).group(1)
    rec = ResultsStore(smoke_workspace.store_path).get(run_hash)
    hp = rec.config["hp"]
    expected = {"--no-rotation": ("rotation", False), "--no-projector": ("projector", False),
                "--rotation-dim": ("rotation_dim", 128), "--alpha": ("alpha", 200.0)}
    if switch[0] in expected:
        key, value = expected[switch[0]]
        assert hp[key] == value
    else:
        assert rec.mode == switch[1]

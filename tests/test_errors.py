"""Bad inputs end in one line and a non-zero exit, and nothing already computed is lost."""
import sqlite3

import pytest
from conftest import in_process_error, one_line_error
from test_plugins import install_fake

from kdbench.store import ResultsStore, RunRecord

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


def test_malformed_config_file(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 2\n")
    in_process_error(cli("run", "--config", bad, home=tmp_path), "malformed config file", 2)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nepochz = 2\n")
    in_process_error(cli("run", "--config", unknown, home=tmp_path), "unknown train setting epochz", 2)


def test_missing_teacher_weights(cli, tmp_path):
    result = cli("run", "--profile", "smoke", "--teacher-weights", tmp_path / "none.pth", home=tmp_path)
    in_process_error(result, "teacher weights file not found", 2)


def test_rotation_dim_larger_than_latent(cli, tmp_path):
    result = cli("run", "--method", "tokd", "--profile", "smoke", "--rotation-dim", "999999", home=tmp_path)
    in_process_error(result, "exceeds the student latent size D=C*H*W=256*2*2=1024", 2)
    assert ResultsStore(tmp_path / "results.sqlite").query() == []  # found after the config resolved: nothing stored


@pytest.mark.slow
def test_nan_loss_fails_the_run_and_the_grid_goes_on(kdbench, tmp_path):
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


def test_locked_results_store(cli, tmp_path):
    ResultsStore(tmp_path / "results.sqlite")
    holder = sqlite3.connect(tmp_path / "results.sqlite")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = cli("results", "--delete", "0123", home=tmp_path, extra_env={"KDBENCH_DB_TIMEOUT": "0.5"})
    finally:
        holder.rollback()
        holder.close()
    in_process_error(result, "database is locked", 1)


@pytest.mark.parametrize("toml,needle", [
    ("[trian]\nepochs = 1\n", "unknown section 'trian' in the config file; valid: description, train, teacher"),
    ("epochs = 1\n", "unknown section 'epochs' in the config file; valid:"),
    ("[hp.tokdd]\nalpha = 1\n", "unknown method 'tokdd' in [hp]; choose one of: at, "),
    ("[data.synthetc]\nn_train = 9\n", "unknown dataset 'synthetc' in [data]; choose one of:"),
    ("[hp.fitnet]\nbetta = 1\n", "unknown hyper-parameter betta for 'fitnet'; valid: beta"),
    ("[train]\nepochs = 0\n", "train.epochs=0 is out of range: it must be >= 1"),
    ("[train]\nbatch_size = 0\n", "train.batch_size=0 is out of range: it must be >= 2"),
    ("[train]\nimage_size = 0\n", "train.image_size=0 is out of range: it must be >= 32"),
    ("[teacher]\nlr = nan\n", "teacher.lr=nan is not a finite number"),
])
def test_config_typos_and_ranges_are_refused(cli, tmp_path, toml, needle):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    in_process_error(cli("run", "--profile", "smoke", "--config", path, home=tmp_path), needle, 2)


@pytest.mark.parametrize("args,needle", [
    (["--epochs", "0"], "train.epochs=0 is out of range: it must be >= 1"),
    (["--epochs", "-1"], "train.epochs=-1 is out of range"),
    (["--seed", "99999999999999999999"], "seed 99999999999999999999 is out of range"),
    (["--hp", "rotation_dim=inf"], "hyper-parameter rotation_dim='inf' is not a valid int"),
    (["--method", "fitnet", "--hp", "beta=nan"], "hyper-parameter beta='nan' is not a valid float"),
    (["--method", "at", "--hp", "beta=-1"], "hyper-parameter beta=-1.0 for 'at': must be >= 0"),
    (["--data", "methods=[a"], "--data methods='[a' is not a valid value: while parsing"),
    (["--data", "x=!!python/object/apply:os.system ['echo pwned']"], "could not determine a constructor"),
])
def test_bad_values_are_one_line_where_they_enter(cli, tmp_path, args, needle):
    in_process_error(cli("run", "--profile", "smoke", *args, home=tmp_path), needle, 2)


def test_results_delete_of_an_unknown_hash(cli, tmp_path):
    in_process_error(cli("results", "--delete", "0123abcd", home=tmp_path), "no record 0123abcd in", 2)


def test_an_empty_store_file_is_warned_about(cli, tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"")
    result = cli("results", "--format", "csv", home=tmp_path)
    assert result.exit_code == 0 and "is an empty (0-byte) file" in result.output, result.output


def test_a_checkpoint_holding_a_list_is_refused(tmp_path):
    from kdbench.io import atomic_save
    from kdbench.train.trainer import TrainingError, load_checkpoint

    path = tmp_path / "state.pt"
    atomic_save([1, 2, 3], path)  # a valid digest: only the content is wrong
    with pytest.raises(TrainingError, match="is not a kdbench run checkpoint; delete it to start over"):
        load_checkpoint(path, "abc")


def test_brackets_print_as_written(cli, tmp_path, capsys):
    """Rich markup never eats user text: install hints, stored names, paths."""
    from kdbench.cli.common import error

    error("reading videos needs PyAV: pip install 'kdbench[video]'")
    assert "pip install 'kdbench[video]'" in capsys.readouterr().err
    home = tmp_path / "[bold]home"
    ResultsStore(home / "results.sqlite").put(RunRecord(
        hash="h1", cell="c1", method="kd[v2]", mode="rgb", student="res18t", dataset="ffpp[c40]",
        test_dataset="ffpp[c40]", profile="smoke", seed=0, spec="", status="done", config={}))
    result = cli("results", home=home)
    assert result.exit_code == 0, result.output
    assert "kd[v2]" in result.output and "ffpp[c40]" in result.output and "[bold]home" in result.output

"""The command line as a user runs it (real exit codes; the usage errors in this process)."""
import csv
import io

import pytest
from conftest import in_process_error, one_line_error


def test_a_bad_choice_is_one_line_exit_2_in_a_shell(kdbench, tmp_path):
    """A subprocess: the exit status and stderr a shell script sees, before anything heavy loads."""
    one_line_error(kdbench("run", "--method", "nosuch", home=tmp_path), "unknown method 'nosuch'; choose one of: ", 2)


@pytest.mark.parametrize("args,needle", [
    (["--student", "nosuch"], "unknown student 'nosuch'; choose one of: res18t, res34t, xception"),
    (["--method", "vanilla", "--mode", "both"], "has no mode 'both'; choose one of: rgb"),
    (["--profile", "nosuch"], "unknown profile 'nosuch'; choose one of: smoke, cpu, paper"),
    (["--method", "fitnet", "--hp", "nosuch=1"], "unknown hyper-parameter nosuch for 'fitnet'; valid: "),
    (["--dataset", "nosuch"], "unknown dataset 'nosuch'; choose one of: "),
    (["--method", "fitnet", "--hp", "beta=abc"], "hyper-parameter beta='abc' is not a valid float"),
    (["--data-root", "/no/such/dir"], "dataset root not found: /no/such/dir"),
])
def test_bad_choices_are_one_line_exit_2(cli, tmp_path, args, needle):
    result = cli("run", *args, home=tmp_path)
    in_process_error(result, needle, 2)
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
def test_run_then_cached_teacher_then_results(kdbench, tmp_path):
    first = kdbench("run", "--method", "fitnet", "--mode", "both", "--student", "res18t", "--profile", "smoke",
                    home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "teacher: training" in first.stderr
    assert "test ACC %" in first.stdout and "test AUC %" in first.stdout and "test EER %" in first.stdout
    # not a terminal: a line per epoch, the teacher's too, with validation metrics
    assert "teacher epoch 2/2: loss " in first.stderr and "fitnet epoch 1/2: loss " in first.stderr
    assert "(ce " in first.stderr and "val acc " in first.stderr
    second = kdbench("run", "--method", "vanilla", "--student", "res18t", "--profile", "smoke",
                     "--log", "tensorboard", home=tmp_path)
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
    vanilla = next(r for r in runs if r["method"] == "vanilla")
    shown = kdbench("results", "show", vanilla["hash"][:7], home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "per-epoch history" in shown.stdout and "torch_threads" in shown.stdout and "torch_build" in shown.stdout
    curves = kdbench("figure", "curves", vanilla["hash"], fitnet["hash"], home=tmp_path)
    assert curves.returncode == 0 and curves.stdout.strip().endswith(".png"), curves.stderr
    assert_tensorboard_events(tmp_path / "runs" / vanilla["hash"] / "tensorboard", shown.stdout)
    assert not (tmp_path / "runs" / fitnet["hash"] / "tensorboard").exists()  # opt-in


def assert_tensorboard_events(folder, shown):
    """The event files read back with TensorBoard's own reader hold each epoch's loss and
    validation accuracy, equal to the record's history (as `results show` prints it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss_ce", "val/acc", "val/auc", "train/lr", "test/acc"} <= set(tags), tags
    val = acc.Scalars("val/acc")
    assert [e.step for e in val] == [1, 2]
    history_line = next(ln for ln in shown.splitlines() if ln.strip().startswith("2 "))
    assert f"{val[1].value:.4g}" in history_line.split()

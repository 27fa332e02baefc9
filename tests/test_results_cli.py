"""Looking at runs without training any: `kdbench results` filters and `results show`,
`figure curves`, tables without --profile, grid progress lines, help texts, `plugins check`
of an unknown name. The store holds hand-made FAKE records (fixtures, not results)."""
from __future__ import annotations

import dataclasses

import pytest
from test_tables import fake_record

from kdbench.grid import expand, run_grid
from kdbench.store import ResultsStore
from kdbench.workspace import Workspace


def epochs(accs: list[float]) -> list[dict]:
    return [{"epoch": i, "lr": 1e-3, "train_time": 1.0, "eval_time": 0.5, "loss_ce": 0.7 - 0.1 * i,
             "loss_kd_rgb": 0.2 / (i + 1), "val_acc": a, "val_auc": a + 3} for i, a in enumerate(accs)]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """Smoke runs of Table 3 for res18t only (what the README's grid makes), one cpu TOKD run
    with a changed alpha, and a failed smoke run."""
    ws = Workspace(tmp_path_factory.mktemp("results"))
    store = ResultsStore(ws.store_path)
    for cell in expand("table3", profile="smoke", students=["res18t"], methods=["vanilla", "tokd"]):
        rec = fake_record(cell.cfg, 50.0 + len(store.query()))
        rec.history = {"epochs": epochs([48.0, 52.0]), "diagnostics": [], "changed": {}}
        store.put(rec)
    tokd = expand("table3", students=["res18t"], methods=["tokd"])[1].cfg
    cpu = fake_record(dataclasses.replace(tokd, hp={**tokd.hp, "alpha": 50.0}), 81.0)
    cpu.history = {"epochs": epochs([70.0, 80.0, 81.0]), "changed": {"hp.alpha": 50.0}}
    cpu.versions = {"torch": "2.x", "torch_build": "CPU-only", "torch_threads": 2, "cpu": "Fake CPU"}
    store.put(cpu)
    bad = fake_record(dataclasses.replace(expand("table3", profile="smoke", students=["res18t"],
                                                 methods=["at"])[0].cfg), 0.0, status="failed")
    bad.error = "TrainingError: loss is nan"
    store.put(bad)
    return ws


def test_bare_table_shows_the_profile_that_holds_runs(cli, tmp_path):
    """After `kdbench grid table3 --students res18t --profile smoke`, a bare `kdbench table 3`
    shows those runs, marked as a pipeline check."""
    store = ResultsStore(tmp_path / "results.sqlite")
    for i, cell in enumerate(expand("table3", profile="smoke", students=["res18t"], methods=["vanilla", "sp"])):
        store.put(fake_record(cell.cfg, 41.0 + i))
    res = cli("table", 3, "--format", "markdown", "--workdir", tmp_path)
    assert res.exit_code == 0, res.output
    assert "41.00 (n=1)" in res.stdout and "43.00 (n=1)" in res.stdout
    assert "smoke profile (pipeline check, not a benchmark)" in res.stdout
    cpu = cli("table", 3, "--profile", "cpu", "--format", "markdown", "--workdir", tmp_path)
    assert cpu.exit_code == 0 and "41.00" not in cpu.stdout
    assert "runs are stored for smoke (3 runs): pass --profile NAME" in cpu.stdout


def test_results_filters_and_columns(cli, ws):
    res = cli("results", "--workdir", ws.root)
    assert res.exit_code == 0, res.output
    assert "profile" in res.stdout and "changed" in res.stdout and "hp.alpha=50.0" in res.stdout
    assert "pipeline check, not a benchmark" in res.stdout
    smoke = cli("results", "--profile", "smoke", "--format", "csv", "--workdir", ws.root)
    rows = smoke.stdout.strip().splitlines()
    assert smoke.exit_code == 0 and len(rows) == 1 + 4 and all(",smoke," in r for r in rows[1:])
    tokd = cli("results", "--method", "tokd", "--student", "res18t", "--status", "done", "--format", "csv",
               "--workdir", ws.root)
    assert len(tokd.stdout.strip().splitlines()) == 1 + 3
    failed = cli("results", "--status", "failed", "--format", "csv", "--workdir", ws.root)
    assert "loss is nan" in failed.stdout and len(failed.stdout.strip().splitlines()) == 2
    bad = cli("results", "--status", "finished", "--workdir", ws.root)
    assert bad.exit_code == 2 and "choose one of: done, running, failed, interrupted" in bad.output


def test_results_show_and_curves(cli, ws, tmp_path):
    run = next(r for r in ResultsStore(ws.store_path).query() if r.profile == "cpu")
    res = cli("results", "show", run.hash[:6], "--workdir", ws.root)
    assert res.exit_code == 0, res.output
    for needle in (run.hash, "hp.alpha", "50.0", "torch_build", "CPU-only", "Fake CPU", "per-epoch history",
                   "loss_kd_rgb", "81.00"):
        assert needle in res.stdout, needle
    assert cli("results", "show", "0" * 16, "--workdir", ws.root).exit_code == 2
    assert "not a run hash" in cli("results", "show", "xyz", "--workdir", ws.root).output
    fig = cli("figure", "curves", run.hash[:8], "--out", tmp_path, "--workdir", ws.root)
    assert fig.exit_code == 0, fig.output
    png = tmp_path / f"curves-{run.hash[:8]}.png"
    assert fig.stdout.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    assert cli("figure", "curves", "--workdir", ws.root).exit_code == 2


def test_grid_reports_each_cell_and_an_eta():
    cells = expand("table3", profile="smoke", students=["res18t"], methods=["vanilla", "tokd"])
    lines: list[str] = []

    def run_cell(cell):
        if cell.cfg.mode == "both":
            raise RuntimeError("boom")
        return fake_record(cell.cfg, 61.25)

    report = run_grid(cells, run_cell, lambda c: False, log=lines.append)
    assert len(report.ran) == 2 and len(report.failed) == 1 and len(report.records) == 2
    done = [ln for ln in lines if "done in" in ln]
    assert len(done) == 2 and all("test acc 61.25 %, AUC 66.25 %" in ln for ln in done)
    assert "grid 1/3 cells" in done[0] and "ETA" in done[0] and "ETA" not in lines[-1]
    assert any("failed: RuntimeError: boom" in ln for ln in lines)


def test_help_renders_as_written(kdbench, monkeypatch):
    monkeypatch.setenv("PATH", "")
    proc = kdbench("run", "--help")
    assert proc.returncode == 0
    assert "<bool>" not in proc.stdout and "--compile" in proc.stdout
    assert "cuda[:N]" in proc.stdout and "hp.METHOD" in proc.stdout


def test_plugins_check_unknown_is_one_line_exit_2(cli):
    res = cli("plugins", "check", "nosuch")
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0 and "unknown method 'nosuch'" in res.output


def test_example_config_resolves_to_the_cpu_profile(cli, tmp_path):
    """examples/kdbench.toml holds every section and, as its comments say, repeats the cpu
    profile's values: its runs are the bare profile's; changing one value makes another run."""
    from pathlib import Path

    from kdbench.config import changed_settings, load_config_file, resolve

    example = Path(__file__).parents[1] / "examples" / "kdbench.toml"
    cfg = load_config_file(example)
    assert {"log", "train", "teacher", "hp", "data"} <= set(cfg) and {"tokd", "fitnet"} <= set(cfg["hp"])
    for method in ("tokd", "fitnet", "at"):
        assert resolve(method=method, config=cfg).hash == resolve(method=method).hash
    cfg["hp"]["tokd"]["alpha"] = 50.0
    changed = resolve(method="tokd", config=cfg)
    assert changed_settings(changed) == {"hp.alpha": 50.0}
    res = cli("run", "--config", example, "--method", "tokd", "--alpha", "20", "--print-config", "--workdir", tmp_path)
    assert res.exit_code == 0 and "changed against the profile: hp.alpha=20.0" in res.stdout
    assert not (tmp_path / "results.sqlite").exists()  # nothing ran

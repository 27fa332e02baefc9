"""The ``kdbench`` command line (typer).

Every anticipated failure (bad option, missing file, broken plugin, NaN loss,
locked store) ends as one line on stderr and a non-zero exit: 2 for a usage
error, 1 for a run that failed. Nothing already computed is lost.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from kdbench.config import PROFILES, ConfigError, load_config_file, parse_hp, resolve
from kdbench.data.registry import DatasetError
from kdbench.distiller import DistillerError
from kdbench.store import ResultsStore, StoreError

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="Knowledge-distillation benchmark for facial-forgery detection (TOKD and baselines).")
plugins_app = typer.Typer(help="List installed distillers, or check one against the contract.")
teacher_app = typer.Typer(help="Build the cached dual-branch teacher explicitly.")
app.add_typer(plugins_app, name="plugins")
app.add_typer(teacher_app, name="teacher")

console = Console(stderr=True)
out = Console()

USAGE_ERRORS = (ConfigError, DistillerError, DatasetError)


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line and an exit code instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from kdbench.teacher_cache import CacheError
        from kdbench.trainer import TrainingError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except USAGE_ERRORS as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (StoreError, TrainingError, CacheError, FileNotFoundError, ValueError, OSError) as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("interrupted: the last finished epoch is checkpointed; re-run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


def workspace(workdir: Optional[Path]) -> Any:
    from kdbench.runner import Workspace

    return Workspace(Path(workdir or os.environ.get("KDBENCH_HOME", ".kdbench")))


def _log(msg: str) -> None:
    console.print(msg, highlight=False)


WorkdirOpt = typer.Option(None, "--workdir", help="Results store, teacher cache and checkpoints (default ./.kdbench or $KDBENCH_HOME).")


def check_names(students: list[str], datasets: list[str]) -> None:
    """Unknown students or datasets fail before anything is built (teachers take long)."""
    from kdbench.data.registry import dataset_builders
    from kdbench.models.students import available_students

    for student in students:
        if student not in available_students():
            raise ConfigError(f"unknown student {student!r}; choose one of: {', '.join(available_students())}")
    for name in datasets:
        if name not in dataset_builders():
            raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(dataset_builders()))}")


def build_config(method: str, mode: Optional[str], student: str, dataset: str, profile: str, seed: int,
                 hp: list[str], config: Optional[Path], teacher_weights: Optional[Path], epochs: Optional[int],
                 test_dataset: Optional[str] = None, data: Optional[dict[str, Any]] = None,
                 test_data: Optional[dict[str, Any]] = None) -> Any:
    check_names([student], [d for d in (dataset, test_dataset) if d])
    file_cfg = load_config_file(config) if config else None
    teacher = {"weights": str(teacher_weights)} if teacher_weights else {}
    train = {"epochs": epochs} if epochs else {}
    return resolve(method=method, mode=mode, student=student, dataset=dataset, profile=profile, seed=seed,
                   hp=parse_hp(hp), config=file_cfg, teacher=teacher, train=train, test_dataset=test_dataset,
                   data=data, test_data=test_data)


def cell_options(config: Optional[Path], teacher_weights: Optional[Path], data: list[str],
                 data_root: Optional[Path] = None, test_data_root: Optional[Path] = None) -> dict[str, Any]:
    """The options besides profile, students and datasets that define a grid's cells:
    `kdbench grid` runs them, `kdbench table`/`figure` look the same cells up."""
    return {"config": load_config_file(config) if config else None,
            "teacher": {"weights": str(teacher_weights)} if teacher_weights else None,
            "data": data_options(data, data_root), "test_data": data_options([], test_data_root)}


def data_options(items: list[str], root: Optional[Path]) -> dict[str, Any]:
    """``--data key=value`` (values parsed as YAML scalars/lists) plus ``--data-root DIR``."""
    import yaml

    opts = {k: yaml.safe_load(v) if v else v for k, v in parse_hp(items).items()}
    if root is not None:
        if not root.is_dir():
            raise ConfigError(f"dataset root not found: {root}")
        opts["root"] = str(root.resolve())
    return opts


DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda[:N] (auto: CUDA when present).")
PrecisionOpt = typer.Option("auto", "--precision", help="auto | fp32 | bf16 (auto: bf16 autocast on GPU).")
CompileOpt = typer.Option(False, "--compile", help="torch.compile the student and the distiller's loss.")
DataOpt = typer.Option([], "--data", help="Dataset option key=value (repeatable), e.g. methods=[Deepfakes].")
DataRootOpt = typer.Option(None, "--data-root", help="Prepared dataset directory (kdbench prepare --out).")


@app.command()
@cli_errors
def run(
    method: str = typer.Option("tokd", "--method", "-m", help="Distiller (see `kdbench plugins`)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="rgb | both (default: both where supported)."),
    student: str = typer.Option("res18t", "--student", "-s", help="res18t | res34t | xception."),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    test_dataset: Optional[str] = typer.Option(None, "--test-dataset", help="Test on another dataset (Table 7)."),
    profile: str = typer.Option("cpu", "--profile", "-p", help=f"{' | '.join(PROFILES)} or a .toml/.yaml file."),
    seed: int = typer.Option(0, "--seed"),
    hp: list[str] = typer.Option([], "--hp", help="Hyper-parameter override key=value (repeatable)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML/YAML config file ([train], [teacher], [hp.<method>])."),
    teacher_weights: Optional[Path] = typer.Option(None, "--teacher-weights", help="Local pretrained branch weights."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the profile's epochs."),
    data: list[str] = DataOpt,
    data_root: Optional[Path] = DataRootOpt,
    test_data_root: Optional[Path] = typer.Option(None, "--test-data-root", help="Prepared test dataset directory."),
    rotation_dim: Optional[int] = typer.Option(None, "--rotation-dim", help="TOKD: rotation size d."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="TOKD: distillation weight alpha."),
    no_rotation: bool = typer.Option(False, "--no-rotation", help="TOKD: switch the rotation module off."),
    no_projector: bool = typer.Option(False, "--no-projector", help="TOKD: direct matching through a 1x1 adapter."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    compile_model: bool = CompileOpt,
    workdir: Optional[Path] = WorkdirOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train one student with one distiller and store the record."""
    from kdbench.runner import run as run_one
    from kdbench.runtime import make_runtime

    sugar = {"rotation_dim": rotation_dim, "alpha": alpha,
             "rotation": False if no_rotation else None, "projector": False if no_projector else None}
    hp = hp + [f"{k}={v}" for k, v in sugar.items() if v is not None]
    cfg = build_config(method, mode, student, dataset, profile, seed, hp, config, teacher_weights, epochs, test_dataset,
                       data_options(data, data_root), data_options([], test_data_root))
    ws = workspace(workdir)
    store = ResultsStore(ws.store_path)
    done = store.get(cfg.hash)
    if done is not None and done.status == "done":
        _log(f"run {cfg.hash} already done (delete it with `kdbench results --delete {cfg.hash}` to redo)")
        rec = done
    else:
        rt = make_runtime(device, precision, compile_model)
        rec = run_one(cfg, ws, store, rt, log=_log if rt.is_main else (lambda _m: None),
                      progress=progress and console.is_terminal)
        if not rt.is_main:
            return
    print_metrics(rec)


def print_metrics(rec: Any) -> None:
    test = rec.metrics["test"]
    table = Table(title=f"{rec.method}/{rec.mode} -> {rec.student} on {rec.test_dataset} (seed {rec.seed}, "
                        f"best val epoch {rec.metrics['best_epoch'] + 1})")
    for key in ("acc", "auc", "eer", "ap", "video_auc"):
        if key in test:
            table.add_column(f"test {key.upper()} %", justify="right")
    table.add_row(*(f"{test[k]:.2f}" for k in ("acc", "auc", "eer", "ap", "video_auc") if k in test))
    out.print(table)
    out.print(f"record {rec.hash} stored; wall time {rec.wall_time:.1f} s", highlight=False)


@app.command()
@cli_errors
def grid(
    spec: str = typer.Argument(..., help="table3 | table4 | table5 | table6 | table7 | fig3, or a TOML/YAML spec file."),
    profile: str = typer.Option("cpu", "--profile", "-p"),
    students: Optional[str] = typer.Option(None, "--students", help="Comma-separated students (default: the spec's)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods to keep."),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="Comma-separated datasets (default: the spec's)."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    shard_opt: Optional[str] = typer.Option(None, "--shard", help="i/n: run only shard i of n."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and which are done; run nothing."),
    config: Optional[Path] = typer.Option(None, "--config"),
    teacher_weights: Optional[Path] = typer.Option(None, "--teacher-weights"),
    data: list[str] = DataOpt,
    data_root: Optional[Path] = DataRootOpt,
    test_data_root: Optional[Path] = typer.Option(None, "--test-data-root", help="Prepared test dataset (Table 7)."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    compile_model: bool = CompileOpt,
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """Run a grid of cells, skipping finished ones (resumable, shardable)."""
    from kdbench.data.registry import DatasetCache
    from kdbench.grid import expand, parse_seeds, parse_shard, run_grid, shard
    from kdbench.runner import run as run_one
    from kdbench.runtime import make_runtime
    from kdbench.teacher_cache import TeacherCache

    split = lambda text: [x.strip() for x in text.split(",") if x.strip()] if text else None  # noqa: E731
    check_names(split(students) or [], split(datasets) or [])
    cells = expand(spec, profile=profile, students=split(students), methods=split(methods), datasets=split(datasets),
                   seeds=parse_seeds(seeds), **cell_options(config, teacher_weights, data, data_root, test_data_root))
    cells = shard(cells, *parse_shard(shard_opt))
    ws = workspace(workdir)
    store = ResultsStore(ws.store_path)
    status = {r.hash: r.status for r in store.query()}
    if dry_run:
        table = Table(title=f"grid {spec}: {len(cells)} cells ({profile} profile)")
        for col in ("#", "hash", "method", "mode", "student", "dataset", "seed", "variant", "status"):
            table.add_column(col)
        for i, cell in enumerate(cells, 1):
            c = cell.cfg
            table.add_row(str(i), c.hash, c.method, c.mode, c.student, c.test_dataset or c.dataset, str(c.seed),
                          " ".join(f"{k}={v}" for k, v in cell.variant.items()) or cell.label,
                          status.get(c.hash, "todo"))
        out.print(table)
        done = sum(status.get(c.cfg.hash) == "done" for c in cells)
        out.print(f"{len(cells)} cells, {done} done, {len(cells) - done} to run", highlight=False)
        return
    rt = make_runtime(device, precision, compile_model)
    datasets = DatasetCache()  # each dataset is generated or decoded once for the whole grid
    teachers = TeacherCache()  # each teacher and feature file is read once for the whole grid
    report = run_grid(cells, lambda cell: run_one(cell.cfg, ws, store, rt, spec=cell.spec, log=_log,
                                                  progress=console.is_terminal, datasets=datasets,
                                                  teachers=teachers),
                      lambda cell: status.get(cell.cfg.hash) == "done", log=_log)
    out.print(f"grid {spec}: {len(report.ran)} ran, {len(report.done_before)} already done, "
              f"{len(report.failed)} failed", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@teacher_app.command("train")
@cli_errors
def teacher_train(
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    profile: str = typer.Option("cpu", "--profile", "-p"),
    config: Optional[Path] = typer.Option(None, "--config"),
    teacher_weights: Optional[Path] = typer.Option(None, "--teacher-weights"),
    data: list[str] = DataOpt,
    data_root: Optional[Path] = DataRootOpt,
    device: str = DeviceOpt,
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """Train (or find in the cache) the teacher for a dataset and profile."""
    from kdbench.data.registry import load_dataset
    from kdbench.runtime import make_runtime
    from kdbench.teacher_cache import ensure_teacher

    cfg = build_config("vanilla", None, "res18t", dataset, profile, 0, [], config, teacher_weights, None,
                       data=data_options(data, data_root))
    splits = load_dataset(cfg.dataset, cfg.train.image_size, cfg.data)
    t = ensure_teacher(cfg, splits, workspace(workdir).root, make_runtime(device), log=_log,
                       progress=console.is_terminal)
    out.print(json.dumps({"teacher": t.hash, "cached": t.cached, **t.metrics}, indent=2, default=str))


@plugins_app.callback(invoke_without_command=True)
@cli_errors
def plugins_list(ctx: typer.Context) -> None:
    """Every installed distiller with its modes, defaults and providing distribution."""
    if ctx.invoked_subcommand is not None:
        return
    from kdbench.plugins import registry

    reg = registry()
    table = Table(title="kdbench distillers")
    for col in ("name", "modes", "defaults", "provided by"):
        table.add_column(col)
    for name, cls in sorted(reg.distillers.items()):
        defaults = ", ".join(f"{k}={v.value}" for k, v in cls.defaults.items())
        table.add_row(name, ", ".join(cls.modes), defaults, reg.providers.get(name, "?"))
    out.print(table)
    for name, err in sorted(reg.errors.items()):
        out.print(f"[red]broken plugin[/red] {name}: {err}", highlight=False)


@plugins_app.command("check")
@cli_errors
def plugins_check(
    name: str = typer.Argument(..., help="Distiller name (see `kdbench plugins`)."),
    students: str = typer.Option(",".join(("res18t", "res34t", "xception")), "--students"),
) -> None:
    """Run the contract checks on an installed distiller and print a pass/fail report."""
    from kdbench.contract import check_distiller

    results = check_distiller(name, [s.strip() for s in students.split(",") if s.strip()])
    table = Table(title=f"contract checks: {name}")
    for col in ("student", "mode", "check", "result", "detail"):
        table.add_column(col)
    for r in results:
        table.add_row(r.student, r.mode, r.check, "[green]pass[/green]" if r.ok else "[red]FAIL[/red]", r.detail)
    out.print(table)
    failed = sum(not r.ok for r in results)
    out.print(f"{name}: {len(results) - failed} passed, {failed} failed", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
@cli_errors
def results(
    fmt: str = typer.Option("table", "--format", help="table | json | csv."),
    delete: Optional[str] = typer.Option(None, "--delete", help="Delete the record with this hash."),
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """List stored runs, or export them."""
    import csv

    store = ResultsStore(workspace(workdir).store_path)
    if delete:
        store.delete(delete)
        _log(f"deleted {delete}")
        return
    recs = store.query()
    if fmt == "json":
        out.print_json(json.dumps([r.__dict__ for r in recs], default=str))
        return
    rows = [{"hash": r.hash, "method": r.method, "mode": r.mode, "student": r.student, "dataset": r.dataset,
             "test_dataset": r.test_dataset, "profile": r.profile, "seed": r.seed, "status": r.status,
             **{f"test_{k}": round(v, 4) for k, v in ((r.metrics or {}).get("test") or {}).items()},
             "wall_time": round(r.wall_time or 0, 1),
             **{f"time_{k}": round(v, 2) for k, v in ((r.history or {}).get("runtime") or {}).get("phases", {}).items()},
             "error": r.error or ""} for r in recs]
    if fmt == "csv":
        keys = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(sys.stdout, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        return
    if fmt != "table":
        raise ConfigError(f"unknown format {fmt!r}; choose one of: table, json, csv")
    table = Table(title=f"{len(recs)} runs in {store.path}")
    for col in ("hash", "method", "mode", "student", "dataset", "seed", "status", "test acc", "test auc", "wall s"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["hash"], r["method"], r["mode"], r["student"], r["test_dataset"], str(r["seed"]),
                      r["status"], f"{r.get('test_acc', float('nan')):.2f}", f"{r.get('test_auc', float('nan')):.2f}",
                      str(r["wall_time"]))
    out.print(table)


def _register_extensions() -> None:
    from kdbench import cli_data, cli_report

    cli_report.register(app)
    cli_data.register(app)


_register_extensions()


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run like Ctrl-C: checkpointed epochs stay, record says interrupted


def main() -> None:
    import signal

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    main()

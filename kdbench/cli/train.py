"""``kdbench run``, ``kdbench grid`` and ``kdbench teacher train``: the commands that train."""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import typer
from rich.table import Table

from kdbench.cli.common import (
    CompileOpt,
    ConfigOpt,
    DataOpt,
    DataRootOpt,
    DatasetsOpt,
    DeviceOpt,
    LogOpt,
    PrecisionOpt,
    ProfileOpt,
    RandomInitOpt,
    ResolverOpt,
    StudentsOpt,
    StudentWeightsOpt,
    TeacherWeightsOpt,
    TestDataRootOpt,
    WorkdirOpt,
    build_config,
    cell_options,
    check_choice,
    check_names,
    cli_errors,
    console,
    data_options,
    escape,
    log,
    loggers,
    out,
    require_pretrained,
    results_store,
    split_list,
    workspace,
)
from kdbench.config import ConfigError

if TYPE_CHECKING:
    from kdbench.grid import Cell, GridReport
    from kdbench.store import ResultsStore
    from kdbench.train.runner import Workspace

teacher_app = typer.Typer(help="Build the cached dual-branch teacher explicitly.")


@cli_errors
def run(
    method: str = typer.Option("tokd", "--method", "-m", help="Distiller (see `kdbench plugins`)."),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="rgb | both | fused (logit methods: the teacher's fused logits); "
        "default: both where supported, else the only mode."),
    student: str = typer.Option("res18t", "--student", "-s", help="res18t | res34t | xception."),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    test_dataset: Optional[str] = typer.Option(None, "--test-dataset", help="Test on another dataset (Table 7)."),
    profile: str = ProfileOpt,
    seed: int = typer.Option(0, "--seed"),
    hp: list[str] = typer.Option([], "--hp", help="Hyper-parameter override key=value (repeatable)."),
    config: Optional[Path] = ConfigOpt,
    teacher_weights: Optional[Path] = TeacherWeightsOpt,
    student_weights: Optional[Path] = StudentWeightsOpt,
    random_init: bool = RandomInitOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the profile's epochs."),
    data: list[str] = DataOpt,
    data_root: Optional[Path] = DataRootOpt,
    test_data_root: Optional[Path] = TestDataRootOpt,
    rotation_dim: Optional[int] = typer.Option(None, "--rotation-dim", help="TOKD: rotation size d."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="TOKD: distillation weight alpha."),
    no_rotation: bool = typer.Option(False, "--no-rotation", help="TOKD: switch the rotation module off."),
    no_projector: bool = typer.Option(False, "--no-projector", help="TOKD: direct matching through a 1x1 adapter."),
    resolver: Optional[str] = ResolverOpt,
    resolver_hp: list[str] = typer.Option([], "--resolver-hp", help="Resolver hyper-parameter key=value, "
                                          "e.g. c=0.4 for cagrad (repeatable)."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    compile_model: bool = CompileOpt,
    workdir: Optional[Path] = WorkdirOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on a terminal (elsewhere: "
                                  "a line per epoch)."),
    log_to: list[str] = LogOpt,
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved configuration, its hash "
                                      "and what it changes against the profile; run nothing."),
) -> None:
    """Train one student with one distiller and store the record."""
    sugar = {"rotation_dim": rotation_dim, "alpha": alpha,
             "rotation": False if no_rotation else None, "projector": False if no_projector else None}
    hp = hp + [f"{k}={v}" for k, v in sugar.items() if v is not None]
    cfg = build_config(method, mode, student, dataset, profile, seed, hp, config, teacher_weights, epochs, test_dataset,
                       data_options(data, data_root), data_options([], test_data_root), student_weights, resolver,
                       resolver_hp)
    require_pretrained(cfg, random_init)
    chosen_loggers = loggers(log_to, config)
    if print_config:
        print_resolved(cfg)
        return
    # imported once the options are known good: a usage error is answered without loading the
    # models and training code (seconds of import time)
    from kdbench.io import locked
    from kdbench.train.runner import run as run_one
    from kdbench.train.runtime import make_runtime

    ws = workspace(workdir)
    store = results_store(ws.store_path)
    done = store.get(cfg.hash)
    if done is None or done.status != "done":
        rt = make_runtime(device, precision, compile_model)
        # the same run started twice: the second waits for the first, then takes its record
        waiting = f"run {cfg.hash} is running in another process; waiting for it"
        with locked(ws.run_dir(cfg.hash), on_wait=lambda: log(waiting)) if rt.world == 1 else nullcontext():
            done = store.get(cfg.hash)
            if done is None or done.status != "done":
                rec = run_one(cfg, ws, store, rt, log=log if rt.is_main else (lambda _m: None),
                              progress=progress and console.is_terminal, loggers=chosen_loggers)
                if rt.is_main:
                    print_metrics(rec)
                return
    log(f"run {cfg.hash} already done (delete it with `kdbench results --delete {cfg.hash}` to redo)")
    print_metrics(done)


def print_resolved(cfg: Any) -> None:
    """The resolved configuration as TOML-like sections on stdout, with its hash and what the
    options and config file changed against the bare profile."""
    from kdbench.config import changed_settings, flatten

    out.print(f"# run {cfg.hash} (cell {cfg.cell}); {cfg.profile} profile", highlight=False, markup=False)
    changed = changed_settings(cfg)
    out.print("# changed against the profile: " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "nothing"),
              highlight=False, markup=False)
    for key, value in flatten(cfg.to_dict()).items():
        out.print(f"{key} = {json.dumps(value, default=str)}", highlight=False, markup=False)


def print_metrics(rec: Any) -> None:
    from kdbench.config import PIPELINE_CHECK, is_pipeline_check

    test = rec.metrics["test"]
    check = f"; {rec.profile} profile: {PIPELINE_CHECK}" if is_pipeline_check(rec.profile) else ""
    table = Table(title=escape(f"{rec.method}/{rec.mode} -> {rec.student} on {rec.test_dataset} (seed {rec.seed}, "
                               f"best val epoch {rec.metrics['best_epoch'] + 1}{check})"))
    for key in ("acc", "auc", "eer", "ap", "video_auc"):
        if key in test:
            table.add_column(f"test {key.upper()} %", justify="right")
    table.add_row(*(f"{test[k]:.2f}" for k in ("acc", "auc", "eer", "ap", "video_auc") if k in test))
    out.print(table)
    out.print(f"record {rec.hash} stored; wall time {rec.wall_time:.1f} s", highlight=False, markup=False)


@cli_errors
def grid(
    spec: str = typer.Argument(..., help="table3 | table4 | table5 | table6 | table7 | fig3, or a TOML/YAML spec file."),
    profile: str = ProfileOpt,
    students: Optional[str] = StudentsOpt,
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods to keep."),
    datasets: Optional[str] = DatasetsOpt,
    resolver: Optional[str] = ResolverOpt,
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    shard_opt: Optional[str] = typer.Option(None, "--shard", help="i/n: run only shard i of n."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and which are done; run nothing."),
    show_config: bool = typer.Option(False, "--show-config", help="With --dry-run: print each cell's resolved "
                                     "configuration too."),
    config: Optional[Path] = ConfigOpt,
    teacher_weights: Optional[Path] = TeacherWeightsOpt,
    student_weights: Optional[Path] = StudentWeightsOpt,
    random_init: bool = RandomInitOpt,
    data: list[str] = DataOpt,
    data_root: Optional[Path] = DataRootOpt,
    test_data_root: Optional[Path] = TestDataRootOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    compile_model: bool = CompileOpt,
    workdir: Optional[Path] = WorkdirOpt,
    executor: str = typer.Option("local", "--executor", help="local: the cells in turn in this process; "
                                 "ray: the cells as Ray tasks over a machine's GPUs or a cluster "
                                 "(the ray extra; docs/cluster.md)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray: the cluster to join, e.g. auto or "
                                          "ray://head:10001 (default: $RAY_ADDRESS, else a new local Ray)."),
    gpus_per_run: Optional[float] = typer.Option(None, "--gpus-per-run", help="Ray: GPUs per run; a fraction "
                                                 "shares a GPU (0.25: four runs on one). Default: 1 when the "
                                                 "cluster has GPUs, else 0."),
    cpus_per_run: Optional[float] = typer.Option(None, "--cpus-per-run", help="Ray: CPUs per run, also its "
                                                 "torch threads (default 1)."),
    log_to: list[str] = LogOpt,
) -> None:
    """Run a grid of cells, skipping finished ones (resumable, shardable; on Ray with --executor ray)."""
    from kdbench.grid import expand, parse_seeds, parse_shard, shard

    check_choice("executor", executor, ["local", "ray"])
    ray_opts = {"--address": address, "--gpus-per-run": gpus_per_run, "--cpus-per-run": cpus_per_run}
    if executor == "local" and any(v is not None for v in ray_opts.values()):
        raise ConfigError(f"{', '.join(k for k, v in ray_opts.items() if v is not None)} needs --executor ray")
    if executor == "ray":
        from kdbench.grid_ray import RaySettings, import_ray

        if device != "auto":
            raise ConfigError("with --executor ray the device follows --gpus-per-run (0: CPU); drop --device")
        settings = RaySettings(address=address, gpus_per_run=gpus_per_run,
                               cpus_per_run=1.0 if cpus_per_run is None else cpus_per_run,
                               precision=precision, compile=compile_model)
        settings.check()
        import_ray()
    check_names(split_list(students) or [], split_list(datasets) or [])
    cells = expand(spec, profile=profile, students=split_list(students), methods=split_list(methods),
                   datasets=split_list(datasets), seeds=parse_seeds(seeds),
                   **cell_options(config, teacher_weights, data, data_root, test_data_root, student_weights,
                                 resolver))
    if student_weights and not any(cell.pretrained_student for cell in cells):
        raise ConfigError(f"grid {spec} has no cell that the paper ran with a pretrained student (table4 and table7 "
                          "do; Table 3's students start from random weights): drop --student-weights")
    for cell in cells:
        require_pretrained(cell.cfg, random_init, student=cell.pretrained_student)
    cells = shard(cells, *parse_shard(shard_opt))
    chosen_loggers = loggers(log_to, config)
    ws = workspace(workdir)
    store = results_store(ws.store_path)
    status = {r.hash: r.status for r in store.query()}
    if dry_run:
        bare = None
        if config is not None:  # the same cells without the file, to show what it changed
            opts = cell_options(None, teacher_weights, data, data_root, test_data_root)
            bare = shard(expand(spec, profile=profile, students=split_list(students), methods=split_list(methods),
                                datasets=split_list(datasets), seeds=parse_seeds(seeds), **opts),
                         *parse_shard(shard_opt))
        dry_run_table(spec, profile, cells, status, config, bare)
        if show_config:
            for cell in cells:
                out.print("")
                print_resolved(cell.cfg)
        return
    if executor == "ray":
        from kdbench.grid_ray import run_grid_ray

        report = run_grid_ray(cells, ws, store, settings, log=log)
    else:
        report = _run_local(cells, ws, store, status, spec, device, precision, compile_model, chosen_loggers)
    summary_table(spec, profile, report)
    out.print(f"grid {spec}: {len(report.ran)} ran, {len(report.done_before)} already done, "
              f"{len(report.failed)} failed", highlight=False, markup=False)
    if report.failed:
        raise typer.Exit(1)


def _run_local(cells: Sequence[Cell], ws: Workspace, store: ResultsStore, status: dict[str, str], spec: str,
               device: str, precision: str, compile_model: bool, chosen_loggers: Sequence[str] = ()) -> GridReport:
    """The cells in turn in this process, sharing one dataset and teacher cache."""
    from kdbench.data.registry import DatasetCache
    from kdbench.grid import run_grid
    from kdbench.train.runner import run as run_one
    from kdbench.train.runtime import make_runtime
    from kdbench.train.teacher_cache import TeacherCache

    rt = make_runtime(device, precision, compile_model)
    dataset_cache = DatasetCache()  # each dataset is generated or decoded once for the whole grid
    teachers = TeacherCache()  # each teacher and feature file is read once for the whole grid
    return run_grid(cells, lambda cell: run_one(cell.cfg, ws, store, rt, spec=cell.spec, log=log,
                                                progress=console.is_terminal, datasets=dataset_cache,
                                                teachers=teachers, loggers=chosen_loggers),
                    lambda cell: status.get(cell.cfg.hash) == "done", log=log)


def variant_text(cell: Any) -> str:
    """What sets a cell apart within its method and mode: its sweep values, and its group's
    label where that is not just the method's name (Table 6's "RGB+Fre+Projector")."""
    parts = list(cell.swept)
    if cell.label.lower() != cell.cfg.method:
        parts.insert(0, cell.label)
    return " ".join(parts)


def dry_run_table(spec: str, profile: str, cells: list[Any], status: dict[str, str], config: Optional[Path],
                  bare: Optional[list[Any]] = None) -> None:
    from kdbench.config import PIPELINE_CHECK, changed_settings, is_pipeline_check
    from kdbench.report.render import print_wide

    check = f": {PIPELINE_CHECK}" if is_pipeline_check(profile) else ""
    table = Table(title=escape(f"grid {spec}: {len(cells)} cells ({profile} profile{check})"))
    for col in ("#", "hash", "method", "mode", "resolver", "student", "dataset", "seed", "variant", "status"):
        table.add_column(col)
    for i, cell in enumerate(cells, 1):
        c = cell.cfg
        table.add_row(str(i), c.hash, c.method, c.mode, c.resolver, c.student, c.test_dataset or c.dataset, str(c.seed),
                      escape(variant_text(cell)), status.get(c.hash, "todo"))
    print_wide(table, out)
    if config is not None and bare is not None and len(bare) == len(cells):
        overrides: dict[str, set[str]] = {}
        for cell, plain in zip(cells, bare):
            for key, value in changed_settings(cell.cfg, plain.cfg).items():
                overrides.setdefault(key, set()).add(json.dumps(value, default=str))
        text = ", ".join(f"{k}={'|'.join(sorted(v))}" for k, v in overrides.items()) or "nothing (same as the profile)"
        out.print(f"--config {config} sets: {text}", highlight=False, markup=False)
    done = sum(status.get(c.cfg.hash) == "done" for c in cells)
    out.print(f"{len(cells)} cells, {done} done, {len(cells) - done} to run", highlight=False)


def summary_table(spec: str, profile: str, report: Any) -> None:
    """Every cell this invocation ran or failed, with its headline metrics."""
    from kdbench.config import PIPELINE_CHECK, is_pipeline_check
    from kdbench.report.render import print_wide

    cells = [(cell, report.records.get(cell.cfg.hash), "") for cell in report.ran]
    cells += [(cell, None, why) for cell, why in report.failed]
    if not cells:
        return
    check = f": {PIPELINE_CHECK}" if is_pipeline_check(profile) else ""
    table = Table(title=escape(f"grid {spec}: cells run now ({profile} profile{check})"))
    for col in ("hash", "method", "mode", "student", "seed", "variant", "test acc", "test auc", "wall s"):
        table.add_column(col, justify="right" if col in ("test acc", "test auc", "wall s") else "left")
    for cell, rec, why in cells:
        c = cell.cfg
        test = (getattr(rec, "metrics", None) or {}).get("test") or {}
        metrics = [f"{test[k]:.2f}" if k in test else "-" for k in ("acc", "auc")]
        wall = f"{rec.wall_time:.0f}" if getattr(rec, "wall_time", None) else "-"
        table.add_row(c.hash, c.method, c.mode, c.student, str(c.seed), escape(variant_text(cell)),
                      *(metrics if not why else [escape(f"failed: {why}"), "", ""]), wall)
    print_wide(table, out)


@teacher_app.command("train")
@cli_errors
def teacher_train(
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    profile: str = ProfileOpt,
    config: Optional[Path] = ConfigOpt,
    teacher_weights: Optional[Path] = TeacherWeightsOpt,
    random_init: bool = RandomInitOpt,
    data: list[str] = DataOpt,
    data_root: Optional[Path] = DataRootOpt,
    device: str = DeviceOpt,
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """Train (or find in the cache) the teacher for a dataset and profile."""
    from kdbench.data.registry import load_dataset
    from kdbench.train.runtime import make_runtime
    from kdbench.train.teacher_cache import ensure_teacher

    cfg = build_config("vanilla", None, "res18t", dataset, profile, 0, [], config, teacher_weights, None,
                       data=data_options(data, data_root))
    require_pretrained(cfg, random_init)
    splits = load_dataset(cfg.dataset, cfg.train.image_size, cfg.data)
    t = ensure_teacher(cfg, splits, workspace(workdir).root, make_runtime(device), log=log,
                       progress=console.is_terminal)
    out.print(json.dumps({"teacher": t.hash, "cached": t.cached, **t.metrics}, indent=2, default=str), markup=False,
              highlight=False)

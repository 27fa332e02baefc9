"""``kdbench table`` and ``kdbench figure``: tables and figures from the results store
(rendering itself lives in ``kdbench.report.render``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from kdbench.cli.common import (
    ConfigOpt,
    DataOpt,
    DatasetsOpt,
    ResolverOpt,
    StudentsOpt,
    StudentWeightsOpt,
    TeacherWeightsOpt,
    WorkdirOpt,
    cell_options,
    check_choice,
    check_names,
    cli_errors,
    find_run,
    log,
    out,
    results_store,
    split_list,
    workspace,
)
from kdbench.config import ConfigError

TABLES = ("1", "3", "4", "5", "6", "7", "resolvers", "balance", "cells")
FORMATS = ("rich", "markdown", "latex", "csv")
SeedsOpt = typer.Option(None, "--seeds", help="Comma-separated seeds to keep (default: all found).")
ProfileOpt = typer.Option(None, "--profile", "-p", help="Profile whose runs to show (default: every profile "
                          "that holds runs for it; smoke, a pipeline check, last).")


@cli_errors
def table(
    number: str = typer.Argument(..., help="1 | 3 | 4 | 5 | 6 | 7 | resolvers (the resolvers spec) | "
                                            "balance (each KD term's gradient beside CE's) | cells (any "
                                            "spec, a row per cell: with --spec)."),
    fmt: str = typer.Option("rich", "--format", help="rich | markdown | latex | csv."),
    profile: Optional[str] = ProfileOpt,
    students: Optional[str] = StudentsOpt,
    datasets: Optional[str] = DatasetsOpt,
    seeds: Optional[str] = SeedsOpt,
    metric: str = typer.Option("acc", "--metric", help="acc | auc (Tables 3, 5, 6, resolvers); cos (resolvers: "
                               "Fig. 4's cosine before/after resolution)."),
    paper: bool = typer.Option(False, "--paper", help="Add the paper's published numbers beside ours."),
    spec: Optional[str] = typer.Option(None, "--spec", help="Table 3: lay out another grid spec's cells "
                                                            "(table3x: every built-in distiller in each mode); "
                                                            "cells: the spec to lay out (a name or a file)."),
    config: Optional[Path] = ConfigOpt,
    teacher_weights: Optional[Path] = TeacherWeightsOpt,
    student_weights: Optional[Path] = StudentWeightsOpt,
    data: list[str] = DataOpt,
    resolver: Optional[str] = ResolverOpt,
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """Render Table 1 (from the models) or Tables 3-7, the resolvers, the loss-balance and any grid's
    cells tables (from the results store).

    Without --profile, every profile that holds runs for the table is shown (csv: the first,
    the others named on stderr)."""
    from kdbench.grid import parse_seeds

    if number not in TABLES:  # the message names it as typed: unknown table 2
        raise ConfigError(f"unknown table {number}; choose one of: {', '.join(TABLES)}")
    check_choice("format", fmt, FORMATS)
    check_choice("metric", metric, ("acc", "auc", "cos") if number == "resolvers" else ("acc", "auc"))
    if spec is not None and number not in ("3", "cells"):
        raise ConfigError(f"--spec applies to Table 3 and the cells table only, not Table {number}")
    if number == "1":
        from kdbench.report.complexity import table1_grid

        emit(table1_grid(paper), fmt)
        return
    if number == "balance":
        balance(fmt, profile, students, datasets, seeds, workdir)
        return
    from kdbench.report.tables import build_tables

    check_names(split_list(students) or [])
    store = open_store(workspace(workdir))
    grids = build_tables(int(number) if number.isdigit() else number, store, profile,
                         students=split_list(students), datasets=split_list(datasets),
                         seeds=parse_seeds(seeds) if seeds else None, metric=metric, paper=paper,
                         options=cell_options(config, teacher_weights, data, student_weights=student_weights,
                                              resolver=resolver), spec=spec)
    if fmt == "csv" and len(grids) > 1:
        others = ", ".join(g.profile for g in grids[1:])
        log(f"csv shows profile {grids[0].profile}; runs of {others} hold this table too: pass --profile NAME")
        grids = grids[:1]
    for i, grid in enumerate(grids):
        if i:
            typer.echo("")
        emit(grid, fmt)


def balance(fmt: str, profile: Optional[str], students: Optional[str], datasets: Optional[str],
            seeds: Optional[str], workdir: Optional[Path]) -> None:
    """The loss-balance table of ``profile``, or of every profile whose runs logged ratios."""
    from kdbench.grid import parse_seeds
    from kdbench.report.tables import NoDataError, balance_table

    check_names(split_list(students) or [])
    store = open_store(workspace(workdir))
    profiles = [profile] if profile else sorted({r.profile for r in store.query() if r.status == "done"})
    grids = []
    for name in profiles or ["cpu"]:
        try:
            grids.append(balance_table(store, name, split_list(students), split_list(datasets),
                                       parse_seeds(seeds) if seeds else None))
        except NoDataError:
            if profile:
                raise
    if not grids:
        raise NoDataError(f"no finished run with loss-balance ratios in {store.path}")
    for i, grid in enumerate(grids[:1] if fmt == "csv" else grids):
        if i:
            typer.echo("")
        emit(grid, fmt)


@cli_errors
def figure(
    name: str = typer.Argument(..., help="3 (accuracy vs alpha) | 4 (gradient cosine) | curves HASH... "
                               "(training curves of stored runs)."),
    hashes: Optional[list[str]] = typer.Argument(None, help="curves: run hashes (a unique prefix is enough).",
                                                 show_default=False),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default <workdir>/figures)."),
    profile: Optional[str] = ProfileOpt,
    students: Optional[str] = StudentsOpt,
    datasets: Optional[str] = DatasetsOpt,
    seeds: Optional[str] = SeedsOpt,
    config: Optional[Path] = ConfigOpt,
    teacher_weights: Optional[Path] = TeacherWeightsOpt,
    student_weights: Optional[Path] = StudentWeightsOpt,
    data: list[str] = DataOpt,
    resolver: Optional[str] = ResolverOpt,
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """Draw Figure 3 or 4, or the training curves of runs, from the results store as PNG; print the paths.

    Without --profile, Figures 3 and 4 are drawn for every profile that holds their runs."""
    from kdbench.grid import parse_seeds
    from kdbench.report.figures import FIGURES, training_curves
    from kdbench.report.tables import PROFILE_ORDER, NoDataError, profile_rank, stored_profiles

    check_choice("figure", name, [*map(str, FIGURES), "curves"])
    ws = workspace(workdir)
    store = open_store(ws)
    folder = out_dir or ws.root / "figures"
    if name == "curves":
        if not hashes:
            raise ConfigError("figure curves needs one or more run hashes (see `kdbench results`)")
        typer.echo(str(training_curves([find_run(store, h) for h in hashes], folder)))
        return
    if hashes:
        raise ConfigError(f"figure {name} takes no run hashes (only `figure curves` does)")
    check_names(split_list(students) or [])
    draw = FIGURES[int(name)]
    args = (split_list(students), split_list(datasets), parse_seeds(seeds) if seeds else None,
            cell_options(config, teacher_weights, data, student_weights=student_weights, resolver=resolver))
    if profile is not None:
        typer.echo(str(draw(store, folder, profile, *args)))
        return
    held = sorted(stored_profiles(store), key=profile_rank) or list(PROFILE_ORDER[2:3])
    drawn = []
    for prof in held:
        try:
            drawn.append(draw(store, folder, prof, *args))
        except NoDataError as exc:
            last = exc
    if not drawn:
        raise last
    for path in drawn:
        typer.echo(str(path))


def open_store(ws: Any) -> Any:
    """The workspace's results store; a missing one is an error (reading never creates it)."""
    from kdbench.report.tables import NoDataError

    if not ws.store_path.is_file():
        raise NoDataError(f"no results store at {ws.store_path}; run `kdbench grid ...` first or pass --workdir")
    return results_store(ws.store_path, readonly=True)


def emit(grid: Any, fmt: str) -> None:
    """The table on stdout; its notes after it (csv: on stderr, so stdout stays machine-readable)."""
    from kdbench.report.render import print_rich, render

    if fmt == "rich":
        print_rich(grid, out)
        return
    body, notes = render(grid, fmt)
    typer.echo(body)
    if fmt == "csv":
        typer.echo(notes, err=True)
    else:
        typer.echo("\n" + notes)

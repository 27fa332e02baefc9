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
    out,
    results_store,
    split_list,
    workspace,
)
from kdbench.config import ConfigError

TABLES = ("1", "3", "4", "5", "6", "7", "resolvers", "balance")
FORMATS = ("rich", "markdown", "latex", "csv")
SeedsOpt = typer.Option(None, "--seeds", help="Comma-separated seeds to keep (default: all found).")
ProfileOpt = typer.Option("cpu", "--profile", "-p", help="Profile whose runs to show.")


@cli_errors
def table(
    number: str = typer.Argument(..., help="1 | 3 | 4 | 5 | 6 | 7 | resolvers (the resolvers spec) | "
                                            "balance (each KD term's gradient beside CE's)."),
    fmt: str = typer.Option("rich", "--format", help="rich | markdown | latex | csv."),
    profile: str = ProfileOpt,
    students: Optional[str] = StudentsOpt,
    datasets: Optional[str] = DatasetsOpt,
    seeds: Optional[str] = SeedsOpt,
    metric: str = typer.Option("acc", "--metric", help="acc | auc (Tables 3, 5, 6, resolvers); cos (resolvers: "
                               "Fig. 4's cosine before/after resolution)."),
    paper: bool = typer.Option(False, "--paper", help="Add the paper's published numbers beside ours."),
    spec: Optional[str] = typer.Option(None, "--spec", help="Table 3 only: lay out another grid spec's cells "
                                                            "(table3x: every built-in distiller in each mode)."),
    config: Optional[Path] = ConfigOpt,
    teacher_weights: Optional[Path] = TeacherWeightsOpt,
    student_weights: Optional[Path] = StudentWeightsOpt,
    data: list[str] = DataOpt,
    resolver: Optional[str] = ResolverOpt,
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """Render Table 1 (from the models) or Tables 3-7, the resolvers and the loss-balance tables (from the
    results store)."""
    from kdbench.grid import parse_seeds

    if number not in TABLES:  # the message names it as typed: unknown table 2
        raise ConfigError(f"unknown table {number}; choose one of: {', '.join(TABLES)}")
    check_choice("format", fmt, FORMATS)
    check_choice("metric", metric, ("acc", "auc", "cos") if number == "resolvers" else ("acc", "auc"))
    if spec is not None and number != "3":
        raise ConfigError(f"--spec applies to Table 3 only, not Table {number}")
    if number == "1":
        from kdbench.report.complexity import table1_grid

        grid = table1_grid(paper)
    elif number == "balance":
        from kdbench.report.tables import balance_table

        check_names(split_list(students) or [])
        grid = balance_table(open_store(workspace(workdir)), profile, split_list(students), split_list(datasets),
                             parse_seeds(seeds) if seeds else None)
    else:
        from kdbench.report.tables import build_table

        check_names(split_list(students) or [])
        store = open_store(workspace(workdir))
        grid = build_table(int(number) if number.isdigit() else number, store, profile, split_list(students),
                           split_list(datasets), parse_seeds(seeds) if seeds else None, metric, paper,
                           cell_options(config, teacher_weights, data, student_weights=student_weights,
                                        resolver=resolver), spec)
    emit(grid, fmt)


@cli_errors
def figure(
    number: int = typer.Argument(..., help="3 (accuracy vs alpha) | 4 (gradient cosine)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default <workdir>/figures)."),
    profile: str = ProfileOpt,
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
    """Draw Figure 3 or 4 from the results store as a PNG and print its path."""
    from kdbench.grid import parse_seeds
    from kdbench.report.figures import FIGURES

    check_choice("figure", number, tuple(FIGURES))
    check_names(split_list(students) or [])
    ws = workspace(workdir)
    store = open_store(ws)
    path = FIGURES[number](store, out_dir or ws.root / "figures", profile, split_list(students),
                           split_list(datasets), parse_seeds(seeds) if seeds else None,
                           cell_options(config, teacher_weights, data, student_weights=student_weights,
                                        resolver=resolver))
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

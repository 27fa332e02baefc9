"""``kdbench table`` and ``kdbench figure``: rendering of tables and figures.

``register(app)`` adds both commands to the main typer app. ``kdbench.cli``
is imported inside the commands only (it imports this module).
Formats: rich (a rich Table), markdown (GitHub pipe table), latex (tabular,
notes as ``%`` comments), csv (machine-readable: every mean ± std cell becomes
``mean``, ``std`` and ``n`` columns, plus ``mark`` for Both; missing = empty;
notes go to stderr).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

import typer
from tabulate import tabulate

from kdbench.tables import MISSING, Entry, Grid, Marked, Paper, Stat

FORMATS = ("rich", "markdown", "latex", "csv")
TABLES = (1, 3, 4, 5, 6, 7)
LATEX = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "≈": r"$\approx$", "–": "--", "−": "-",
         "✓": r"\checkmark", "α": r"$\alpha$", "²": r"$^2$", "%": r"\%", "_": r"\_", "&": r"\&", "#": r"\#",
         "∇": r"$\nabla$", "→": r"$\to$"}


def entry_text(e: Entry) -> str:
    """What a reader sees: "81.20 ± 0.40", "81.20 ± 0.40 (n=2)", "81.20 (n=1) ?", "–"."""
    if e is None:
        return MISSING
    if isinstance(e, str):
        return e
    if isinstance(e, Marked):
        return f"{entry_text(e.stat)} {e.mark}".rstrip()
    if isinstance(e, Paper):
        return MISSING if e.value is None else f"{e.value:.2f} {e.mark}".rstrip()
    text = f"{e.mean:.2f} ± {e.std:.2f}" if e.n >= 2 else f"{e.mean:.2f}"
    return text + (f" (n={e.n})" if e.n < 3 else "")


def latex_text(text: str) -> str:
    return "".join(LATEX.get(ch, ch) for ch in text)


def render(grid: Grid, fmt: str) -> tuple[str, str]:
    """``(table text, notes text)`` in ``fmt`` (markdown, latex or csv)."""
    if fmt == "csv":
        return csv_text(grid), "\n".join(grid.notes)
    rows = [[entry_text(e) for e in row] for row in grid.rows]
    if fmt == "markdown":
        body = tabulate(rows, grid.header, tablefmt="pipe", disable_numparse=True)
        return f"**{grid.title}**\n\n{body}", "\n".join(f"- {n}" for n in grid.notes)
    if fmt == "latex":
        body = tabulate([[latex_text(c) for c in r] for r in rows], [latex_text(h) for h in grid.header],
                        tablefmt="latex_raw", disable_numparse=True)
        return f"% {grid.title}\n{body}", "\n".join(f"% {n}" for n in grid.notes)
    raise ValueError(f"unknown format {fmt!r}")


def csv_text(grid: Grid) -> str:
    ncol = len(grid.header)
    has_stat = [any(isinstance(r[j], (Stat, Marked)) for r in grid.rows) for j in range(ncol)]
    has_mark = [any(isinstance(r[j], (Marked, Paper)) and getattr(r[j], "mark", "") for r in grid.rows)
                for j in range(ncol)]
    header: list[str] = []
    for j, h in enumerate(grid.header):
        header += [h] + ([f"{h} std", f"{h} n"] if has_stat[j] else []) + ([f"{h} mark"] if has_mark[j] else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in grid.rows:
        line: list[Any] = []
        for j, e in enumerate(row):
            stat = e.stat if isinstance(e, Marked) else e if isinstance(e, Stat) else None
            if stat is not None:
                fields: list[Any] = [f"{stat.mean:.4f}", f"{stat.std:.4f}" if stat.n > 1 else "", stat.n]
            else:
                value = e.value if isinstance(e, Paper) else e
                fields = ["" if value is None else value] + (["", ""] if has_stat[j] else [])
            line += fields + ([getattr(e, "mark", "")] if has_mark[j] else [])
        writer.writerow(line)
    return buf.getvalue().rstrip("\n")


def print_rich(grid: Grid, out: Any) -> None:
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    table = Table(title=grid.title)
    for j, h in enumerate(grid.header):
        numeric = any(isinstance(r[j], (Stat, Marked, Paper)) for r in grid.rows)
        table.add_column(h, justify="right" if numeric else "left")
    for row in grid.rows:
        table.add_row(*(Text(entry_text(e)) for e in row))
    width = Measurement.get(out, out.options.update_width(100_000), table).maximum
    console = out if width <= out.width else Console(width=width, file=out.file)
    console.print(table)
    for note in grid.notes:
        console.print(Text(note, style="dim"))


def split_list(text: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


WORKDIR_HELP = "Results store (default ./.kdbench or $KDBENCH_HOME)."
# A grid's cells are defined by these too: pass what `kdbench grid` ran with to find its runs.
ConfigOpt = typer.Option(None, "--config", help="The config file the grid ran with.")
TeacherWeightsOpt = typer.Option(None, "--teacher-weights", help="The teacher weights the grid ran with (matched by content).")
DataOpt = typer.Option([], "--data", help="A dataset option the grid ran with, key=value (repeatable).")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    from kdbench.config import ConfigError

    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")


def check_students(students: Optional[list[str]]) -> None:
    from kdbench.models.students import available_students

    for name in students or []:
        check_choice("student", name, tuple(available_students()))


def table_command(
    number: int = typer.Argument(..., help="1 | 3 | 4 | 5 | 6 | 7."),
    fmt: str = typer.Option("rich", "--format", help="rich | markdown | latex | csv."),
    profile: str = typer.Option("cpu", "--profile", "-p", help="Profile whose runs to tabulate."),
    students: Optional[str] = typer.Option(None, "--students", help="Comma-separated students (default: the spec's)."),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="Comma-separated datasets (default: the spec's)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds to keep (default: all found)."),
    metric: str = typer.Option("acc", "--metric", help="acc | auc (Tables 3, 5, 6)."),
    paper: bool = typer.Option(False, "--paper", help="Add the paper's published numbers beside ours."),
    config: Optional[Path] = ConfigOpt,
    teacher_weights: Optional[Path] = TeacherWeightsOpt,
    data: list[str] = DataOpt,
    workdir: Optional[Path] = typer.Option(None, "--workdir", help=WORKDIR_HELP),
) -> None:
    """Render Table 1 (from the models) or Tables 3-7 (from the results store)."""
    from kdbench.cli import cli_errors

    cli_errors(_table)(number, fmt, profile, students, datasets, seeds, metric, paper, workdir,
                       (config, teacher_weights, data))


def _table(number: int, fmt: str, profile: str, students: Optional[str], datasets: Optional[str],
           seeds: Optional[str], metric: str, paper: bool, workdir: Optional[Path], cell_opts: tuple) -> None:
    from kdbench.cli import cell_options, out, workspace
    from kdbench.grid import parse_seeds

    check_choice("table", number, TABLES)
    check_choice("format", fmt, FORMATS)
    check_choice("metric", metric, ("acc", "auc"))
    if number == 1:
        from kdbench.complexity import table1_grid

        grid = table1_grid(paper)
    else:
        from kdbench.tables import build_table

        check_students(split_list(students))
        store = open_store(workspace(workdir))
        grid = build_table(number, store, profile, split_list(students), split_list(datasets),
                           parse_seeds(seeds) if seeds else None, metric, paper, cell_options(*cell_opts))
    emit(grid, fmt, out)


def open_store(ws: Any) -> Any:
    """The workspace's results store; a missing one is an error (reading never creates it)."""
    from kdbench.store import ResultsStore
    from kdbench.tables import NoDataError

    if not ws.store_path.is_file():
        raise NoDataError(f"no results store at {ws.store_path}; run `kdbench grid ...` first or pass --workdir")
    return ResultsStore(ws.store_path)


def emit(grid: Grid, fmt: str, out: Any) -> None:
    if fmt == "rich":
        print_rich(grid, out)
        return
    body, notes = render(grid, fmt)
    typer.echo(body)
    if fmt == "csv":
        typer.echo(notes, err=True)
    else:
        typer.echo("\n" + notes)


def figure_command(
    number: int = typer.Argument(..., help="3 (accuracy vs alpha) | 4 (gradient cosine)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default <workdir>/figures)."),
    profile: str = typer.Option("cpu", "--profile", "-p"),
    students: Optional[str] = typer.Option(None, "--students"),
    datasets: Optional[str] = typer.Option(None, "--datasets"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds to keep (default: all found)."),
    config: Optional[Path] = ConfigOpt,
    teacher_weights: Optional[Path] = TeacherWeightsOpt,
    data: list[str] = DataOpt,
    workdir: Optional[Path] = typer.Option(None, "--workdir", help=WORKDIR_HELP),
) -> None:
    """Draw Figure 3 or 4 from the results store as a PNG and print its path."""
    from kdbench.cli import cli_errors

    cli_errors(_figure)(number, out_dir, profile, students, datasets, seeds, workdir, (config, teacher_weights, data))


def _figure(number: int, out_dir: Optional[Path], profile: str, students: Optional[str], datasets: Optional[str],
            seeds: Optional[str], workdir: Optional[Path], cell_opts: tuple) -> None:
    from kdbench.cli import cell_options, workspace
    from kdbench.figures import FIGURES
    from kdbench.grid import parse_seeds

    check_choice("figure", number, tuple(FIGURES))
    check_students(split_list(students))
    ws = workspace(workdir)
    store = open_store(ws)
    path = FIGURES[number](store, out_dir or ws.root / "figures", profile, split_list(students),
                           split_list(datasets), parse_seeds(seeds) if seeds else None, cell_options(*cell_opts))
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add ``table`` and ``figure`` to ``app``."""
    app.command("table")(table_command)
    app.command("figure")(figure_command)

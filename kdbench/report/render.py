"""Text formats of a table: rich (a rich Table on a console), markdown (GitHub pipe
table), latex (tabular, notes as ``%`` comments) and csv (machine-readable: every
mean ± std cell becomes ``mean``, ``std`` and ``n`` columns, plus ``mark`` for Both;
missing = empty; notes go to stderr).
"""
from __future__ import annotations

import csv
import io
from typing import Any

from tabulate import tabulate

from kdbench.report.tables import MISSING, Entry, Grid, Marked, Paper, Stat

FORMATS = ("rich", "markdown", "latex", "csv")  # rich: print_rich; the rest: render
LATEX = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "≈": r"$\approx$", "–": "--", "−": "-",
         "✓": r"\checkmark", "α": r"$\alpha$", "²": r"$^2$", "%": r"\%", "_": r"\_", "&": r"\&", "#": r"\#",
         "∇": r"$\nabla$", "→": r"$\to$", "†": r"$^\dagger$"}


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
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(grid.title))  # Text: names in brackets print as written, not as markup
    for j, h in enumerate(grid.header):
        numeric = any(isinstance(r[j], (Stat, Marked, Paper)) for r in grid.rows)
        table.add_column(Text(h), justify="right" if numeric else "left")
    for row in grid.rows:
        table.add_row(*(Text(entry_text(e)) for e in row))
    print_wide(table, out)
    for note in grid.notes:
        out.print(Text(note, style="dim"))


def print_wide(renderable: Any, console: Any) -> None:
    """A rich table at its natural width, even on a narrow or non-terminal console (a log file
    or a pipe would otherwise get every column cut to a few letters)."""
    from rich.console import Console
    from rich.measure import Measurement

    width = Measurement.get(console, console.options.update_width(100_000), renderable).maximum
    (console if width <= console.width else Console(width=width, file=console.file)).print(renderable)

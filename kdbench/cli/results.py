"""``kdbench results``: the stored runs, as a table, JSON or CSV."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from kdbench.cli.common import WorkdirOpt, check_choice, cli_errors, error, escape, log, out, results_store, workspace


@cli_errors
def results(
    fmt: str = typer.Option("table", "--format", help="table | json | csv."),
    delete: Optional[str] = typer.Option(None, "--delete", help="Delete the record with this hash."),
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """List stored runs, or export them."""
    check_choice("format", fmt, ("table", "json", "csv"))
    path = workspace(workdir).store_path
    if delete:
        if not results_store(path).delete(delete):
            error(f"no record {delete} in {path} (see `kdbench results` for the stored hashes)")
            raise typer.Exit(2)
        log(f"deleted {delete}")
        return
    store = results_store(path, readonly=True)
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
    table = Table(title=escape(f"{len(recs)} runs in {store.path}"))
    for col in ("hash", "method", "mode", "student", "dataset", "seed", "status", "test acc", "test auc", "wall s"):
        table.add_column(col)
    for r in rows:
        table.add_row(*map(Text, (r["hash"], r["method"], r["mode"], r["student"], r["test_dataset"], str(r["seed"]),
                                  r["status"], f"{r.get('test_acc', float('nan')):.2f}",
                                  f"{r.get('test_auc', float('nan')):.2f}", str(r["wall_time"]))))
    out.print(table)

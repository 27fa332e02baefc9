"""``kdbench results``: the stored runs, as a table, JSON or CSV, filtered; ``results show``: one run."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from kdbench.cli.common import WorkdirOpt, check_choice, cli_errors, error, escape, find_run, log, out, results_store, workspace
from kdbench.config import PIPELINE_CHECK, is_pipeline_check
from kdbench.report.render import print_wide
from kdbench.store import RunRecord

results_app = typer.Typer(help="List stored runs (filtered, as a table, JSON or CSV), or show one.")
STATUSES = ("done", "running", "failed", "interrupted")


@results_app.callback(invoke_without_command=True)
@cli_errors
def results(
    ctx: typer.Context,
    fmt: str = typer.Option("table", "--format", help="table | json | csv."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Only runs of this distiller."),
    student: Optional[str] = typer.Option(None, "--student", "-s", help="Only runs of this student."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Only runs of this profile."),
    status: Optional[str] = typer.Option(None, "--status", help="Only runs with this status: "
                                         + " | ".join(STATUSES) + "."),
    delete: Optional[str] = typer.Option(None, "--delete", help="Delete the record with this hash."),
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """List stored runs, or export them. `kdbench results show HASH` shows one run in full."""
    if ctx.invoked_subcommand is not None:
        return
    check_choice("format", fmt, ("table", "json", "csv"))
    if status is not None:
        check_choice("status", status, STATUSES)
    path = workspace(workdir).store_path
    if delete:
        if not results_store(path).delete(delete):
            error(f"no record {delete} in {path} (see `kdbench results` for the stored hashes)")
            raise typer.Exit(2)
        log(f"deleted {delete}")
        return
    store = results_store(path, readonly=True)
    equal = {k: v for k, v in (("method", method), ("student", student), ("profile", profile)) if v is not None}
    recs = store.query(" AND ".join(f"{k} = ?" for k in equal) or "1", tuple(equal.values()))
    if status is not None:  # after reading: a running record whose process is gone reads as interrupted
        recs = [r for r in recs if r.status == status]
        equal["status"] = status
    if fmt == "json":
        out.print_json(json.dumps([r.__dict__ for r in recs], default=str))
        return
    rows = [{"hash": r.hash, "method": r.method, "mode": r.mode, "student": r.student, "dataset": r.dataset,
             "test_dataset": r.test_dataset, "profile": r.profile, "seed": r.seed, "status": r.status,
             "changed": changed_text(r),
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
    shown = f" ({', '.join(f'{k} {v}' for k, v in equal.items())})" if equal else ""
    table = Table(title=escape(f"{len(recs)} runs{shown} in {store.path}"))
    for col in ("hash", "method", "mode", "student", "dataset", "profile", "seed", "changed", "status",
                "test acc", "test auc", "wall s"):
        table.add_column(col, justify="right" if col in ("test acc", "test auc", "wall s") else "left")
    for r in rows:
        table.add_row(*(Text(str(v)) for v in (
            r["hash"], r["method"], r["mode"], r["student"], r["test_dataset"],
            r["profile"] + (" *" if is_pipeline_check(r["profile"]) else ""), r["seed"], r["changed"] or "",
            r["status"], f"{r.get('test_acc', float('nan')):.2f}", f"{r.get('test_auc', float('nan')):.2f}",
            r["wall_time"])))
    print_wide(table, out)
    if any(is_pipeline_check(r.profile) for r in recs):
        out.print(Text(f"* {PIPELINE_CHECK}: tiny data, a few epochs; its numbers only show the code runs.",
                       style="dim"))
    if recs:
        out.print(Text("`kdbench results show HASH` shows a run in full (a unique hash prefix is enough).",
                       style="dim"))


def changed_text(rec: RunRecord) -> str:
    """The settings this run changed against its bare profile ("hp.alpha=50 train.epochs=3"); "?"
    for a record made before kdbench kept them."""
    changed = (rec.history or {}).get("changed")
    if changed is None:
        return "?"
    return " ".join(f"{k}={v}" for k, v in changed.items())


@results_app.command("show")
@cli_errors
def show(
    run_hash: str = typer.Argument(..., metavar="HASH", help="A run hash or a unique prefix of one."),
    fmt: str = typer.Option("text", "--format", help="text | json."),
    workdir: Optional[Path] = WorkdirOpt,
) -> None:
    """One run in full: configuration, environment, metrics, per-epoch history and diagnostics."""
    check_choice("format", fmt, ("text", "json"))
    store = results_store(workspace(workdir).store_path, readonly=True)
    rec = find_run(store, run_hash)
    if fmt == "json":
        out.print_json(json.dumps(rec.__dict__, default=str))
        return
    print_record(rec, workspace(workdir).run_dir(rec.hash))


def epoch_table(keys: list[str]) -> Table:
    """A borderless table of one row per epoch: the epoch, then a right-aligned column per key."""
    table = Table(box=None, pad_edge=False)
    for k in ("epoch", *keys):
        table.add_column(k, justify="right")
    return table


def print_record(rec: RunRecord, run_dir: Path) -> None:
    from rich.rule import Rule

    def section(title: str) -> None:
        out.print(Rule(title, align="left", style="dim"))

    def pairs(items: dict[str, Any]) -> None:
        width = max((len(k) for k in items), default=0)
        for k, v in items.items():
            out.print(Text(f"  {k:<{width}}  {v}"))

    history = rec.history or {}
    title = f"run {rec.hash}: {rec.method}/{rec.mode} -> {rec.student} on {rec.test_dataset} " \
            f"({rec.profile} profile, seed {rec.seed}): {rec.status}"
    out.print(Text(title, style="bold"))
    if is_pipeline_check(rec.profile):
        out.print(Text(f"{rec.profile} profile: {PIPELINE_CHECK}", style="yellow"))
    if rec.error:
        out.print(Text(f"error: {rec.error}", style="red"))
    section("result")
    metrics = rec.metrics or {}
    items: dict[str, Any] = {}
    for split in ("test", "val"):
        if metrics.get(split):
            items[split] = "  ".join(f"{k} {v:.2f}" for k, v in metrics[split].items())
    if "best_epoch" in metrics:
        items["best epoch"] = f"{metrics['best_epoch'] + 1} (selected on validation accuracy)"
    teacher = (metrics.get("teacher") or {}).get("test")
    if teacher:
        items["teacher test"] = "  ".join(f"{k} {v:.2f}" for k, v in teacher.items() if isinstance(v, (int, float)))
    items["teacher hash"] = rec.teacher or "-"
    items["wall time"] = f"{rec.wall_time or 0:.1f} s"
    phases = (history.get("runtime") or {}).get("phases")
    if phases:
        items["phases (s)"] = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
    student = run_dir / "student.pt"
    items["student weights"] = str(student) if student.is_file() else "-"
    pairs(items)
    section("changed against the bare profile")
    out.print(Text("  " + (changed_text(rec) or "nothing (the profile's defaults)")))
    section("configuration (resolved; its hash identifies the run)")
    pairs(flat_config(rec.config))
    section("environment (recorded, not hashed)")
    pairs({"device": rec.device, **(rec.versions or {}),
           **{f"runtime.{k}": v for k, v in (history.get("runtime") or {}).items() if k != "phases"}})
    epochs = history.get("epochs") or []
    if epochs:
        section("per-epoch history")
        keys = list(dict.fromkeys(k for row in epochs for k in row if k != "epoch"))
        table = epoch_table(keys)
        for row in epochs:
            table.add_row(str(row["epoch"] + 1), *(number(row.get(k)) for k in keys))
        print_wide(table, out)
    diagnostics = history.get("diagnostics") or []
    if diagnostics:
        section(f"diagnostics ({len(diagnostics)} logged steps; mean per epoch)")
        keys = list(dict.fromkeys(k for row in diagnostics for k in row if k not in ("step", "epoch")))
        table = epoch_table(keys)
        for epoch in sorted({row["epoch"] for row in diagnostics}):
            rows = [row for row in diagnostics if row["epoch"] == epoch]
            means = []
            for k in keys:
                vals = [row[k] for row in rows if isinstance(row.get(k), (int, float))]
                means.append(number(sum(vals) / len(vals)) if vals else "-")
            table.add_row(str(epoch + 1), *means)
        print_wide(table, out)
    if history.get("traceback"):
        section("traceback (kept for a failed run)")
        out.print(Text(history["traceback"]))


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    from kdbench.config import flatten

    return flatten(config)


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)

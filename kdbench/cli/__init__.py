"""The ``kdbench`` command line (typer).

Every anticipated failure (bad option, missing file, broken plugin, NaN loss,
locked store) ends as one line on stderr and a non-zero exit: 2 for a usage
error, 1 for a run that failed. Nothing already computed is lost.

One module per group of commands (``train``, ``plugins``, ``results``, ``report``,
``data``), all built on ``common``; this module only assembles them.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import typer

from kdbench.cli import data, report, results, train
from kdbench.cli.plugins import plugins_app

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="Knowledge-distillation benchmark for facial-forgery detection (TOKD and baselines).")
app.command()(train.run)
app.command()(train.grid)
app.add_typer(train.teacher_app, name="teacher")
app.add_typer(plugins_app, name="plugins")
app.add_typer(results.results_app, name="results")
app.command()(report.table)
app.command()(report.figure)
app.command()(data.prepare)
app.command()(data.predict)
app.command()(data.export)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run like Ctrl-C: checkpointed epochs stay, record says interrupted


def command() -> Any:
    """The click command behind ``app``, with flags shown bare in help: typer labels every
    option with its type, and ``--compile <bool>`` reads as if it took a value."""
    cmd = typer.main.get_command(app)

    def bare_flags(c: Any) -> None:
        for param in c.params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        make_help = c.get_help_option  # --help is made per call, outside c.params

        def help_option(ctx: Any, make_help: Any = make_help) -> Any:
            opt = make_help(ctx)
            if opt is not None:
                opt.metavar = ""
            return opt

        c.get_help_option = help_option
        for sub in getattr(c, "commands", {}).values():
            bare_flags(sub)

    bare_flags(cmd)
    return cmd


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    """kdbench's own warnings (a broken plugin) as one line; others as Python prints them."""
    if category.__module__.startswith("kdbench"):
        from kdbench.cli.common import log

        log(f"warning: {message}")
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main() -> None:
    import signal

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    signal.signal(signal.SIGTERM, _terminate)
    warnings.showwarning = _show_warning
    command()()

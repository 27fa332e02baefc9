"""``kdbench plugins`` and ``kdbench plugins check``: what is installed, and whether it keeps the contract."""
from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from kdbench.cli.common import check_names, cli_errors, escape, log, out

plugins_app = typer.Typer(help="List installed distillers and resolvers, or check one against the contract.")


@plugins_app.callback(invoke_without_command=True)
@cli_errors
def plugins_list(ctx: typer.Context) -> None:
    """Every installed distiller with its modes, defaults and providing distribution; then every
    gradient-conflict resolver (``--resolver``, Both mode)."""
    if ctx.invoked_subcommand is not None:
        return
    from kdbench.distiller import hparam_spec
    from kdbench.plugins import registry

    reg = registry()
    table = Table(title="kdbench distillers", caption=(
        "modes: rgb = the teacher's RGB branch; both = RGB and frequency branch, a term each; "
        "fused = the teacher's fused-head logits (logit methods: it has no per-branch classifier)"))
    for col in ("name", "modes", "defaults", "provided by"):
        table.add_column(col)
    for name, cls in sorted(reg.distillers.items()):
        defaults = ", ".join(f"{k}={v.value}" for k, v in hparam_spec(cls).items())
        table.add_row(Text(name), Text(", ".join(cls.modes)), Text(defaults), Text(reg.providers.get(name, "?")))
    out.print(table)
    resolvers = Table(title="kdbench resolvers (--resolver, Both mode)")
    for col in ("name", "defaults", "provided by", "description"):
        resolvers.add_column(col)
    for name, rcls in sorted(reg.resolvers.items()):
        defaults = ", ".join(f"{k}={v.value}" for k, v in rcls.defaults.items())
        resolvers.add_row(Text(name), Text(defaults), Text(reg.resolver_providers.get(name, "?")),
                          Text(rcls.description))
    out.print(resolvers)
    for name, err in sorted(reg.errors.items()):
        out.print(Text.assemble(("broken plugin", "red"), f" {name}: {err}"), highlight=False)


@plugins_app.command("check")
@cli_errors
def plugins_check(
    name: str = typer.Argument(..., help="Distiller or resolver name (see `kdbench plugins`)."),
    students: str = typer.Option(",".join(("res18t", "res34t", "xception")), "--students",
                                 help="Students a distiller is checked with (resolvers need none)."),
) -> None:
    """Run the contract checks on an installed distiller (or, when no distiller has the name, a
    resolver) and print a pass/fail report."""
    from kdbench.contract import check_distiller, check_resolver
    from kdbench.plugins import get_distiller_class, registry

    reg = registry()
    if name not in reg.distillers and name in reg.resolvers:
        results = check_resolver(name)
    else:
        get_distiller_class(name)  # an unknown or broken name: one line, exit 2, before any model is built
        chosen = [s.strip() for s in students.split(",") if s.strip()]
        check_names(chosen)
        results = check_distiller(name, chosen, progress=log)
    table = Table(title=f"contract checks: {escape(name)}")
    for col in ("student", "mode", "check", "result", "detail"):
        table.add_column(col)
    for r in results:
        table.add_row(Text(r.student), Text(r.mode), Text(r.check), Text("pass", "green") if r.ok else Text("FAIL", "red"),
                      Text(r.detail))
    out.print(table)
    failed = sum(not r.ok for r in results)
    out.print(f"{name}: {len(results) - failed} passed, {failed} failed", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)

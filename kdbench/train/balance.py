"""The loss-balance diagnostic: how hard each weighted distillation term pulls beside CE.

A loss weight is only meaningful beside the classification loss: ``beta = 1000`` may be
tiny for one loss and overwhelming for another, and the same weight changes its effect
with the image size when a loss averages over elements. So on every logging step the
trainer measures, for each weighted term ``k`` the distiller returns,

    ratio_taps(k)    = ||d term_k / d taps||  / ||d CE / d taps||
    ratio_student(k) = ||d term_k / d theta|| / ||d CE / d theta||

where ``taps`` are the student taps the distiller reads (every tap's gradient, batch
included, in one Frobenius norm; a term's gradient is its partial derivative at the
tap, as for Fig. 4's cosine) and ``theta`` are all of the student's parameters (what
its optimiser steps; distiller-owned connectors are not in it, CE does not reach them).
A ratio below ``LOW`` means the term barely moves the student; above ``HIGH`` it drowns
CE. Nothing here changes the plugin contract: the terms are what ``forward`` returns.
docs/tables.md ("Loss balance") has the definition and how to read it.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

LOW, HIGH = 1e-3, 1e3
WHERE = ("taps", "student")  # diagnostics keys: f"balance_{where}/{term}"
PHASES = ("start", "middle", "end")
# Names a distiller's weight hyper-parameter conventionally has (RepDistiller's -a/-b, the
# paper's alpha); a term's own ``<term>_weight`` wins. No contract: only used to word advice.
WEIGHT_NAMES = ("alpha", "beta", "weight", "lambda", "lam", "loss_weight")


def key(where: str, term: str) -> str:
    return f"balance_{where}/{term}"


def _norm(grads: Iterable[Tensor | None]) -> float:
    total = sum(float(g.detach().float().square().sum()) for g in grads if g is not None)
    return math.sqrt(total)


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


def measure(kd: Mapping[str, Tensor], ce: Tensor, views: Mapping[str, Tensor], taps: Mapping[str, Tensor],
            params: Sequence[Tensor]) -> tuple[dict[str, float], dict[str, list[Tensor]]]:
    """The ratios of each term in ``kd`` to ``ce``, and each term's gradient at ``views``.

    ``views``: the tensors the distiller was given (a view of each tap, so a term's gradient
    stops there); ``taps``: the taps themselves, where CE's gradient arrives through the
    backbone; ``params``: the student's parameters. Every graph is retained for the step's
    own backward; nothing is accumulated into ``.grad`` (training is unchanged).
    Returns ``({balance_taps/term: r, balance_student/term: r}, {term: [grad per view]})``."""
    names = [k for k, t in views.items() if t.requires_grad]
    params = [p for p in params if p.requires_grad]
    ratios: dict[str, float] = {}
    tap_grads: dict[str, list[Tensor]] = {}
    if not names:
        return ratios, tap_grads
    ce_in = [taps[k] for k in names] + params
    ce_g = torch.autograd.grad(ce, ce_in, retain_graph=True, allow_unused=True)
    ce_taps, ce_student = _norm(ce_g[:len(names)]), _norm(ce_g[len(names):])
    inputs = [views[k] for k in names] + params
    for term, value in kd.items():
        if not value.requires_grad:
            continue
        g = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
        at_taps = [gi if gi is not None else torch.zeros_like(x) for gi, x in zip(g[:len(names)], inputs)]
        tap_grads[term] = at_taps
        ratios[key("taps", term)] = _ratio(_norm(at_taps), ce_taps)
        if params:  # a caller without the student's parameters gets the taps' ratio only
            ratios[key("student", term)] = _ratio(_norm(g[len(names):]), ce_student)
    return ratios, tap_grads


def terms_of(row: Mapping[str, Any]) -> list[str]:
    """The terms a diagnostics row measured, in order."""
    prefix = "balance_taps/"
    return [k[len(prefix):] for k in row if k.startswith(prefix)]


def out_of_range(value: float) -> bool:
    return not (LOW <= value <= HIGH)  # NaN counts as out of range: a term without a gradient


def flagged(row: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Terms of a diagnostics row (or a phase of ``summarise``) outside [LOW, HIGH] by either measure."""
    out = {}
    for term in terms_of(row):
        taps, student = row[key("taps", term)], row.get(key("student", term))
        if out_of_range(taps) or (student is not None and out_of_range(student)):
            out[term] = (taps, math.nan if student is None else student)
    return out


def weight_hparam(term: str, hparams: Mapping[str, Any]) -> str | None:
    """The hyper-parameter that most likely scales ``term`` (by name; None when none is found)."""
    bare = term.removeprefix("kd_")
    for name in (f"{term}_weight", f"{bare}_weight", *WEIGHT_NAMES):
        value = hparams.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return name
    return None


def warning(row: Mapping[str, Any], hparams: Mapping[str, Any]) -> str | None:
    """One line naming each out-of-range term, its ratios and the hyper-parameter to move; None if balanced."""
    bad = flagged(row)
    if not bad:
        return None
    parts = []
    for term, (taps, student) in bad.items():
        hp = weight_hparam(term, hparams)
        low = (taps if math.isfinite(taps) else student) < LOW
        advice = f"{'raise' if low else 'lower'} {hp}" if hp else f"{'raise' if low else 'lower'} its weight"
        parts.append(f"{term} is {taps:.1e} of CE at the taps ({student:.1e} over the student's parameters): {advice}")
    return (f"loss balance: {'; '.join(parts)} (outside [{LOW:g}, {HIGH:g}]; "
            "`kdbench table balance`, docs/tables.md)")


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{start|middle|end: {term: {"step": s, "taps": r, "student": r}}}`` from the diagnostics rows
    that carry ratios: the first, the one nearest the middle step, and the last."""
    rows = [r for r in rows if terms_of(r)]
    if not rows:
        return {}
    mid_step = (rows[0]["step"] + rows[-1]["step"]) / 2
    middle = min(rows, key=lambda r: abs(r["step"] - mid_step))
    return {phase: {term: {"step": row["step"], "taps": row[key("taps", term)],
                           "student": row.get(key("student", term), math.nan)} for term in terms_of(row)}
            for phase, row in zip(PHASES, (rows[0], middle, rows[-1]))}


def phase_row(summary: Mapping[str, Mapping[str, Mapping[str, float]]], phase: str) -> dict[str, float]:
    """One phase of a ``summarise`` result as a diagnostics-like row (for ``flagged``/``warning``)."""
    out: dict[str, float] = {}
    for term, values in summary.get(phase, {}).items():
        out[key("taps", term)] = values["taps"]
        out[key("student", term)] = values["student"]
    return out

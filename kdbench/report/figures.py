"""Figures 3 and 4 from the results store (matplotlib, Agg backend, PNG).

Records are found exactly as the tables find them: expand the spec, look up
each cell's ``cfg.cell`` hash. Fig. 3: TOKD test accuracy against alpha (the
``fig3`` spec), one line per dataset (and student), mean ± std band over seeds.
Fig. 4: the cosine between the RGB and frequency distillation gradients over
training steps: TOKD for every rotation size d (``table5`` and TOKD-Both of
``table3``; solid = the whole latent, dashed = the rotated block), the
baselines' Both runs of ``table3`` and TOKD without rotation (``table6``'s
"RGB+Fre+Projector"); one panel per dataset and student.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kdbench.config import PIPELINE_CHECK, is_pipeline_check  # noqa: E402
from kdbench.grid import Cell  # noqa: E402
from kdbench.report.tables import METHOD_NAMES, STUDENT_NAMES, Lookup, NoDataError, dataset_name, test_metric  # noqa: E402
from kdbench.store import ResultsStore, RunRecord  # noqa: E402

NO_ROTATION_LABEL = "RGB+Fre+Projector"
MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "P", "<", ">")


def profile_caption(profile: str) -> str:
    """"cpu profile", or "smoke profile: pipeline check, not a benchmark"."""
    return f"{profile} profile" + (f": {PIPELINE_CHECK}" if is_pipeline_check(profile) else "")


@dataclass
class Curve:
    panel: tuple[str, str]  # (dataset, student)
    label: str
    steps: np.ndarray
    values: np.ndarray
    dashed: bool = False
    group: str = ""  # curves of one group share a colour


def smooth(values: np.ndarray, window: int | None = None) -> np.ndarray:
    """Centred moving average; the window shrinks at the ends (no padding bias)."""
    n = len(values)
    window = window or max(1, min(9, n // 10))
    if window <= 1 or n < 3:
        return values
    kernel = np.ones(window)
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones(n), kernel, mode="same")


def series(look: Lookup, cell: Cell, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``key`` from the diagnostics of all seeds of ``cell``, averaged per step."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for rec in look.records(cell):
        for row in (rec.history or {}).get("diagnostics", []):
            v = row.get(key)
            if isinstance(v, (int, float)) and np.isfinite(v):
                by_step[int(row["step"])].append(float(v))
    if not by_step:
        return None
    steps = np.array(sorted(by_step))
    return steps, np.array([np.mean(by_step[s]) for s in steps])


def gradient_curves(look: Lookup, profile: str, students: Sequence[str] | None,
                    datasets: Sequence[str] | None) -> list[Curve]:
    """Every Fig. 4 curve with data, one per (cell, quantity); a cell shared by several specs counts once."""
    opts = dict(profile=profile, students=students, datasets=datasets)
    tokd = [c for c in look.cells("table5", **opts) + look.cells("table3", methods=["tokd"], **opts)
            if c.cfg.mode == "both"]
    baselines = [c for c in look.cells("table3", **opts) if c.cfg.mode == "both" and c.cfg.method != "tokd"]
    no_rot = [c for c in look.cells("table6", **opts) if c.label == NO_ROTATION_LABEL]
    plan: list[tuple[Cell, str, str, bool, str]] = []
    for c in tokd:
        d = c.cfg.hp.get("rotation_dim")
        plan += [(c, "grad_cos_full", f"TOKD d={d}", False, f"d{d}"),
                 (c, "grad_cos_rot", f"TOKD d={d}, rotated block", True, f"d{d}")]
    plan += [(c, "grad_cos", f"{METHOD_NAMES.get(c.cfg.method, c.cfg.method)} Both", False, c.cfg.method)
             for c in baselines]
    plan += [(c, "grad_cos_full", "TOKD, no rotation", False, "norot") for c in no_rot]
    curves, seen = [], set()
    for cell, key, label, dashed, group in plan:
        if (cell.cfg.cell, key) in seen:
            continue
        seen.add((cell.cfg.cell, key))
        found = series(look, cell, key)
        if found is not None:
            curves.append(Curve((cell.cfg.dataset, cell.cfg.student), label, *found, dashed=dashed, group=group))
    return curves


def panel_title(panel: tuple[str, str]) -> str:
    return f"{dataset_name(panel[0])}, student {STUDENT_NAMES.get(panel[1], panel[1])}"


def figure4(store: ResultsStore, out_dir: Path, profile: str = "cpu", students: Sequence[str] | None = None,
            datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            options: Mapping[str, Any] | None = None) -> Path:
    """Gradient cosine over training steps; raises ``NoDataError`` when no run has diagnostics."""
    look = Lookup(store, seeds, options or {})
    curves = gradient_curves(look, profile, students, datasets)
    if not curves:
        raise NoDataError(f"no gradient diagnostics for the table5/table3/table6 specs ({profile} profile) in "
                          f"{store.path}; run e.g. `kdbench grid table5` first")
    panels = list(dict.fromkeys(c.panel for c in curves))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    colours = {g: f"C{i % 10}" for i, g in enumerate(dict.fromkeys(c.group for c in curves))}
    for ax, panel in zip(axes[0], panels):
        for i, c in enumerate(c for c in curves if c.panel == panel):
            # lines that coincide (e.g. two distillers whose terms agree) stay distinguishable: each curve
            # has its own marker, placed at its own offset, so one never hides another's
            every = max(1, len(c.steps) // 8)
            ax.plot(c.steps, smooth(c.values), ls="--" if c.dashed else "-", lw=1.4, color=colours[c.group],
                    marker=MARKERS[i % len(MARKERS)], markersize=4, markevery=(i * every // 5 % every, every),
                    label=c.label)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("training step")
        ax.set_ylabel("cos(∇L_KD_RGB, ∇L_KD_Fre)")
        ax.set_title(panel_title(panel))
        ax.legend(fontsize=7, ncol=2)
    seeds_txt = ", ".join(map(str, sorted(look.seen)))
    fig.suptitle(f"Fig. 4: RGB vs frequency gradient cosine\n({profile_caption(profile)}; mean over seeds {seeds_txt}; "
                 "moving average)", fontsize=10)
    return save(fig, out_dir / f"fig4-{Path(profile).stem}.png")


def figure3(store: ResultsStore, out_dir: Path, profile: str = "cpu", students: Sequence[str] | None = None,
            datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            options: Mapping[str, Any] | None = None) -> Path:
    """TOKD test accuracy against alpha (log axis); raises ``NoDataError`` when no fig3 cell has a run."""
    look = Lookup(store, seeds, options or {})
    lines: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for cell in look.cells("fig3", profile=profile, students=students, datasets=datasets):
        stat = look.stat(cell, test_metric("acc"))
        if stat is not None:
            lines[(cell.cfg.dataset, cell.cfg.student)].append((float(cell.variant["alpha"]), stat.mean, stat.std))
    if not lines:
        raise NoDataError(f"no finished fig3 runs ({profile} profile) in {store.path}; run `kdbench grid fig3` first")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (ds, st), pts in lines.items():
        a, m, s = (np.array(v) for v in zip(*sorted(pts)))
        line, = ax.plot(a, m, marker="o", label=f"{dataset_name(ds)} ({STUDENT_NAMES.get(st, st)})")
        ax.fill_between(a, m - s, m + s, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("α (α1 = α2)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    seeds_txt = ", ".join(map(str, sorted(look.seen)))
    ax.set_title(f"Fig. 3: TOKD sensitivity to α ({profile_caption(profile)}; mean ± std over seeds {seeds_txt})",
                 fontsize=9)
    return save(fig, out_dir / f"fig3-{Path(profile).stem}.png")


def training_curves(records: Sequence[RunRecord], out_dir: Path) -> Path:
    """Per-epoch curves of stored runs: each training-loss term (left) and the validation
    metrics (right); one colour per run, one line style per term or metric."""
    runs = [r for r in records if (r.history or {}).get("epochs")]
    if not runs:
        raise NoDataError(f"no per-epoch history in run(s) {', '.join(r.hash for r in records)} "
                          "(a failed run keeps none)")
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = ("-", "--", ":", "-.")
    for i, rec in enumerate(runs):
        rows = (rec.history or {})["epochs"]
        epochs = np.array([row["epoch"] + 1 for row in rows])
        name = f"{rec.hash[:8]} {rec.method}/{rec.mode} {rec.student}"
        terms = sorted({k for row in rows for k in row if k.startswith("loss_")})
        for j, key in enumerate(terms):
            loss_ax.plot(epochs, [row.get(key, np.nan) for row in rows], ls=styles[j % len(styles)],
                         marker=MARKERS[j % len(MARKERS)], markersize=4, color=f"C{i % 10}",
                         label=f"{name}: {key[5:]}")
        for j, key in enumerate(k for k in ("val_acc", "val_auc") if k in rows[0]):
            val_ax.plot(epochs, [row.get(key, np.nan) for row in rows], ls=styles[j], marker=MARKERS[j],
                        markersize=4, color=f"C{i % 10}", label=f"{name}: {key[4:]}")
    loss_ax.set(xlabel="epoch", ylabel="training loss (epoch mean, weighted term)", title="losses per term")
    val_ax.set(xlabel="epoch", ylabel="validation (%)", title="validation metrics")
    for ax in (loss_ax, val_ax):
        ax.legend(fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    profiles = ", ".join(dict.fromkeys(profile_caption(r.profile) for r in runs))
    fig.suptitle(f"Training curves ({profiles})", fontsize=10)
    return save(fig, out_dir / f"curves-{'-'.join(r.hash[:8] for r in runs[:4])}.png")


def save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


FIGURES = {3: figure3, 4: figure4}

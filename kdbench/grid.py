"""Grids of runs: spec files expanded into cells, run resumably and shardably.

A spec (TOML/YAML) lists students, datasets and groups of methods/modes with
fixed hyper-parameters and sweeps. Every cell is a resolved ``RunConfig``;
its hash identifies it, so finished cells are skipped, failed ones are
recorded and retried on the next invocation, and ``--shard i/n`` splits the
cells deterministically between machines that share (or later merge) a store.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from kdbench.config import ConfigError, RunConfig, load_config_file, resolve, resolve_mode

BUILTIN_SPECS = ("table3", "table3x", "table4", "table5", "table6", "table7", "fig3", "resolvers")


@dataclass(frozen=True)
class Cell:
    """One run of a grid, with the labels tables use to place it."""

    cfg: RunConfig
    spec: str
    label: str  # the group's label (or the method name)
    variant: dict[str, Any] = field(default_factory=dict)  # this cell's sweep values
    pretrained_student: bool = False  # the paper ran it from an ImageNet-pretrained student

    @property
    def swept(self) -> list[str]:
        """This cell's sweep values as ``key=value``, in the spec's order (tables and listings)."""
        return [f"{k}={v}" for k, v in self.variant.items()]


def load_spec(name: str) -> tuple[str, dict[str, Any]]:
    """A built-in spec by name, or a user's TOML/YAML file."""
    if name in BUILTIN_SPECS:
        text = resources.files("kdbench.specs").joinpath(f"{name}.toml").read_text()
        import tomllib

        return name, tomllib.loads(text)
    path = Path(name)
    if path.is_file():
        return path.stem, load_config_file(path)
    raise ConfigError(f"unknown grid spec {name!r}; choose one of: {', '.join(BUILTIN_SPECS)} (or a .toml/.yaml file)")


def _listify(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expand(
    name: str,
    profile: str = "cpu",
    students: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    config: dict[str, Any] | None = None,
    teacher: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    test_data: dict[str, Any] | None = None,
    student_weights: str | None = None,
    resolver: str | None = None,
) -> list[Cell]:
    """All cells of spec ``name``; options narrow or replace the spec's own lists.

    ``student_weights`` (or a config's ``[student] weights``) go to the cells of groups with
    ``pretrained_student = true`` (a group's key, else the spec's), and only to those: the paper's
    Tables 4 and 7 start the student from ImageNet weights, its Table 3 does not. ``resolver``
    replaces the spec's resolvers; a group's or this one applies to its Both-mode cells only
    (an RGB cell has nothing to combine)."""
    spec_name, spec = load_spec(name)
    groups = spec.get("group") or []
    if not groups:
        raise ConfigError(f"grid spec {spec_name!r} has no [[group]]")
    cells: list[Cell] = []
    seen: set[str] = set()
    for group in groups:
        group_students = list(students or group.get("students") or spec.get("students") or ["res18t"])
        group_datasets = list(datasets or group.get("datasets") or spec.get("datasets") or ["synthetic"])
        test_sets = list(group.get("test_datasets") or spec.get("test_datasets") or [None])
        sweep = group.get("sweep", {})
        keys = list(sweep)
        group_resolvers = _listify(group.get("resolvers", [None]))
        pretrained = bool(group.get("pretrained_student", spec.get("pretrained_student", False)))
        for method in _listify(group.get("methods", [])):
            if methods and method not in methods:
                continue
            for mode, res, student, dataset, test_ds, values, seed in itertools.product(
                _listify(group.get("modes", [None])), group_resolvers, group_students, group_datasets, test_sets,
                itertools.product(*(_listify(sweep[k]) for k in keys)), seeds,
            ):
                variant = dict(zip(keys, values))
                res = resolver if resolver is not None else res
                if res is not None and resolve_mode(method, mode) != "both":
                    res = None  # an RGB cell has nothing to combine: the plain cell, once (deduplicated below)
                cfg = resolve(method=method, mode=mode, student=student, dataset=dataset, profile=profile,
                              seed=seed, hp={**group.get("hp", {}), **variant}, config=config, teacher=teacher,
                              test_dataset=test_ds, data=data, test_data=test_data,
                              student_weights=student_weights if pretrained else None, resolver=res,
                              resolver_hp=group.get("resolver_hp", {}).get(res, {}) if res else None)
                if not pretrained and cfg.student_weights:  # a config file's [student] weights
                    cfg = replace(cfg, student_weights=None, student_weights_sha256=None)
                if cfg.hash in seen:
                    continue
                seen.add(cfg.hash)
                cells.append(Cell(cfg, spec_name, group.get("label", method), variant, pretrained))
    return cells


def shard(cells: Iterable[Cell], index: int, count: int) -> list[Cell]:
    """Cells of shard ``index`` (1-based) of ``count``, in grid order. The cells, ranked by
    (student, method, mode, hash), are dealt round-robin, so every shard gets the same number of
    cells (within one) and a like share of each student and method: shards run at once finish
    together. The split depends only on the set of cells, so the processes or machines
    running one grid command get disjoint shares that cover it."""
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard must be i/n with 1 <= i <= n, got {index}/{count}")
    cells = list(cells)
    ranked = sorted(cells, key=lambda c: (c.cfg.student, c.cfg.method, c.cfg.mode, c.cfg.hash))
    mine = {c.cfg.hash for c in ranked[index - 1::count]}
    return [c for c in cells if c.cfg.hash in mine]


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 1, 1
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like 2/4, got {text!r}") from None
    return i, n


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be a comma-separated list of integers, got {text!r}") from None


@dataclass
class GridReport:
    done_before: list[Cell] = field(default_factory=list)
    ran: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)  # cell hash -> what run_cell returned


def headline(rec: Any) -> str:
    """A finished run in a few words: "test acc 81.20 %, AUC 88.10 %"."""
    test = ((getattr(rec, "metrics", None) or {}).get("test")) or {}
    parts = [f"{k.upper() if k != 'acc' else 'test acc'} {test[k]:.2f} %" for k in ("acc", "auc") if k in test]
    return ", ".join(parts)


def eta_text(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def run_grid(cells: Sequence[Cell], run_cell: Callable[[Cell], Any], is_done: Callable[[Cell], bool],
             log: Callable[[str], None] = print) -> GridReport:
    """Run every cell not yet done; a failing cell is recorded and the grid goes on.
    KeyboardInterrupt stops the grid (the cell's last epoch is checkpointed). After each cell a
    line gives its headline metric and the grid's progress, with an ETA from the cells run so far
    (cells differ in cost, so it settles as the grid goes)."""
    report = GridReport()
    todo: list[Cell] = []
    for cell in cells:
        (report.done_before if is_done(cell) else todo).append(cell)
    if not todo:
        log(f"grid: all {len(cells)} cells already done; nothing to run")
        return report
    log(f"grid: {len(todo)} of {len(cells)} cells to run ({len(report.done_before)} already done)")
    start = time.perf_counter()
    for n, cell in enumerate(todo, 1):
        c = cell.cfg
        via = f"+{c.resolver}" if c.resolver != "none" else ""
        log(f"[{n}/{len(todo)}] {c.method}/{c.mode}{via} {c.student} {c.dataset} seed {c.seed} {cell.variant or ''}".rstrip())
        t0 = time.perf_counter()
        try:
            rec = run_cell(cell)
            report.ran.append(cell)
            report.records[c.hash] = rec
            said = headline(rec)
            outcome = f"done in {time.perf_counter() - t0:.0f} s" + (f": {said}" if said else "")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded in the store by the runner; the grid goes on
            report.failed.append((cell, f"{type(exc).__name__}: {exc}"))
            outcome = f"failed: {type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - start
        left = len(todo) - n
        eta = f", ETA {eta_text(elapsed / n * left)}" if left else ""
        log(f"[{n}/{len(todo)}] {c.method}/{c.mode} {c.student} seed {c.seed} {outcome} | grid {n}/{len(todo)} "
            f"cells, {eta_text(elapsed)} elapsed{eta}")
    return report

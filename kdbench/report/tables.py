"""Tables 3-7 from the results store (Table 1 is in ``kdbench.report.complexity``).

A table is assembled by expanding its grid spec with the user's options and
looking up every cell's ``cfg.cell`` hash (the config without the seed) in the
store, so one run counts in every table whose spec contains its config. Each
table cell is the mean ± sample std over the seeds found; nothing is ever
filled in: a cell without a finished run shows "–". The result is a ``Grid``,
printed by ``kdbench.report.render`` as rich, markdown, LaTeX or CSV.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence, TypeVar

from kdbench.config import PIPELINE_CHECK, ConfigError, is_pipeline_check
from kdbench.grid import Cell, expand
from kdbench.store import ResultsStore, RunRecord

MISSING = "–"
K = TypeVar("K", bound=Hashable)
METHOD_ORDER = ("tokd", "at", "pkt", "vid", "sp", "fitnet", "rkd", "cc", "crd", "reviewkd", "kd", "dkd", "dist")
METHOD_NAMES = {"vanilla": "Vanilla", "tokd": "TOKD", "at": "AT", "pkt": "PKT", "vid": "VID", "sp": "SP",
                "fitnet": "FitNet", "rkd": "RKD", "cc": "CC", "crd": "CRD", "reviewkd": "ReviewKD", "kd": "KD",
                "dkd": "DKD", "dist": "DIST"}
STUDENT_NAMES = {"res18t": "Res18-T", "res34t": "Res34-T", "xception": "Xception"}
BOTH_NOTE = ("Both = the RGB term plus the same loss on the teacher's frequency branch (its own connector), "
             "with the same weight.")
FUSED_NOTE = ("Fused = a logit distiller (KD, DKD, DIST) on the teacher's fused-head logits: the teacher has "
              "no per-branch classifier, so these methods have neither an RGB nor a Both variant.")
UNBALANCED = "†"
UNBALANCED_NOTE = ("†: a distillation term's gradient was below 1e-3 or above 1e3 of CE's at the start of "
                   "training (in a seed's run): its weight is far off, or the term carries nothing here (with two "
                   "classes DKD's non-target and DIST's inter-class terms have no gradient: docs/baselines.md); "
                   "`kdbench table balance` has the ratios.")
MARK_NOTE = ("Mark on Both vs RGB: ↑/↓ when |mean_Both − mean_RGB| > SE = sqrt(s_RGB²/n_RGB + s_Both²/n_Both); "
             "≈ when within one SE (noise); ? when a cell has a single seed (no error estimate).")


class NoDataError(ValueError):
    """Nothing in the store to draw or tabulate."""


@dataclass(frozen=True)
class Stat:
    """Seeds of one table cell."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof 1); 0 for a single seed."""
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))


@dataclass(frozen=True)
class Marked:
    """A statistic with a direction mark (Both vs RGB)."""

    stat: Stat
    mark: str


@dataclass(frozen=True)
class Paper:
    """A published number (never ours), optionally with the paper's own direction mark."""

    value: float | None
    mark: str = ""


Entry = str | Stat | Marked | Paper | None


@dataclass
class Grid:
    title: str
    header: list[str]
    rows: list[list[Entry]]
    notes: list[str] = field(default_factory=list)
    runs: int = 0  # finished records found for its cells (0: every cell is "–")
    profile: str = ""


def direction(rgb: Stat | None, both: Stat | None) -> str:
    """↑/↓ when Both differs from RGB by more than one standard error of the difference, ≈ within it,
    ? when either side has a single seed (no error estimate), "" when either is missing."""
    if rgb is None or both is None:
        return ""
    if rgb.n < 2 or both.n < 2:
        return "?"
    diff = both.mean - rgb.mean
    se = math.sqrt(rgb.std ** 2 / rgb.n + both.std ** 2 / both.n)
    if abs(diff) <= se:
        return "≈"
    return "↑" if diff > 0 else "↓"


def paper_direction(rgb: float | None, both: float | None) -> str:
    if rgb is None or both is None:
        return ""
    return "↑" if both > rgb else "↓" if both < rgb else "="


@lru_cache(maxsize=1)
def paper_results() -> dict[str, Any]:
    """The paper's published numbers (``kdbench/paper_results.json``)."""
    return json.loads(resources.files("kdbench").joinpath("paper_results.json").read_text())


def paper_dataset(dataset: str) -> tuple[str | None, bool]:
    """The paper's dataset for ours, and whether it is only a reference (e.g. synthetic -> FF++(c40))."""
    data = paper_results()
    if dataset in data["datasets"]:
        return data["datasets"][dataset], False
    ref = data["reference_for_unmapped"].get(dataset)
    return ref, ref is not None


def dataset_name(dataset: str) -> str:
    return paper_results()["datasets"].get(dataset, dataset)


def paper_label(dataset: str) -> str:
    name, ref = paper_dataset(dataset)
    return f"paper {name}" + (" (reference, not ours)" if ref else "") if name else "paper"


def paper_notes(tables: str, datasets: Iterable[str]) -> list[str]:
    notes = [f"paper: {paper_results()['source'].split(', Tables')[0]}, {tables} (published numbers, not ours)."]
    for ds in dict.fromkeys(datasets):
        name, ref = paper_dataset(ds)
        if ref:
            notes.append(f"paper numbers beside {ds!r} are the paper's {name}, for reference: a different dataset.")
        elif name is None:
            notes.append(f"the paper has no numbers for {ds!r}.")
    return notes


@dataclass
class Lookup:
    """Cell lookups against one store, with the seed filter; remembers the seeds it saw."""

    store: ResultsStore
    seeds: Sequence[int] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # cell-defining grid options (config, teacher, data)
    seen: set[int] = field(default_factory=set)
    found: set[str] = field(default_factory=set)  # hashes of the records used

    def cells(self, spec: str, **select: Any) -> list[Cell]:
        """The cells of ``spec`` as `kdbench grid` made them with the same options."""
        return expand(spec, **select, **self.options)

    def records(self, cell: Cell) -> list[RunRecord]:
        recs = [r for r in self.store.by_cell(cell.cfg.cell) if self.seeds is None or r.seed in self.seeds]
        self.seen.update(r.seed for r in recs)
        self.found.update(r.hash for r in recs)
        return recs

    def stat(self, cell: Cell, get: Callable[[RunRecord], Any]) -> Stat | None:
        values = []
        for rec in self.records(cell):
            try:
                v = get(rec)
            except (KeyError, TypeError):
                continue
            if isinstance(v, (int, float)) and math.isfinite(v):
                values.append(float(v))
        return Stat(tuple(values)) if values else None


def test_metric(metric: str) -> Callable[[RunRecord], Any]:
    return lambda rec: (rec.metrics or {})["test"][metric]


def teacher_metric(metric: str) -> Callable[[RunRecord], Any]:
    return lambda rec: (rec.metrics or {})["teacher"]["test"][metric]


def common_notes(look: Lookup, metric: str, profile: str, what: str = "") -> list[str]:
    """The note every table ends with; ``what`` names the values where they are not test metrics."""
    seeds = ", ".join(map(str, sorted(look.seen))) or "none found"
    what = what or f"Test {metric.upper()} (%) at the epoch selected on validation accuracy"
    return [f"{what}; mean ± sample std over seeds ({seeds}); profile {profile!r}; (n=k): only k < 3 seeds; "
            f"{MISSING}: no finished run."]


def ordered(values: Iterable[K]) -> list[K]:
    return list(dict.fromkeys(values))


def table3(look: Lookup, profile: str, students: Sequence[str] | None, datasets: Sequence[str] | None,
           metric: str = "acc", paper: bool = False, spec: str = "table3") -> Grid:
    """Rows student x dataset; Vanilla, then RGB and Both for each method, Both marked against RGB;
    one Fused column for a logit method (``spec``: e.g. ``table3x``, the extended Table 3)."""
    cells = look.cells(spec, profile=profile, students=students, datasets=datasets)
    swept = ordered(k for c in cells for k in c.variant)
    if swept:  # a Table 3 column holds one configuration per method and mode
        raise ConfigError(f"spec {spec} sweeps {', '.join(swept)}: a Table 3 column holds one configuration; "
                          f"render it with `kdbench table cells --spec {spec}`")
    get = test_metric(metric)
    stats = {(c.cfg.dataset, c.cfg.student, c.cfg.method, c.cfg.mode): look.stat(c, get) for c in cells}
    unbalanced = {(c.cfg.dataset, c.cfg.student, c.cfg.method, c.cfg.mode): off_balance(look.records(c)) for c in cells}
    methods = [m for m in METHOD_ORDER if any(k[2] == m for k in stats)]
    methods += ordered(k[2] for k in stats if k[2] not in methods and k[2] != "vanilla")
    fused = {k[2] for k in stats if k[3] == "fused"}
    header = ["Dataset", "Student", "Vanilla"] + [f"{METHOD_NAMES.get(m, m)} {mode}" for m in methods
                                                  for mode in (("Fused",) if m in fused else ("RGB", "Both"))]
    rows: list[list[Entry]] = []
    pub = paper_results()["table3"]
    for ds in ordered(c.cfg.dataset for c in cells):
        for st in ordered(c.cfg.student for c in cells):
            row: list[Entry] = [dataset_name(ds), STUDENT_NAMES.get(st, st), stats.get((ds, st, "vanilla", "rgb"))]
            for m in methods:
                flag = {mode: UNBALANCED if unbalanced.get((ds, st, m, mode)) else "" for mode in ("rgb", "both", "fused")}

                def flagged(mode: str) -> Entry:  # a cell marked † alone (RGB, Fused; Both adds its direction)
                    value = stats.get((ds, st, m, mode))
                    return Marked(value, flag[mode]) if value is not None and flag[mode] else value

                if m in fused:
                    row.append(flagged("fused"))
                    continue
                rgb, both = stats.get((ds, st, m, "rgb")), stats.get((ds, st, m, "both"))
                row += [flagged("rgb"),
                        Marked(both, f"{direction(rgb, both)} {flag['both']}".strip()) if both is not None else None]
            rows.append(row)
            if paper:
                name, _ = paper_dataset(ds)
                ref = pub.get(name, {}).get(st, {}) if metric == pub["metric"] else {}
                prow: list[Entry] = [paper_label(ds), STUDENT_NAMES.get(st, st), Paper(ref.get("vanilla"))]
                for m in methods:
                    if m in fused:
                        prow.append(Paper(None))
                        continue
                    p_rgb, p_both = ref.get(m, {}).get("rgb"), ref.get(m, {}).get("both")
                    prow += [Paper(p_rgb), Paper(p_both, paper_direction(p_rgb, p_both))]
                rows.append(prow)
    notes = [BOTH_NOTE, *([FUSED_NOTE] if fused else []), MARK_NOTE, *common_notes(look, metric, profile)]
    if any(unbalanced.values()):
        notes.append(UNBALANCED_NOTE)
    if paper:
        notes += paper_notes("Table 3 (non-pretrained students)", (c.cfg.dataset for c in cells))
        if metric != pub["metric"]:
            notes.append("the paper's Table 3 reports accuracy only.")
    title = "Table 3" if spec == "table3" else f"Table 3 ({spec})"
    return Grid(f"{title}: distillers, RGB vs Both (test {metric.upper()} %)", header, rows, notes)


def table4(look: Lookup, profile: str, students: Sequence[str] | None, datasets: Sequence[str] | None,
           metric: str = "acc", paper: bool = False) -> Grid:
    """Xception (vanilla), the teacher (from the records' teacher metrics) and the TOKD student; Acc and AUC."""
    cells = look.cells("table4", profile=profile, students=students, datasets=datasets)
    keys = ordered((c.cfg.dataset, c.cfg.student) for c in cells)
    multi = len({s for _, s in keys}) > 1
    header = ["Model"]
    for ds, st in keys:
        prefix = dataset_name(ds) + (f" {STUDENT_NAMES.get(st, st)}" if multi else "")
        header += [f"{prefix} Acc", f"{prefix} AUC"]
        if paper:
            header += [f"{paper_label(ds)} Acc", f"{paper_label(ds)} AUC"]
    pub = paper_results()["table4"]
    rows: list[list[Entry]] = []
    students = ordered(st for _, st in keys)
    names = " / ".join(STUDENT_NAMES.get(st, st) for st in students)
    # the spec's group labels (also the paper's row keys) -> what the rows really hold
    shown = {"Xception": f"Vanilla {names}", "Teacher": "Teacher", "Student": f"TOKD student {names}"}
    for label in ("Xception", "Teacher", "Student"):
        row: list[Entry] = [shown[label]]
        for ds, st in keys:
            here = [c for c in cells if (c.cfg.dataset, c.cfg.student) == (ds, st)]
            for m in ("acc", "auc"):
                if label == "Teacher":
                    row.append(teacher_stat(look, here, m))
                else:
                    row.append(next((look.stat(c, test_metric(m)) for c in here if c.label == label), None))
            if paper:
                ref = pub.get(paper_dataset(ds)[0] or "", {}).get(label, {})
                row += [Paper(ref.get("acc")), Paper(ref.get("auc"))]
        rows.append(row)
    notes = ["Teacher: the dual-branch teacher these runs distilled from (each distinct teacher counted once).",
             *common_notes(look, "acc/auc", profile)]
    if paper:
        notes += paper_notes("Table 4 (ImageNet-pretrained Xception student and teacher branches)",
                             (ds for ds, _ in keys))
    return Grid(f"Table 4: vanilla {names} vs teacher vs TOKD student", header, rows, notes)


def teacher_stat(look: Lookup, cells: Sequence[Cell], metric: str) -> Stat | None:
    by_teacher: dict[str, float] = {}
    for cell in cells:
        for rec in look.records(cell):
            try:
                by_teacher.setdefault(rec.teacher or rec.hash, float(teacher_metric(metric)(rec)))
            except (KeyError, TypeError, ValueError):
                continue
    return Stat(tuple(by_teacher.values())) if by_teacher else None


def table5(look: Lookup, profile: str, students: Sequence[str] | None, datasets: Sequence[str] | None,
           metric: str = "acc", paper: bool = False) -> Grid:
    """TOKD accuracy against the rotation size d; rows dataset x student."""
    cells = look.cells("table5", profile=profile, students=students, datasets=datasets)
    dims = ordered(c.variant["rotation_dim"] for c in cells)
    header = ["Dataset", "Student", *(f"d = {d}" for d in dims)]
    pub = paper_results()["table5"]
    rows: list[list[Entry]] = []
    for ds in ordered(c.cfg.dataset for c in cells):
        for st in ordered(c.cfg.student for c in cells):
            by_d = {c.variant["rotation_dim"]: look.stat(c, test_metric(metric)) for c in cells
                    if (c.cfg.dataset, c.cfg.student) == (ds, st)}
            rows.append([dataset_name(ds), STUDENT_NAMES.get(st, st), *(by_d.get(d) for d in dims)])
            if paper:
                ok = metric == pub["metric"] and st == pub["student"]
                ref = pub.get(paper_dataset(ds)[0] or "", {}) if ok else {}
                rows.append([paper_label(ds), STUDENT_NAMES.get(st, st), *(Paper(ref.get(str(d))) for d in dims)])
    notes = [*common_notes(look, metric, profile)]
    if paper:
        notes += paper_notes("Table 5 (FF++(c40), Res18-T, alpha = 10; accuracy)", (c.cfg.dataset for c in cells))
    return Grid(f"Table 5: TOKD rotation size d (test {metric.upper()} %)", header, rows, notes)


COMPONENTS = ("RGB", "Fre", "Projector", "Rotation")


def table6(look: Lookup, profile: str, students: Sequence[str] | None, datasets: Sequence[str] | None,
           metric: str = "acc", paper: bool = False) -> Grid:
    """Ablation rows (labels of the spec's groups) with ✓ columns; one column per dataset (x student)."""
    cells = look.cells("table6", profile=profile, students=students, datasets=datasets)
    keys = ordered((c.cfg.dataset, c.cfg.student) for c in cells)
    multi = len({s for _, s in keys}) > 1
    header = ["Row", *COMPONENTS]
    for ds, st in keys:
        header.append(dataset_name(ds) + (f" {STUDENT_NAMES.get(st, st)}" if multi else ""))
        if paper:
            header.append(paper_label(ds))
    pub = {frozenset(r["components"]): r for r in paper_results()["table6"]["rows"]}
    rows: list[list[Entry]] = []
    for label in ordered(c.label for c in cells):
        parts = frozenset(p for p in label.split("+") if p in COMPONENTS)
        row: list[Entry] = [label, *("✓" if p in parts else "" for p in COMPONENTS)]
        for ds, st in keys:
            cell = next(c for c in cells if (c.label, c.cfg.dataset, c.cfg.student) == (label, ds, st))
            row.append(look.stat(cell, test_metric(metric)))
            if paper:
                ok = metric == "acc" and st == paper_results()["table6"]["student"]
                row.append(Paper(pub.get(parts, {}).get(paper_dataset(ds)[0] or "") if ok else None))
        rows.append(row)
    notes = [BOTH_NOTE, *common_notes(look, metric, profile)]
    if paper:
        notes += paper_notes("Table 6 (non-pretrained Xception student; accuracy)", (ds for ds, _ in keys))
    return Grid(f"Table 6: TOKD ablation (test {metric.upper()} %)", header, rows, notes)


def table7(look: Lookup, profile: str, students: Sequence[str] | None, datasets: Sequence[str] | None,
           metric: str = "auc", paper: bool = False) -> Grid:
    """Cross-dataset: AUC and EER of vanilla and TOKD trained on one dataset and tested on another."""
    cells = look.cells("table7", profile=profile, students=students, datasets=datasets)
    pub = paper_results()["table7"]
    setting = f"{pub['train']} → {pub['test']}"
    header = ["Train", "Test", "Student", "Method", "AUC", "EER"]
    header += [f"paper AUC ({setting})", f"paper EER ({setting})"] if paper else []
    rows: list[list[Entry]] = []
    for c in cells:
        test = c.cfg.test_dataset or c.cfg.dataset
        row: list[Entry] = [dataset_name(c.cfg.dataset), dataset_name(test), STUDENT_NAMES.get(c.cfg.student, c.cfg.student),
                            c.label, look.stat(c, test_metric("auc")), look.stat(c, test_metric("eer"))]
        if paper:
            same = (paper_dataset(c.cfg.dataset)[0], paper_dataset(test)[0], c.cfg.student) == \
                   (pub["train"], pub["test"], pub["student"])
            ref = pub["rows"].get(c.cfg.method, {}) if same else {}
            row += [Paper(ref.get("auc")), Paper(ref.get("eer"))]
        rows.append(row)
    notes = ["EER: lower is better.", *common_notes(look, "auc/eer", profile)]
    if paper:
        notes += paper_notes("Table 7 (trained on FF++(c40), tested on Celeb-DF)",
                             (x for c in cells for x in (c.cfg.dataset, c.cfg.test_dataset or c.cfg.dataset)))
    return Grid("Table 7: cross-dataset testing", header, rows, notes)


def off_balance(records: Iterable[RunRecord]) -> bool:
    """Whether any run's loss balance at the start of training is outside [LOW, HIGH]."""
    from kdbench.train import balance

    return any(balance.flagged(balance.phase_row((r.history or {}).get("balance") or {}, "start"))
               for r in records)


def geomean(values: Sequence[float]) -> float:
    """Ratios span orders of magnitude: seeds are averaged in log space; 0 if any is 0 (a term
    without a gradient, e.g. DKD's non-target part with two classes); NaN if any is negative,
    infinite or NaN."""
    if not values or any(not (v >= 0 and math.isfinite(v)) for v in values):
        return math.nan
    if min(values) == 0:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def settings(rec: RunRecord) -> str:
    """The run's hyper-parameters that differ from its distiller's defaults, and its resolver, e.g.
    "alpha=100, resolver=pcgrad"."""
    from kdbench.plugins import get_distiller_class

    try:
        defaults = get_distiller_class(rec.method).defaults
    except Exception:  # noqa: BLE001 - a plugin no longer installed: show every value
        defaults = {}
    hp = rec.config.get("hp") or {}
    changed = [f"{k}={v}" for k, v in sorted(hp.items()) if k not in defaults or defaults[k].value != v]
    resolver = rec.config.get("resolver") or "none"
    return ", ".join([*changed, *([f"resolver={resolver}"] if resolver != "none" else [])])


def balance_table(store: ResultsStore, profile: str, students: Sequence[str] | None,
                  datasets: Sequence[str] | None, seeds: Sequence[int] | None) -> Grid:
    """Every finished run of ``profile`` that logged loss-balance ratios, one row per cell and term:
    each term's gradient norm over CE's at the distiller's taps and over the student's parameters,
    at the start, middle and end of training (geometric mean over seeds); † outside [LOW, HIGH]."""
    from kdbench.train import balance

    groups: dict[tuple, list[RunRecord]] = {}
    for rec in store.query("profile = ? AND status = 'done'", (profile,)):
        if (students and rec.student not in students) or (datasets and rec.dataset not in datasets) \
                or (seeds is not None and rec.seed not in seeds) or not (rec.history or {}).get("balance"):
            continue
        groups.setdefault((rec.dataset, rec.student, rec.method, rec.mode, rec.cell), []).append(rec)
    if not groups:
        raise NoDataError(f"no finished run of profile {profile!r} with loss-balance ratios in {store.path}; "
                          "they are logged on every logging step (train.log_every > 0) since kdbench 0.2")
    order = {m: i for i, m in enumerate(("vanilla", *METHOD_ORDER))}
    header = ["Dataset", "Student", "Method", "Mode", "Settings", "Term", "n",
              *(f"taps {p}" for p in balance.PHASES), *(f"student {p}" for p in balance.PHASES), "flag"]
    rows: list[list[Entry]] = []
    labels = {key: settings(recs[0]) for key, recs in groups.items()}  # "" (the defaults) first
    for key in sorted(groups, key=lambda k: (k[0], k[1], order.get(k[2], len(order)), k[2], k[3], labels[k])):
        ds, st, method, mode, _ = key
        recs = groups[key]
        summaries = [(r.history or {})["balance"] for r in recs]
        for term in ordered(t for s in summaries for t in s.get("start", {})):
            def at(where: str, phase: str) -> float:
                return geomean([s[phase][term][where] for s in summaries if term in s.get(phase, {})])

            values = {(w, p): at(w, p) for w in balance.WHERE for p in balance.PHASES}
            # NaN over the student's parameters: not measured (a run with a resolver), not flagged
            start = {balance.key(w, term): values[(w, "start")] for w in balance.WHERE
                     if w == "taps" or not math.isnan(values[(w, "start")])}
            flag = balance.flagged(start)
            word = ""
            if flag:
                low = min(v for v in start.values() if math.isfinite(v)) < balance.LOW if any(
                    math.isfinite(v) for v in start.values()) else False
                word = f"{UNBALANCED} {'too weak' if low else 'too strong'}"
            rows.append([dataset_name(ds), STUDENT_NAMES.get(st, st), METHOD_NAMES.get(method, method),
                         mode.upper() if mode == "rgb" else mode.capitalize(), labels[key] or "defaults",
                         term, str(len(recs)),
                         *(f"{values[('taps', p)]:.1e}" for p in balance.PHASES),
                         *(MISSING if math.isnan(v) else f"{v:.1e}" for v in (values[("student", p)]
                                                                            for p in balance.PHASES)), word])
    notes = [f"Loss balance, profile {profile!r}: ||d term/d x|| / ||d CE/d x|| with x the student taps the "
             "distiller reads (taps) or all the student's parameters (student), at the first logging step "
             "(start), the one nearest mid-training (middle) and the last (end); geometric mean over n seeds.",
             f"{UNBALANCED}: outside [{balance.LOW:g}, {balance.HIGH:g}] at the start by either measure: the term "
             "barely moves the student (too weak) or drowns CE (too strong); its weight is far off. "
             "Late in training CE's gradient shrinks as the training set is fitted, so end ratios grow "
             "for every method. docs/tables.md, \"Loss balance\".",
             f"student {MISSING}: not measured; a run with a resolver measures at the taps only (its terms' "
             "graphs end there: the resolved gradient is injected at the taps)."]
    return Grid(f"Loss balance: distillation terms beside CE ({profile} profile)", header, rows, notes)


SPECS: dict[int | str, str] = {3: "table3", 4: "table4", 5: "table5", 6: "table6", 7: "table7"}
PROFILE_ORDER = ("paper", "gpu128", "cpu", "smoke")  # with no --profile: benchmarks first, the pipeline check last
RESOLVER_NAMES = {"none": "Both", "pcgrad": "Both + PCGrad", "cagrad": "Both + CAGrad"}
RESOLVER_MARK_NOTE = ("Mark on a resolver vs Both (the plain sum, `none`): ↑/↓ when the difference of the means "
                      "exceeds one standard error of it (sqrt(s1²/n1 + s2²/n2)); ≈ within it; ? with a single seed.")


def late_cosine(key: str) -> Callable[[RunRecord], Any]:
    """The mean of a logged cosine over the second half of a run's steps (Fig. 4's late regime)."""
    def get(rec: RunRecord) -> Any:
        diags = (rec.history or {})["diagnostics"]
        last = max(d["step"] for d in diags)
        return sum(vals) / len(vals) if (vals := [d[key] for d in diags if d["step"] >= last / 2 and key in d]) \
            else None
    return get


def resolvers_table(look: Lookup, profile: str, students: Sequence[str] | None, datasets: Sequence[str] | None,
                    metric: str = "acc", paper: bool = False) -> Grid:
    """Rows dataset x student x distiller; one column per resolver of the ``resolvers`` spec, each
    marked against the plain sum. ``metric="cos"``: Fig. 4's cosine over the second half of
    training instead, before resolution for `none` and after it for the others (no marks)."""
    cells = look.cells("resolvers", profile=profile, students=students, datasets=datasets)
    cos = metric == "cos"
    get = (lambda c: late_cosine("grad_cos" if c.cfg.resolver == "none" else "grad_cos_resolved")) if cos \
        else (lambda c: test_metric(metric))
    stats = {(c.cfg.dataset, c.cfg.student, c.cfg.method, c.cfg.resolver): look.stat(c, get(c)) for c in cells}
    methods = [m for m in METHOD_ORDER if any(k[2] == m for k in stats)]
    methods += ordered(k[2] for k in stats if k[2] not in methods)
    resolvers = ordered(c.cfg.resolver for c in cells)
    header = ["Dataset", "Student", "Distiller", *(RESOLVER_NAMES.get(r, f"Both + {r}") for r in resolvers)]
    rows: list[list[Entry]] = []
    for ds in ordered(c.cfg.dataset for c in cells):
        for st in ordered(c.cfg.student for c in cells):
            for m in methods:
                base = stats.get((ds, st, m, "none"))
                row: list[Entry] = [dataset_name(ds), STUDENT_NAMES.get(st, st), METHOD_NAMES.get(m, m)]
                for r in resolvers:
                    v = stats.get((ds, st, m, r))
                    row.append(v if r == "none" or v is None or cos else Marked(v, direction(base, v)))
                rows.append(row)
    notes = [BOTH_NOTE, "Resolvers combine the two branches' KD gradients at the student taps (docs/resolvers.md)."]
    if cos:
        notes.append("Cosine between the RGB and frequency KD gradients at the taps (Fig. 4: per sample, batch "
                     "mean), averaged over the second half of training: before resolution in the Both column, "
                     "between the two rows the resolver applied in the others (CAGrad only reweights: equal to "
                     "before). TOKD's Both column is its own cosine, in its rotated space.")
    else:
        notes.append(RESOLVER_MARK_NOTE)
    notes += common_notes(look, metric, profile, what="Cosine (-1..1)" if cos else "")
    title = "Fig. 4 cosine before/after resolution" if cos else f"test {metric.upper()} %"
    return Grid(f"Gradient-conflict resolvers in Both mode ({title})", header, rows, notes)


CELLS_MARK_NOTE = ("Mark against Vanilla (the spec's vanilla cell, same dataset and student): ↑/↓ when the difference "
                   "of the means exceeds one standard error of it, SE = sqrt(s_V²/n_V + s²/n); ≈ within it; ? when "
                   "either has a single seed.")


def cell_name(cell: Cell, with_mode: bool = True) -> str:
    """A row of the cells table: the group's label (or the method, with its mode where the spec
    has several), the resolver where one is set, then the cell's sweep values."""
    method = cell.cfg.method
    name = cell.label if cell.label.lower() != method else \
        f"{METHOD_NAMES.get(method, method)}{f' {cell.cfg.mode}' if with_mode else ''}"
    resolver = [f"+ {cell.cfg.resolver}"] if cell.cfg.resolver != "none" else []
    return " ".join([name, *resolver, *cell.swept])


def cells_table(look: Lookup, profile: str, students: Sequence[str] | None, datasets: Sequence[str] | None,
                metric: str = "acc", paper: bool = False, spec: str = "table3") -> Grid:
    """Any grid spec as it is written: one row per cell (its label, resolver and sweep values, in
    the spec's order), one column per dataset x student, each marked against the spec's vanilla
    cell. The layout for a spec that sweeps hyper-parameters, such as Fig. 3's alpha sweep."""
    cells = look.cells(spec, profile=profile, students=students, datasets=datasets)
    columns = ordered((c.cfg.dataset, c.cfg.student) for c in cells)
    modes = {m: {c.cfg.mode for c in cells if c.cfg.method == m} for m in {c.cfg.method for c in cells}}
    named = [(cell_name(c, len(modes[c.cfg.method]) > 1), c) for c in cells]
    get = test_metric(metric)
    stats = {(name, c.cfg.dataset, c.cfg.student): look.stat(c, get) for name, c in named}
    references = {name for name, c in named if c.cfg.method == "vanilla"}
    vanilla = {(c.cfg.dataset, c.cfg.student): stats[name, c.cfg.dataset, c.cfg.student]
               for name, c in named if name in references}
    header = ["Cell", *(f"{dataset_name(ds)} {STUDENT_NAMES.get(st, st)}" for ds, st in columns)]
    rows: list[list[Entry]] = []
    for name in ordered(name for name, _ in named):
        row: list[Entry] = [name]
        for ds, st in columns:
            stat, ref = stats.get((name, ds, st)), vanilla.get((ds, st))
            if stat is not None and ref is not None and name not in references:
                row.append(Marked(stat, direction(ref, stat)))
            else:
                row.append(stat)
        rows.append(row)
    notes = [*([CELLS_MARK_NOTE] if vanilla else []), *common_notes(look, metric, profile)]
    return Grid(f"Grid {spec}: every cell (test {metric.upper()} %)", header, rows, notes)


BUILDERS: dict[int | str, Callable[..., Grid]] = {3: table3, 4: table4, 5: table5, 6: table6, 7: table7,
                                                   "resolvers": resolvers_table}


def build_table(number: int | str, store: ResultsStore, profile: str = "cpu", students: Sequence[str] | None = None,
                datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None, metric: str = "acc",
                paper: bool = False, options: Mapping[str, Any] | None = None, spec: str | None = None) -> Grid:
    """Table ``number`` (3-7, ``"resolvers"`` or ``"cells"``) from ``store``; ``seeds`` None keeps every seed
    found; ``options``: the cell-defining options the grid ran with (``config``, ``teacher``, ``data``,
    ``test_data``); ``spec``: another grid spec laid out as Table 3 (``table3x``: every distiller), or
    the spec the cells table lays out (required there).
    Its notes say when runs it cannot show are stored: of other profiles, or of students or
    datasets outside the spec's lists (Table 6's spec is Xception-only, a res18t ablation is not)."""
    look = Lookup(store, seeds, options or {})
    if number == "cells":
        if spec is None:
            raise ConfigError("the cells table lays out a grid spec: pass --spec NAME (a built-in spec or a file)")
        grid = cells_table(look, profile, students, datasets, metric, paper, spec=spec)
    elif spec is not None:
        if number != 3:
            raise ConfigError(f"--spec applies to Table 3 and the cells table only, not Table {number}")
        grid = table3(look, profile, students, datasets, metric, paper, spec=spec)
    else:
        grid = BUILDERS[number](look, profile, students, datasets, metric, paper)
    grid.runs, grid.profile = len(look.found), profile
    grid.title += f", {profile} profile"
    if is_pipeline_check(profile):
        grid.title += f" ({PIPELINE_CHECK})"
        grid.notes.insert(0, f"{PIPELINE_CHECK}: profile {profile!r} runs tiny data for a few epochs to exercise "
                             "the code; its numbers are not a benchmark.")
    held = stored_profiles(store)
    if not grid.runs and held:
        grid.notes.append(f"no finished runs of these cells for profile {profile!r}; runs are stored for "
                          f"{profile_counts(held)}: pass --profile NAME.")
    if (grid.runs or profile in held) and (spec or number in SPECS):
        grid.notes += outside_notes(spec or SPECS[number], store, profile, students, datasets, seeds, options or {})
    return grid


def build_tables(number: int | str, store: ResultsStore, profile: str | None = None, **kwargs: Any) -> list[Grid]:
    """With a profile: its table. Without: the table of every profile that has runs for it
    (benchmark profiles first); when none has, the cpu profile's, whose notes say what is stored."""
    if profile is not None:
        return [build_table(number, store, profile, **kwargs)]
    grids = [g for p in sorted(stored_profiles(store), key=profile_rank)
             if (g := build_table(number, store, p, **kwargs)).runs]
    return grids or [build_table(number, store, "cpu", **kwargs)]


def profile_rank(profile: str) -> tuple[int, str]:
    return (PROFILE_ORDER.index(profile) if profile in PROFILE_ORDER else len(PROFILE_ORDER), profile)


def stored_profiles(store: ResultsStore) -> dict[str, int]:
    """Finished runs per profile."""
    return store.counts("profile", status="done")


def profile_counts(held: Mapping[str, int]) -> str:
    return ", ".join(f"{p} ({n} run{'s' * (n != 1)})" for p, n in sorted(held.items(), key=lambda kv: profile_rank(kv[0])))


def outside_notes(spec: str, store: ResultsStore, profile: str, students: Sequence[str] | None,
                  datasets: Sequence[str] | None, seeds: Sequence[int] | None, options: Mapping[str, Any]) -> list[str]:
    """A note for stored runs of this table's configurations that the table leaves out because
    their student or dataset is not in its lists, with the option that shows them."""
    notes = []
    shown = Lookup(store, seeds, options).cells(spec, profile=profile, students=students, datasets=datasets)
    for what, chosen, column in (("student", students, "student"), ("dataset", datasets, "dataset")):
        if chosen is not None:
            continue
        listed = ordered(getattr(c.cfg, column) for c in shown)
        others = [v for v in store.distinct(column, status="done", profile=profile) if v not in listed]
        if not others:
            continue
        look = Lookup(store, seeds, options)
        try:
            cells = look.cells(spec, profile=profile, **{f"{what}s": others})
        except Exception:  # noqa: BLE001 - a stored name no longer installed cannot be shown anyway
            continue
        found = ordered(getattr(c.cfg, column) for c in cells if look.records(c))
        if found:
            notes.append(f"{len(look.found)} stored run(s) of this table's configurations with {what} "
                         f"{', '.join(found)} are not shown (the spec lists {', '.join(listed)}): "
                         f"pass --{what}s {','.join(found)}.")
    return notes

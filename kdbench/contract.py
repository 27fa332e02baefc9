"""Contract checks for any installed distiller or resolver (``kdbench plugins check NAME``).

Each check builds the distiller the way the trainer does (shapes probed from
a real student and a small teacher) and verifies one promise of the plugin
contract, reporting pass/fail with the reason instead of raising.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.distiller import Distiller, StepInfo, reduce_taps
from kdbench.models.students import STUDENTS, build_student
from kdbench.models.taps import TappedModel, probe_shapes
from kdbench.models.teacher import DualBranchTeacher
from kdbench.plugins import get_distiller_class, get_resolver_class
from kdbench.resolver import Resolver

IMAGE_SIZE = 48


@dataclass
class CheckResult:
    student: str
    mode: str
    check: str
    ok: bool
    detail: str = ""


@dataclass
class Bench:
    """A student, a frozen teacher and a batch: what one distiller step needs."""

    student: TappedModel
    teacher: DualBranchTeacher
    x: Tensor
    y: Tensor

    def shapes(self) -> tuple[dict, dict]:
        return probe_shapes(self.student, IMAGE_SIZE), probe_shapes(self.teacher, IMAGE_SIZE)

    def teacher_taps(self, d: Distiller) -> dict[str, Tensor]:
        with torch.no_grad():
            _, taps = self.teacher(self.x)
        return reduce_taps(taps, d.teacher_taps(), d.teacher_reductions())

    def terms(self, d: Distiller) -> tuple[dict[str, Tensor], Tensor]:
        logits, taps = self.student(self.x)
        extra = {"index": torch.arange(len(self.y))} if d.wants_index else {}
        terms = d({k: taps[k] for k in d.student_taps()}, self.teacher_taps(d), self.y, **extra)
        return terms, logits


def _bench(student: str, seed: int = 0) -> Bench:
    torch.manual_seed(seed)
    teacher = DualBranchTeacher("res10t", image_size=IMAGE_SIZE, proj_channels=32).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE).clamp(-1, 1)
    return Bench(build_student(student), teacher, x, torch.tensor([0, 1, 0, 1]))


def _build(cls: type[Distiller], mode: str, bench: Bench, seed: int = 0) -> Distiller:
    torch.manual_seed(seed)
    s_shapes, t_shapes = bench.shapes()
    d = cls(mode, s_shapes, t_shapes)
    d.prepare(bench.y)  # as the trainer does: the bench's batch is the whole training split
    return d


def _checks(cls: type[Distiller], mode: str, bench: Bench) -> Iterator[tuple[str, Callable[[], str | None]]]:
    """(name, check) pairs; a check returns None on success or a one-line reason."""
    teacher_before = {k: v.clone() for k, v in bench.teacher.state_dict().items()}
    d = _build(cls, mode, bench)

    def finite_scalars() -> str | None:
        terms, _ = bench.terms(d)
        for k, v in terms.items():
            if not isinstance(v, Tensor) or v.dim() != 0:
                return f"term {k!r} is not a scalar tensor"
            if not torch.isfinite(v):
                return f"term {k!r} is not finite ({float(v)})"
        if mode == "both" and d.teacher_taps() and not {"kd_rgb", "kd_fre"} <= set(terms):
            return f"both mode should report kd_rgb and kd_fre, got {sorted(terms)}"
        return None

    def gradients() -> str | None:
        terms, logits = bench.terms(d)
        loss = d.ce_weight * F.cross_entropy(logits, bench.y) + sum(terms.values(), torch.zeros(()))
        bench.student.zero_grad(set_to_none=True)
        d.zero_grad(set_to_none=True)
        loss.backward()
        d.after_backward(StepInfo(step=0, epoch=0, epochs=1, steps_per_epoch=1, student_lr=1e-3, base_lr=1e-3, log=True))
        if any(p.grad is not None for p in bench.teacher.parameters()):
            return "a teacher parameter received a gradient"
        if terms and all(p.grad is None for p in bench.student.parameters()):
            return "no gradient reached the student"
        follower = {id(p) for p in d.student_parameters()}
        dead = [n for n, p in d.named_parameters() if p.grad is None and id(p) in follower]
        return f"parameters without gradient: {dead[:3]}" if dead else None

    def teacher_untouched() -> str | None:
        if bench.teacher.training:
            return "the teacher was switched to train mode"
        for k, v in bench.teacher.state_dict().items():
            if not torch.equal(v, teacher_before[k]):
                return f"teacher tensor {k!r} changed"
        return None

    def registered() -> str | None:
        state = d.state_dict(keep_vars=True)
        named = dict(d.named_parameters())
        missing = [n for n in named if n not in state]
        if missing:
            return f"parameters missing from state_dict: {missing[:3]}"
        follower = [id(p) for p in d.student_parameters()]
        leader = [id(p) for p in d.leader_parameters()]
        counts = {id(p): follower.count(id(p)) + leader.count(id(p)) for p in named.values()}
        wrong = [n for n, p in named.items() if counts[id(p)] != 1]
        return f"parameters not in exactly one optimizer: {wrong[:3]}" if wrong else None

    def round_trip() -> str | None:
        other = _build(cls, mode, bench, seed=1)
        other.load_state_dict(copy.deepcopy(d.state_dict()))
        d.eval(), other.eval(), bench.student.eval()
        try:
            a, _ = bench.terms(d)
            b, _ = bench.terms(other)
        finally:
            d.train(), bench.student.train()
        diff = [k for k in a if not torch.allclose(a[k], b[k], atol=1e-6)]
        return f"terms differ after a state_dict round trip: {diff}" if diff else None

    def deterministic() -> str | None:
        outs = []
        for _ in range(2):
            twin = _build(cls, mode, bench, seed=7)
            torch.manual_seed(3)
            outs.append(bench.terms(twin)[0])
        diff = [k for k in outs[0] if not torch.equal(outs[0][k], outs[1][k])]
        return f"terms differ between two builds with one seed: {diff}" if diff else None

    yield from (("finite scalar terms", finite_scalars), ("gradients reach student and own parameters only", gradients),
                ("teacher untouched and in eval", teacher_untouched), ("parameters registered, one optimizer each", registered),
                ("state_dict round trip", round_trip), ("deterministic under a seed", deterministic))


def check_distiller(name: str, students: Sequence[str] = STUDENTS,
                    progress: Callable[[str], None] = lambda _msg: None) -> list[CheckResult]:
    """Run every contract check for every student and mode; never raises for plugin faults.
    ``progress`` gets a line as each student and mode is done (the checks take minutes on a CPU)."""
    try:
        cls = get_distiller_class(name)
    except Exception as exc:  # noqa: BLE001
        return [CheckResult("-", "-", "loads", False, str(exc))]
    results: list[CheckResult] = []
    total, n = len(students) * len(cls.modes), 0
    for student in students:
        bench = _bench(student)
        for mode in cls.modes:
            n += 1
            first, t0 = len(results), time.perf_counter()
            try:
                check_one(cls, mode, student, bench, results)
            finally:
                mine = results[first:]
                progress(f"[{n}/{total}] {name} on {student}, mode {mode}: "
                         f"{sum(r.ok for r in mine)}/{len(mine)} checks passed ({time.perf_counter() - t0:.0f} s)")
    return results


def check_one(cls: type[Distiller], mode: str, student: str, bench: Bench, results: list[CheckResult]) -> None:
    """The checks of one student and mode, appended to ``results``."""
    try:
        checks = list(_checks(cls, mode, bench))
    except Exception as exc:  # noqa: BLE001 - a plugin that cannot even build
        results.append(CheckResult(student, mode, "builds from probed shapes", False, f"{type(exc).__name__}: {exc}"))
        return
    results.append(CheckResult(student, mode, "builds from probed shapes", True))
    for check_name, check in checks:
        try:
            problem = check()
        except Exception as exc:  # noqa: BLE001
            problem = f"{type(exc).__name__}: {exc}"
        results.append(CheckResult(student, mode, check_name, problem is None, problem or ""))


def _resolver_cases() -> dict[str, Tensor]:
    """(2, D) gradient pairs a resolver meets: random, conflicting, aligned, exactly opposite,
    one branch silent, both silent."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 64, generator=gen)
    return {"random": torch.stack([a, b]), "conflicting": torch.stack([a, -0.5 * a + 0.1 * b]),
            "aligned": torch.stack([a, 2 * a]), "opposite": torch.stack([a, -a]),
            "one zero": torch.stack([a, torch.zeros_like(a)]), "both zero": torch.zeros(2, 64)}


def _resolver_checks(cls: type[Resolver]) -> Iterator[tuple[str, Callable[[], str | None]]]:
    r = cls()
    cases = _resolver_cases()

    def shape_and_finite() -> str | None:
        for case, g in cases.items():
            out = r.resolve(g.clone())
            if not isinstance(out, Tensor) or out.shape != g.shape or out.dtype != g.dtype:
                return f"{case}: expected a {tuple(g.shape)} {g.dtype} tensor, got {getattr(out, 'shape', type(out))}"
            if not bool(torch.isfinite(out).all()):
                return f"{case}: non-finite output"
        return None

    def input_untouched() -> str | None:
        g = cases["conflicting"]
        before = g.clone()
        r.resolve(g)
        return None if torch.equal(g, before) else "resolve() changed its input in place"

    def descent() -> str | None:
        for case, g in cases.items():
            total, out = g.sum(0), r.resolve(g.clone()).sum(0)
            if float(out @ total) < -1e-6 * float(total.norm() * out.norm()):
                return f"{case}: the applied gradient increases the summed KD loss to first order"
        return None

    def deterministic() -> str | None:
        g = cases["random"]
        return None if torch.equal(r.resolve(g.clone()), r.resolve(g.clone())) else "two calls on one input differ"

    yield from (("(T, D) in, (T, D) finite out", shape_and_finite), ("input untouched", input_untouched),
                ("a descent direction of the summed terms", descent), ("deterministic", deterministic))


def check_resolver(name: str) -> list[CheckResult]:
    """The contract checks of a resolver (``kdbench plugins check NAME``); never raises for plugin faults."""
    try:
        cls = get_resolver_class(name)
        checks = list(_resolver_checks(cls))
    except Exception as exc:  # noqa: BLE001 - a plugin that cannot even build
        return [CheckResult("-", "both", "builds with its defaults", False, f"{type(exc).__name__}: {exc}")]
    results = [CheckResult("-", "both", "builds with its defaults", True)]
    for check_name, check in checks:
        try:
            problem = check()
        except Exception as exc:  # noqa: BLE001
            problem = f"{type(exc).__name__}: {exc}"
        results.append(CheckResult("-", "both", check_name, problem is None, problem or ""))
    return results

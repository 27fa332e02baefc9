"""The public distiller contract shared by built-in and third-party plugins.

A distiller is an ``nn.Module`` built once from probed tap shapes. Each step
the trainer hands it the student's taps, the teacher's (cached) taps and the
labels; it returns *weighted* loss terms that the trainer adds to the
cross-entropy and back-propagates once. Everything it creates (connectors,
variances, rotations) lives in its own ``state_dict``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # resolver.py imports this module; the annotation needs no import at run time
    from kdbench.resolver import Resolver

Shape = tuple[int, ...]
Reduction = Callable[[Tensor], Tensor]

BRANCHES = ("rgb", "fre")
# What a mode distils from: one teacher branch, both branches, or the teacher's fused classifier
# (its logits, the ``logits`` tap: the teacher has no per-branch classifier, so a logit method has
# no RGB-only or two-branch variant and offers this mode alone).
MODES = ("rgb", "both", "fused")


class DistillerError(ValueError):
    """A distiller was asked for something it cannot do (bad mode, hparam, shape)."""


@dataclass(frozen=True)
class HParam:
    """A hyper-parameter default with where it comes from (paper, repo, script), and
    optionally the values it may take: ``choices``, or a range ``low``..``high``
    (inclusive unless ``low_open``/``high_open``; a ranged value must be a finite number).
    ``resolve_hparams`` enforces them, so a distiller need not check its values itself."""

    value: Any
    source: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if self.choices is not None and value not in self.choices:
            return f"choose one of: {', '.join(map(str, self.choices))}"
        if self.low is None and self.high is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number {self.range_text()}"
        low_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        high_bad = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.range_text()}" if low_bad or high_bad else None

    def range_text(self) -> str:
        """``in (0, 1]``, ``>= 0``: the allowed range as a user reads it."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


@dataclass(frozen=True)
class StepInfo:
    """What a distiller's leader step may need to know about the follower."""

    step: int  # global optimisation step, from 0
    epoch: int  # current epoch, from 0
    epochs: int  # total epochs of the run
    steps_per_epoch: int
    student_lr: float  # the student's learning rate at this step
    base_lr: float  # the student's initial learning rate
    log: bool = False  # True on diagnostic steps (every ``log_every`` steps)
    batch_size: int = 0  # samples in this step's global batch, over all processes (0: not known)


class Distiller(nn.Module):
    """Base class of every distiller. Subclass it, then register it with the
    ``kdbench_distillers`` hook (see ``kdbench.hookspecs``)."""

    name: ClassVar[str] = ""
    modes: ClassVar[tuple[str, ...]] = ("rgb", "both")
    # name -> HParam (or a plain value: a default without a source); see ``hparam_spec``
    defaults: ClassVar[Mapping[str, Any]] = {}
    description: ClassVar[str] = ""
    # True: ``forward`` also receives ``index=``, the batch's row numbers in the training split
    # (int64, on the batch's device), and ``prepare`` sizes per-sample state from the split (CRD).
    wants_index: ClassVar[bool] = False
    # True when ``after_backward`` returns the ``grad_cos`` diagnostic (the RGB-vs-frequency
    # gradient cosine of Fig. 4) itself on log steps, e.g. from gradients it captures anyway;
    # the trainer then skips its own per-term ``autograd.grad`` (and keeps the loss compiled).
    reports_grad_cos: ClassVar[bool] = False

    def __init__(
        self,
        mode: str,
        student_shapes: Mapping[str, Shape],
        teacher_shapes: Mapping[str, Shape],
        **hparams: Any,
    ) -> None:
        super().__init__()
        if mode not in self.modes:
            raise DistillerError(
                f"distiller {self.name!r} has no mode {mode!r}; choose one of: {', '.join(self.modes)}"
            )
        self.mode = mode
        self.hp = resolve_hparams(type(self), hparams)
        self.student_shapes = dict(student_shapes)
        self.teacher_shapes = dict(teacher_shapes)
        self.setup()

    def setup(self) -> None:
        """Build connectors and check shapes from ``self.mode``, ``self.hp``, ``self.student_shapes``
        and ``self.teacher_shapes``; called at the end of ``__init__``, so a distiller needs no
        ``__init__`` of its own. Raise ``DistillerError`` for what cannot be built."""

    # -- what to tap -----------------------------------------------------
    @property
    def branches(self) -> tuple[str, ...]:
        """Teacher branches distilled from: ``("rgb",)``, ``("rgb", "fre")``, or none on their own
        (``()``) in the ``fused`` mode, which reads the teacher's fused ``logits`` tap."""
        return {"rgb": ("rgb",), "both": BRANCHES}.get(self.mode, ())

    @property
    def ce_weight(self) -> float:
        """The weight the trainer gives the cross-entropy: the ``ce_weight`` hyper-parameter where the
        distiller declares one (a canonical recipe that reweights CE, as KD's 0.1 CE + 0.9 KD does,
        so the weight is part of the run's configuration and hash), else 1.0 (unweighted: every
        distiller without one trains exactly as before this existed)."""
        return float(self.hp.get("ce_weight", 1.0))

    def prepare(self, train_labels: Tensor) -> None:
        """Called once by the trainer before training (and before a checkpoint is resumed) with
        the labels of the whole training split in index order. A distiller with per-sample state
        (CRD's memory bank) sizes it here, as buffers, so checkpoints carry it; others ignore it."""

    def student_taps(self) -> list[str]:
        """Student taps ``forward`` reads (``stage1``..``stage4``, ``pooled``)."""
        return []

    def teacher_taps(self) -> list[str]:
        """Teacher taps ``forward`` reads; by default the student taps on every branch
        (``rgb.stage2``, ``fre.stage2`` for ``["stage2"]`` in both mode)."""
        return branch_taps(self.branches, self.student_taps())

    def teacher_reductions(self) -> dict[str, Reduction]:
        """Parameter-free reductions of teacher taps, applied before caching."""
        return {}

    # -- the step --------------------------------------------------------
    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        return {}

    def after_backward(self, step: StepInfo) -> dict[str, float] | None:
        """Optional leader step, run after the single backward and before the
        student optimizer steps. May return diagnostics to log."""
        return None

    def leader_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters updated by the distiller itself, kept out of the student optimizer."""
        return ()

    def student_parameters(self) -> list[nn.Parameter]:
        """The distiller's parameters trained by the student optimizer."""
        leader = {id(p) for p in self.leader_parameters()}
        return [p for p in self.parameters() if id(p) not in leader]


def hparam_spec(cls: type[Distiller] | type[Resolver]) -> dict[str, HParam]:
    """``cls.defaults`` with plain values wrapped as ``HParam(value)``, or a one-line
    ``DistillerError`` saying what is malformed (a default outside its own choices or range)."""
    defaults = cls.defaults
    if not isinstance(defaults, Mapping):
        raise DistillerError(f"{cls.__name__}.defaults must be a dict of name -> HParam or value, "
                             f"not {type(defaults).__name__}")
    spec = {}
    for key, value in defaults.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise DistillerError(f"{cls.__name__}.defaults: hyper-parameter name {key!r} is not an identifier")
        hp = value if isinstance(value, HParam) else HParam(value)
        problem = hp.problem(hp.value)
        if problem:
            raise DistillerError(f"{cls.__name__}.defaults: {key}={hp.value!r} {problem}")
        spec[key] = hp
    return spec


def resolve_hparams(cls: type[Distiller] | type[Resolver], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``cls`` updated by ``overrides``; values are cast to the default's type
    and checked against the default's choices or range."""
    spec = hparam_spec(cls)
    unknown = sorted(set(overrides) - set(spec))
    if unknown:
        valid = ", ".join(sorted(spec)) or "none"
        raise DistillerError(
            f"unknown hyper-parameter {', '.join(unknown)} for {cls.name!r}; valid: {valid}"
        )
    resolved = {k: v.value for k, v in spec.items()}
    for key, value in overrides.items():
        resolved[key] = coerce(value, spec[key].value, key)
        problem = spec[key].problem(resolved[key])
        if problem:
            raise DistillerError(f"hyper-parameter {key}={resolved[key]!r} for {cls.name!r}: {problem}")
    return resolved


def coerce(value: Any, default: Any, key: str = "") -> Any:
    """Cast a CLI/config value (often a string) to the type of its default."""
    if default is None or type(value) is type(default):
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError(value)
            return int(as_float)
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):  # nan or inf: the loss would be nan after the whole set-up
                raise ValueError(value)
            return number
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise DistillerError(
            f"hyper-parameter {key}={value!r} is not a valid {type(default).__name__}"
        ) from None
    return value


def reduce_taps(all_taps: Mapping[str, Tensor], names: Iterable[str],
                reductions: Mapping[str, Reduction]) -> dict[str, Tensor]:
    """The named teacher taps, each through its declared reduction (if any): what
    ``forward`` receives, whether the taps come from the cache or an online teacher."""
    return {t: reductions[t](all_taps[t]) if t in reductions else all_taps[t] for t in names}


def branch_taps(branches: Iterable[str], taps: Iterable[str]) -> list[str]:
    """``["rgb.stage2", "fre.stage2"]`` from branches and tap names."""
    return [f"{b}.{t}" for b in branches for t in taps]


def check_finite(terms: Mapping[str, Tensor]) -> str | None:
    """Name of the first non-finite term, or None."""
    for key, value in terms.items():
        if not bool(torch.isfinite(value.detach()).all()):
            return key
    return None
